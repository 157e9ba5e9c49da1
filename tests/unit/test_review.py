"""review: a self-contained HTML page of sampled records with their evidence page images (scaled
copies of the pool's pages), every name inside the output directory, text escaped."""

from __future__ import annotations

import html
import io
import json
import re

import pytest
from PIL import Image

from megatron_vlm.data import pool
from tests.qa_docs import pool_and_qa
from tools.preprocess_data import main as cli


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    pool_and_qa(root, per_segment=2)
    return root


def test_review_page_shows_sampled_records_with_their_pages(made, capsys):
    records = [json.loads(x) for x in (made / "qa" / "records-00000.jsonl").read_text().splitlines()]
    hostile = {**records[0], "id": records[0]["id"] + "-x", "task": "extract-single", "question": "<script>alert(1)</script> What is it?"}
    (made / "qa2").mkdir()
    (made / "qa2" / "records-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*records, hostile]))
    out = made / "rev"
    assert cli(["review", "--pool", str(made / "pool"), "--qa", str(made / "qa2"), "--output", str(out), "--num", "1000", "--width", "300"]) == 0
    reader = [r for r in [*records, hostile] if not r["task"].startswith("ocr")]
    assert f"review: {len(reader)} records" in capsys.readouterr().out
    page = (out / "index.html").read_text()
    chosen = json.loads((out / "review.json").read_text())
    assert sorted(r["id"] for r in chosen) == sorted(r["id"] for r in reader)
    for r in chosen:
        assert html.escape(r["question"]) in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; What is it?" in page
    # Every image the page shows is inside the directory, a scaled copy of the pool's page.
    (doc, images), = pool.iter_documents(made / "pool", images=True)
    shown = set(re.findall(r'src="([^"]+)"', page))
    assert shown == {f"images/{doc['id']}-p{p:04d}.png" for r in chosen for p in r["evidence_pages"]}
    for name in shown:
        p = int(name[-8:-4])
        with Image.open(out / name) as got, Image.open(io.BytesIO(images[p])) as ref:
            assert got.width == 300 and abs(got.height - ref.height * 300 / ref.width) <= 1
    assert {f.name for f in out.iterdir()} == {"index.html", "review.json", "images"}
    # Rerun into the same review replaces it; a directory that is not a review is refused.
    assert cli(["review", "--pool", str(made / "pool"), "--qa", str(made / "qa"), "--output", str(out), "--num", "2"]) == 0
    (made / "other").mkdir()
    assert cli(["review", "--pool", str(made / "pool"), "--qa", str(made / "qa"), "--output", str(made / "other")]) == 2
    assert "not an earlier review" in capsys.readouterr().err
