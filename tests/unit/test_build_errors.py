"""build refuses bad input in one line, before writing anything: a malformed records line or field
(file and line named), a recipe nothing can fit (saying why, with the token counts), a budget that
repeats instances more than data.max_repeats (saying how often)."""

from __future__ import annotations

import json
import tarfile

import pytest

from megatron_vlm.data.tokens import count_tokens, load_tokenizer
from megatron_vlm.models.family import get_family
from tests.shards_fixtures import write_pool, write_recipe, write_records
from tools.preprocess_data import main as cli

PAGE_TOKENS = 57 * 44  # a US-Letter page at 144 DPI (DESIGN.md)
COUNTS = [2, 3, 4, 5, 6, 9]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("builderr")
    ids = write_pool(root / "pool", COUNTS, image_px=(28, 28))
    write_records(root / "qa", ids, COUNTS)
    return root


def _build(root, tmp_path, capsys, qa=None, **data) -> tuple[int, list[str]]:
    recipe = write_recipe(tmp_path / "r.yaml", tokenizer=str(root.parent / "tok"), **data)
    argv = ["build", "--pool", str(root / "pool"), "--qa", str(qa or root / "qa"), "--recipe", str(recipe), "--output", str(tmp_path / "out")]
    rc = cli(argv)
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(autouse=True)
def _tokenizer_link(inputs, qwen_tokenizer_dir):
    link = inputs.parent / "tok"
    if not link.exists():
        link.symlink_to(qwen_tokenizer_dir)


@pytest.mark.parametrize("line, change, message", [
    (2, lambda r: r.pop("doc_id"), "missing doc_id"),
    (5, lambda r: r.update(evidence_pages=3), "evidence_pages must be a non-empty list of page indices, got 3"),
    (7, lambda r: r.update(segment=[4, 2]), "segment must be [first, last) page indices, got [4, 2]"),
    (3, lambda r: r.update(doc_id="../../etc"), "doc_id '../../etc' is not a plain name"),
    (4, None, "not a JSON record"),
])
def test_bad_record_is_named_by_file_and_line(inputs, tmp_path, capsys, line, change, message):
    rows = (inputs / "qa" / "records-00000.jsonl").read_text().splitlines()
    if change:
        record = json.loads(rows[line - 1])
        change(record)
        rows[line - 1] = json.dumps(record)
    else:
        rows[line - 1] = rows[line - 1][:40]  # a line cut short
    (tmp_path / "qa").mkdir()
    (tmp_path / "qa" / "records-00000.jsonl").write_text("\n".join(rows) + "\n")
    rc, err = _build(inputs, tmp_path, capsys, qa=tmp_path / "qa", length_distribution="custom", length_histogram={"0-131073": 1}, token_budget=10_000)
    assert rc == 2 and len(err) == 1, err
    assert f"records-00000.jsonl:{line}: {message}" in err[0]
    assert not (tmp_path / "out").exists()


def test_nothing_fits_says_why(inputs, tmp_path, capsys, qwen_tokenizer_dir):
    rc, err = _build(inputs, tmp_path, capsys, max_seq_length=1024, length_distribution="custom", length_histogram={"0-1025": 1}, token_budget=10_000)
    assert rc == 2 and len(err) == 1 and not (tmp_path / "out").exists()
    # The smallest extract-single instance: its evidence span's pages (2,508 tokens each) and its text.
    tok = load_tokenizer(qwen_tokenizer_dir)
    records = [json.loads(x) for x in (inputs / "qa" / "records-00000.jsonl").read_text().splitlines()]
    spans = [(r, min(r["evidence_pages"] + [r["segment"][0]]), max(r["evidence_pages"] + [r["segment"][1] - 1])) for r in records if r["task"] == "extract-single"]
    smallest = min(count_tokens(tok, get_family("qwen2_5_vl"), r["question"], r["answer"], [PAGE_TOKENS] * (hi - lo + 1)) for r, lo, hi in spans)
    assert f"no extract-single instance fits the recipe: of {len(spans)} records, evidence-span-too-long {len(spans)}" in err[0]
    assert f"the smallest needs {smallest:,} tokens and max_seq_length is 1,024" in err[0]
    rc, err = _build(inputs, tmp_path, capsys, length_distribution="pool-native", token_budget=10_000)
    assert rc == 2 and f"data.pages_range is 32-50 pages and the documents have {min(COUNTS)}-{max(COUNTS)}" in err[0]


def test_budget_that_repeats_too_often_is_refused_with_the_count(inputs, tmp_path, capsys):
    data = {"length_distribution": "custom", "length_histogram": {"0-131073": 1}, "token_budget": 2_000_000, "samples_per_shard": 100}
    rc, err = _build(inputs, tmp_path, capsys, **data)
    assert rc == 2 and len(err) == 1 and not (tmp_path / "out").exists()
    # The same build allowed to repeat: the most copies of one record, counted in its shards.
    assert _build(inputs, tmp_path, capsys, max_repeats=100, **data)[0] == 0
    copies = {}
    for tar in (tmp_path / "out").glob("*.tar"):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    rid = json.loads(tf.extractfile(m).read())["record_id"]
                    copies[rid] = copies.get(rid, 0) + 1
    worst = max(copies.values())
    assert worst > 4 and f"one of them {worst} times (data.max_repeats is 4)" in err[0]
    assert f"from {len(copies)} distinct instances" in err[0]


def test_truncated_pool_tar_is_named(inputs, tmp_path, capsys):
    import shutil

    shutil.copytree(inputs / "pool", tmp_path / "pool")
    (tar,) = sorted((tmp_path / "pool" / "shards").glob("*.tar"))[:1]
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    recipe = write_recipe(tmp_path / "r.yaml", tokenizer=str(inputs.parent / "tok"), length_distribution="custom",
                          length_histogram={"0-131073": 1}, token_budget=10_000)
    rc = cli(["build", "--pool", str(tmp_path / "pool"), "--qa", str(inputs / "qa"), "--recipe", str(recipe), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{tar}: not a readable pool tar" in err[0]
    assert not (tmp_path / "out").exists()
