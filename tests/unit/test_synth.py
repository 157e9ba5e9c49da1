"""The synth stage with the template teacher: records follow docs/formats.md section 2, answers are
right according to the generator's known content, validation rejects by reason, determinism."""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter

import pymupdf
import pytest

from megatron_vlm.data import pool
from megatron_vlm.data.sample_pdfs import make_corpus
from megatron_vlm.data.synth import run as synth
from megatron_vlm.data.synth.tasks import choose_segments
from megatron_vlm.data.synth.validation import Validator
from tests.qa_docs import check_reasoning, named_in

RECORD_KEYS = {"id", "doc_id", "task", "segment", "question", "answer", "answer_format", "evidence_pages",
               "evidence_description", "teacher", "prompt_version"}


def run_synth(pool_dir, out, *extra) -> int:
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    return synth.main(parser.parse_args(["--pool", str(pool_dir), "--output", str(out), "--segment-pages", "3", "5", "--per-segment", "2", "--quiet", *extra]))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    specs = make_corpus(root / "pdfs", n_docs=3, pages=(7, 9), seed=11)
    pool.build_pool(root / "pdfs", root / "pool", no_ocr=True)
    assert run_synth(root / "pool", root / "qa") == 0
    records = [json.loads(line) for line in (root / "qa" / "records-00000.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in pool.read_manifest(root / "pool")}
    truth = {by_id_key: spec for spec in specs for by_id_key, row in by_id.items() if row["source"] == spec.path.name}
    return root, records, truth


def test_records_follow_the_contract(built):
    root, records, truth = built
    assert records and len({r["id"] for r in records}) == len(records)
    assert {r["task"] for r in records} == {"extract-single", "extract-multi", "reasoning", "ocr-full", "ocr-needle"}
    for r in records:
        assert set(r) == RECORD_KEYS and r["doc_id"] in truth
        first, last = r["segment"]
        assert 3 <= last - first <= 5 and last <= len(truth[r["doc_id"]].pages)
        assert r["evidence_pages"] and all(first <= p < last for p in r["evidence_pages"])
        assert r["answer_format"] in ("Int", "Float", "Str", "List", "None")
        assert r["teacher"] in ("template", "pool-text") and r["prompt_version"]
    summary = json.loads((root / "qa" / "summary.json").read_text())
    assert summary["records_total"] == len(records)
    assert summary["candidates"] == len(records) + sum(summary["rejected"].values())
    assert summary["records"] == dict(Counter(r["task"] for r in records))


def _known_facts(spec) -> tuple[list[tuple], dict[str, str]]:
    """The generator's facts as (kind, names, value, group) and the numbered sections' titles."""
    items, sections = [], {}
    for page in spec.pages:
        heading = page.headings[-1]
        number, title = heading.removeprefix("Section ").split(": ", 1)
        sections[number] = title
        for prefix, value in page.facts:
            items.append(("quantity", (heading, prefix), value, "units"))
        if page.table:
            label = page.table.caption.split(":")[0]
            for row in page.table.rows:
                for col, value in zip(page.table.header[1:], row[1:]):
                    items.append(("cell", (label, row[0], col), value, col))
    return items, sections


def test_template_answers_match_the_known_content(built):
    _, records, truth = built
    checked = Counter()
    for r in records:
        if r["task"].startswith("ocr"):
            continue
        q = r["question"]
        assert not re.search(r"\bpages?\b", q), q  # the model must find the page
        named = named_in(q, *_known_facts(truth[r["doc_id"]]))
        if r["task"] == "extract-single":
            assert len(named) == 1 and r["answer"] == named[0][2], (q, named)
        elif r["task"] == "extract-multi":
            assert json.loads(r["answer"]) == [n[2] for n in named] and len({n[3] for n in named}) == 1, (q, named)
        else:
            assert len({(n[1][0] if n[0] == "cell" else "", n[3]) for n in named}) == 1, (q, named)  # one column of one table, or one unit
            check_reasoning(q, r["answer"], named)
        checked[r["task"]] += 1
    assert checked["extract-single"] and checked["extract-multi"] and checked["reasoning"]


def test_ocr_tasks_transcribe_the_pages(built):
    root, records, truth = built
    for r in records:
        if not r["task"].startswith("ocr"):
            continue
        ref = pymupdf.open(truth[r["doc_id"]].path)
        expected = Counter(w for p in r["evidence_pages"] for w in ref[p].get_text().split())
        got = Counter(w for w in r["answer"].split() if w != "|")
        for p in r["evidence_pages"] if len(r["evidence_pages"]) > 1 else []:
            got -= Counter({"Page": 1, f"{p + 1}:": 1})
        assert got == expected
        if r["task"] == "ocr-full":
            assert r["evidence_pages"] == list(range(*r["segment"]))


def test_same_seed_gives_byte_identical_output(built, tmp_path):
    root, _, _ = built
    assert run_synth(root / "pool", tmp_path / "a") == 0
    for name in ("records-00000.jsonl", "failures-00000.jsonl", "summary.json"):
        assert (tmp_path / "a" / name).read_bytes() == (root / "qa" / name).read_bytes()
    assert run_synth(root / "pool", tmp_path / "b", "--seed", "99") == 0
    assert (tmp_path / "b" / "records-00000.jsonl").read_bytes() != (root / "qa" / "records-00000.jsonl").read_bytes()


def test_sharded_synth_unions_to_unsharded(built, tmp_path):
    root, records, _ = built
    union = []
    for i in range(2):
        assert run_synth(root / "pool", tmp_path, "--num-shards", "2", "--shard-index", str(i)) == 0
        union += (tmp_path / f"records-{i:05d}.jsonl").read_text().splitlines()
    assert sorted(union) == sorted(json.dumps(r, sort_keys=True, ensure_ascii=False, separators=(",", ":")) for r in records)


def test_segments_tile_the_document():
    rng = random.Random(0)
    for n in range(0, 60):
        segs = choose_segments(n, 8, 15, rng)
        assert all(8 <= b - a <= 15 for a, b in segs)
        assert [a for a, _ in segs] == ([0] + [b for _, b in segs[:-1]] if segs else [])
        assert n - (segs[-1][1] if segs else 0) < 8


def test_validation_rejects_by_reason():
    texts = ("alpha 1,234 beta", "gamma delta", "epsilon", "zeta")
    doc = {"id": "d", "pages": [{"index": i, "text": t, "ocr": "none", "blocks": [{"kind": "paragraph", "text": t}]} for i, t in enumerate(texts)]}

    def rec(**kw):
        base = {"doc_id": "d", "task": "extract-single", "segment": [0, 3], "question": "Which Greek letter comes before delta?", "answer": "gamma",
                "answer_format": "Str", "evidence_pages": [1]}
        return {**base, **kw}

    v = Validator()
    assert v.check(rec(), doc) is None
    assert v.check(rec(), doc) == "duplicate question"
    assert v.check(rec(question="Which Greek letter name is listed in row 2?", evidence_pages=[3]), doc) == "evidence page outside the segment"
    assert v.check(rec(question="Which Greek letter name is listed in row 3?", evidence_pages=[]), doc) == "no evidence pages"
    assert v.check(rec(question="Which Greek letter name is listed in row 4?", answer="zeta"), doc) == "answer not in the OCR text"  # page 3 is outside
    assert v.check(rec(question="Which Greek letter name is listed in row 5?", answer="epsilon"), doc) == "answer not on its evidence pages"
    assert v.check(rec(question="Which Greek letter name is listed in row 6?", answer="1234", answer_format="Int", evidence_pages=[0]), doc) is None
    assert v.check(rec(question="Which Greek letter name is listed in row 7?", answer="12.5", answer_format="Int", task="reasoning"), doc) == "answer does not fit Int"
    assert v.check(rec(question="Which Greek letter name is listed in row 8?", answer='["gamma", "omega"]', answer_format="List", task="extract-multi"), doc) == "answer not in the OCR text"
    assert v.check(rec(question="Which Greek letter name is listed in row 9?", answer="gamma, delta", answer_format="List"), doc) == "List answer is not a JSON array of strings"
    assert v.check(rec(question="Which Greek letter name is listed in row 10?", answer="", answer_format="Str"), doc) == "empty question or answer"
    assert v.check(rec(question="Which Greek letter name is listed in row 11?", task="ocr-needle", answer="gamma"), doc) == "transcript differs from the evidence pages' text"
    assert v.check(rec(question="Which Greek letter name is listed in row 12?", task="ocr-needle", answer="gamma  delta"), doc) is None
    assert sum(v.rejected.values()) == 10 and v.rejected["duplicate question"] == 1
