"""Fixed-length contexts: target length within one page, evidence at the asked depth, held-out docs only.

The pool is written in-test following docs/formats.md section 1 (small page images of varied
sizes so pages cost different token counts); token counts are checked against HF's
Qwen2VLImageProcessor on the images the eval set wrote.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from megatron_vlm.eval.contexts import Question, build_context, read_exclusions, read_pool, read_qa_records
from megatron_vlm.eval.evalset import build_eval_set, read_eval_set
from tests.unit.eval_pool import DOCS, add_member, write_pool

REFERENCE_PREPROCESSOR = (
    Path(__file__).resolve().parents[2].parent / "shared/reference/hf_configs/Qwen2.5-VL-7B-Instruct"
)


def write_qa(root: Path) -> Path:
    qa = root / "qa"
    qa.mkdir()
    rows = [
        {
            "id": "q-single",
            "doc_id": "doc03",
            "task": "extract-single",
            "segment": [0, 9],
            "question": "What is on page 4?",
            "answer": "blue",
            "answer_format": "Str",
            "evidence_pages": [4],
        },
        {
            "id": "q-multi",
            "doc_id": "doc05",
            "task": "extract-multi",
            "segment": [0, 6],
            "question": "How many?",
            "answer": 3,
            "answer_format": "Int",
            "evidence_pages": [1, 3],
        },
        {
            "id": "q-train",
            "doc_id": "doc00",
            "task": "reasoning",
            "segment": [0, 6],
            "question": "Seen in training?",
            "answer": 1.5,
            "answer_format": "Float",
            "evidence_pages": [2],
        },
    ]
    (qa / "records-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return qa


@pytest.fixture(scope="module")
def pool_and_qa(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalpool")
    return root, read_pool(write_pool(root)), read_qa_records(write_qa(root))


def hand_cost(w: int, h: int) -> int:
    # Qwen rule worked by hand for these small pages: round each side to a multiple of 28, one token per 28x28.
    return round(h / 28) * round(w / 28) + 2


@pytest.mark.parametrize("target", [1500, 2600, 4000])
@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_length_and_depth(pool_and_qa, target, depth):
    _, docs, questions = pool_and_qa
    q = next(q for q in questions if q.id == "q-single")
    doc = docs[q.doc_id]
    ctx = build_context(q, doc, list(docs.values()), target, depth, seed=1, prompt_tokens=80)
    costs = [hand_cost(*DOCS[p.doc_id][p.index]) for p in ctx.pages]
    total = sum(costs)
    biggest = max(hand_cost(w, h) for sizes in DOCS.values() for w, h in sizes)
    budget = target - 80
    assert budget - biggest < total <= budget  # within one page of the target
    # the evidence page is where the question's document has it, and at the asked depth
    (pos,) = ctx.evidence_positions
    assert (ctx.pages[pos].doc_id, ctx.pages[pos].index) == ("doc03", 4)
    anchor = costs[pos]
    before = sum(costs[:pos])
    assert abs(before - depth * (budget - anchor)) < biggest
    # the document's own pages are contiguous and in order around the evidence
    own = [i for i, p in enumerate(ctx.pages) if p.doc_id == "doc03"]
    assert own == list(range(own[0], own[-1] + 1))
    assert [ctx.pages[i].index for i in own] == sorted(ctx.pages[i].index for i in own)
    # no page twice, and no distractor document on both sides of the question's document
    assert len({(p.doc_id, p.index) for p in ctx.pages}) == len(ctx.pages)
    before_docs = {p.doc_id for p in ctx.pages[: own[0]]}
    after_docs = {p.doc_id for p in ctx.pages[own[-1] + 1 :]}
    assert not before_docs & after_docs


def test_multi_page_evidence_span(pool_and_qa):
    _, docs, questions = pool_and_qa
    q = next(q for q in questions if q.id == "q-multi")
    ctx = build_context(q, docs[q.doc_id], list(docs.values()), 3000, 0.5)
    assert [(ctx.pages[i].doc_id, ctx.pages[i].index) for i in ctx.evidence_positions] == [("doc05", 1), ("doc05", 3)]
    first, last = ctx.anchor
    assert [p.index for p in ctx.pages[first:last]] == [1, 2, 3]


def test_refuses_impossible(pool_and_qa):
    _, docs, questions = pool_and_qa
    q = next(q for q in questions if q.id == "q-multi")
    with pytest.raises(ValueError, match="exceeds"):
        build_context(q, docs[q.doc_id], list(docs.values()), 200, 0.5)
    with pytest.raises(ValueError, match="ran out"):
        build_context(q, docs[q.doc_id], [docs["doc01"]], 5000, 0.5)
    with pytest.raises(ValueError, match="depth"):
        build_context(q, docs[q.doc_id], list(docs.values()), 3000, 1.5)
    bad = Question("q-bad", "doc05", "x", "?", 1, "Int", [40])
    with pytest.raises(ValueError, match="not in document"):
        build_context(bad, docs["doc05"], list(docs.values()), 3000, 0.5)


def test_eval_set_on_disk(pool_and_qa, tmp_path):
    root, docs, questions = pool_and_qa
    exclusions = tmp_path / "train_ids.txt"
    exclusions.write_text("doc00\ndoc01\n")
    exclude = read_exclusions(exclusions)
    out = tmp_path / "evalset"
    summary = build_eval_set(
        docs, questions, out, lengths=[2000, 3000], depths=[0.0, 0.5, 1.0], exclude=exclude, log=lambda *_: None
    )
    assert summary["questions"] == 2 and summary["items"] == 12 and summary["questions_on_excluded_docs"] == 1
    assert not list(tmp_path.glob(".evalset.tmp*"))
    items = read_eval_set(out)
    assert len(items) == 12
    for item in items:
        used = {p["doc_id"] for p in item["pages"]}
        assert not used & exclude  # held-out docs only, also as distractors
        assert item["num_tokens"] <= item["target_tokens"]
        assert item["context_tokens"] == sum(hand_cost(*DOCS[p["doc_id"]][p["page"]]) for p in item["pages"])
    # the same set re-read from the JSONL file alone, with token counts recomputed from the images
    stripped = tmp_path / "plain.jsonl"
    stripped.write_text(
        "".join(
            json.dumps(
                {
                    "id": it["id"],
                    "question": it["question"],
                    "answer": it["answer"],
                    "answer_format": it["answer_format"],
                    # relative to the file's directory (the image root of a bare .jsonl)
                    "pages": ["evalset/" + p["image"].split(str(out) + "/")[-1] for p in it["pages"]],
                }
            )
            + "\n"
            for it in items
        )
    )
    again = read_eval_set(stripped)
    assert [[p["tokens"] for p in it["pages"]] for it in again] == [[p["tokens"] for p in it["pages"]] for it in items]


def test_token_counts_match_hf_image_processor(pool_and_qa, tmp_path):
    if not (REFERENCE_PREPROCESSOR / "preprocessor_config.json").is_file():
        pytest.skip(f"reference preprocessor config not found at {REFERENCE_PREPROCESSOR}")
    from transformers import Qwen2VLImageProcessor

    _, docs, questions = pool_and_qa
    out = tmp_path / "evalset"
    build_eval_set(docs, questions[:1], out, lengths=[2500], depths=[0.5], log=lambda *_: None)
    (item,) = read_eval_set(out)
    processor = Qwen2VLImageProcessor.from_pretrained(REFERENCE_PREPROCESSOR)
    images = [Image.open(p["image"]).convert("RGB") for p in item["pages"]]
    grids = processor(images=images, return_tensors="pt")["image_grid_thw"]
    assert [list(map(int, g)) for g in grids] == [p["grid_thw"] for p in item["pages"]]
    assert sum(int(g.prod()) // 4 + 2 for g in grids) == item["context_tokens"]


def test_exclusions_from_shard_dir(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "shard-000000.tar", "w") as tf:
        for key, doc in [("r1", "docA"), ("r2", "docB"), ("r3", "docA")]:
            add_member(tf, f"{key}.json", json.dumps({"id": key, "doc_id": doc}).encode())
    assert read_exclusions(shards) == {"docA", "docB"}
    listed = tmp_path / "ids.json"
    listed.write_text('["x", "y"]')
    assert read_exclusions(listed) == {"x", "y"}


def test_on_a_pool_from_the_pool_stage(tmp_path):
    """Contexts over a pool written by the pool stage from generated PDFs (low DPI to stay fast)."""
    import argparse

    from megatron_vlm.data import pool as pool_stage
    from megatron_vlm.data.sample_pdfs import make_corpus

    make_corpus(tmp_path / "pdfs", n_docs=5, pages=(3, 4), seed=3, scanned=False)
    parser = argparse.ArgumentParser()
    pool_stage.add_arguments(parser)
    out = tmp_path / "pool"
    assert (
        pool_stage.main(
            parser.parse_args(
                [
                    "--input",
                    str(tmp_path / "pdfs"),
                    "--output",
                    str(out),
                    "--dpi",
                    "36",
                    "--no-ocr",
                    "--quiet",
                    "--docs-per-tar",
                    "2",
                ]
            )
        )
        == 0
    )
    docs = read_pool(out)
    by_id = {doc["id"]: doc for doc, _ in pool_stage.iter_documents(out)}
    assert set(docs) == set(by_id)
    for doc_id, doc in docs.items():
        # our costing agrees with the pool stage's own per-page token counts and grids
        assert [p.tokens for p in doc.pages] == [p["tokens"] for p in by_id[doc_id]["pages"]]
        assert [list(p.grid_thw) for p in doc.pages] == [p["grid_thw"] for p in by_id[doc_id]["pages"]]
    doc_id = sorted(docs)[0]
    q = Question("q", doc_id, "extract-single", "?", "a", "Str", [1])
    page_cost = max(p.cost for d in docs.values() for p in d.pages)
    ctx = build_context(q, docs[doc_id], list(docs.values()), 10 * page_cost, 0.5)
    assert 9 * page_cost < ctx.tokens <= 10 * page_cost
    # the lazily read page bytes are the pool's PNG for that page
    _, images = next((d, im) for d, im in pool_stage.iter_documents(out, images=True, ids={doc_id}))
    assert ctx.pages[ctx.evidence_positions[0]].read_bytes() == images[1]
