"""qa-check flags every record of a hand-made bad set (the examples of issue 15, written as
records against a report PDF the test made) in the group it belongs to, and finds nothing wrong
with what the template teacher writes from the same pool."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from megatron_vlm.data import pool
from megatron_vlm.data.synth.qa_check import check
from megatron_vlm.data.synth.validation import CATEGORIES
from tests.qa_docs import pool_and_qa
from tools.preprocess_data import main as cli

NAMES_PAGE, BLANK, NOT_ONE = "names a page", "blank or vague question", "does not pick out one fact"
BAD_SOURCE, REASONING = "fact from header/footer/caption or low-quality text", "reasoning not over comparable values"

# (question, answer, task, evidence pages, the groups it must be flagged in)
BAD = [
    ('On page 2, what is the value in the column "Households" for the row "North" of Table 1?', "1,240", "extract-single", [1], {NAMES_PAGE}),
    ("What is the title of the section that starts on page 5?", "Results", "extract-single", [4], {NAMES_PAGE}),
    ('Which number completes the sentence "The survey reached ___ households in the northern district of the county."?', "1,240", "extract-single", [0], {BLANK}),
    ("k=___", "45", "extract-single", [1], {BLANK}),
    ("___", "1,240", "extract-single", [0], {BLANK}),
    ('What is the absolute difference between the number missing from "office at +49 30 1234 ___" and the number missing from "grant ___-17"?',
     "5236", "reasoning", [0], {BLANK, REASONING}),
    ("What is the office telephone extension minus the council grant number?", "5236", "reasoning", [0], {REASONING}),
    ('What is the sum of the "Households" value of the row "North" in Table 1 and the number of minutes each interview lasted on average '
     'in the section "2 Methods"?', "1285", "reasoning", [1], {REASONING}),
    ("What is the first heading on page 4?", "Harlow Annual Review 2023", "extract-single", [3], {NAMES_PAGE, BAD_SOURCE}),
    ("What is the title of this annual review?", "Harlow Annual Review 2023", "extract-single", [3], {BAD_SOURCE, NOT_ONE}),
    ("How many members of the survey team prepared this review?", "14", "extract-single", [2], {BAD_SOURCE}),
    ('According to the section "2.1 Sampling", how many volunteers did the pilot sample include?', "120", "extract-single", [2], {NOT_ONE}),
    ('In the table in the section "2.1 Sampling", what is the status of mailing?', "Pending", "extract-single", [2], {NOT_ONE}),
    ('According to the section "4 Discussion", the field work took how many days in the autumn of the survey year?', "36", "extract-single", [5], {BAD_SOURCE}),
]
LOW_CONFIDENCE_PAGE = 5  # marked as OCRed at confidence 41 in the pool below


def _mark_low_confidence(pool_dir):
    """Rewrite the pool's document json so one page reads as OCR at 41/100 confidence."""
    (tar_path,) = (pool_dir / "shards").glob("*.tar")
    members = []
    with tarfile.open(tar_path) as tf:
        for m in tf:
            data = tf.extractfile(m).read()
            if m.name.endswith(".json"):
                doc = json.loads(data)
                doc["pages"][LOW_CONFIDENCE_PAGE].update(ocr="tesseract", ocr_confidence=41.0, text_quality="ocr")
                data = json.dumps(doc).encode()
            members.append((m.name, data))
    with tarfile.open(tar_path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def report_pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("qacheck")
    pool_and_qa(root)
    (root / "qa").rename(root / "good")
    _mark_low_confidence(root / "pool")
    (doc_id,) = [r["id"] for r in pool.read_manifest(root / "pool")]
    bad = [{"id": f"{doc_id}-bad-{i}", "doc_id": doc_id, "task": task, "segment": [0, 6], "question": q, "answer": a,
            "answer_format": "Str", "evidence_pages": ev, "evidence_description": "", "teacher": "hand", "prompt_version": "issue-15"}
           for i, (q, a, task, ev, _) in enumerate(BAD)]
    (root / "bad").mkdir()
    (root / "bad" / "records-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    return root


def test_every_bad_record_is_flagged_in_its_group(report_pool, capsys):
    result = check(report_pool / "bad", report_pool / "pool")
    flagged = {f["id"]: f["problems"] for f in result["flagged"]}
    assert len(flagged) == len(BAD)
    (doc_id,) = [r["id"] for r in pool.read_manifest(report_pool / "pool")]
    for i, (q, _, _, _, groups) in enumerate(BAD):
        got = {CATEGORIES.get(p, "other rules") for p in flagged[f"{doc_id}-bad-{i}"]}
        assert groups <= got, (q, flagged[f"{doc_id}-bad-{i}"])
    assert cli(["qa-check", str(report_pool / "bad"), "--pool", str(report_pool / "pool"), "--report", str(report_pool / "bad.json")]) == 1
    out = capsys.readouterr().out
    assert f"{NAMES_PAGE}: 3" in out and f"qa-check: {len(BAD)} of {len(BAD)} records break a rule" in out
    assert len(json.loads((report_pool / "bad.json").read_text())["flagged"]) == len(BAD)


def test_template_records_pass_every_check(report_pool, capsys):
    # The template's records were written before page 5 was marked low-confidence: leave its facts out.
    records = [json.loads(x) for x in (report_pool / "good" / "records-00000.jsonl").read_text().splitlines()]
    kept = [r for r in records if LOW_CONFIDENCE_PAGE not in r["evidence_pages"] or r["task"].startswith("ocr")]
    (report_pool / "good2").mkdir()
    (report_pool / "good2" / "records-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    result = check(report_pool / "good2", report_pool / "pool")
    assert result["reader_questions"] >= 10 and set(result["groups"].values()) == {0}, result["flagged"][:3]
    assert cli(["qa-check", str(report_pool / "good2"), "--pool", str(report_pool / "pool")]) == 0
    assert f"qa-check: 0 of {len(kept)} records break a rule" in capsys.readouterr().out
    # Bad input: a records line without its doc id, in one line, exit 2.
    (report_pool / "broken").mkdir()
    (report_pool / "broken" / "records-00000.jsonl").write_text(json.dumps({k: v for k, v in kept[0].items() if k != "doc_id"}) + "\n")
    assert cli(["qa-check", str(report_pool / "broken"), "--pool", str(report_pool / "pool")]) == 2
    assert "records-00000.jsonl:1: missing doc_id" in capsys.readouterr().err
