"""tools/evaluate.py paths without a model: build --from-jsonl, needle build -> score -> plot, judge."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from megatron_vlm.eval.evalset import read_eval_set
from megatron_vlm.eval.files import read_jsonl, write_jsonl_atomic
from megatron_vlm.eval.needle import accuracy_grid
from tests.unit.eval_pool import write_pool
from tools import evaluate


def _write_bench(tmp_path):
    """Three "benchmark" documents of 4 pages of 280x364 px; b0's page 2 is its evidence."""
    lines = []
    for d in range(3):
        pages = []
        for k in range(4):
            path = tmp_path / "imgs" / f"d{d}_{k}.png"
            path.parent.mkdir(exist_ok=True)
            Image.new("RGB", (280, 364), (40 * d, 60 * k, 90)).save(path)
            pages.append({"image": f"imgs/{path.name}", "evidence": k == 2} if d == 0 else f"imgs/{path.name}")
        lines.append({"id": f"b{d}", "question": f"q{d}?", "answer": "x", "answer_format": "Str", "pages": pages})
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return bench


def test_build_from_minimal_jsonl(tmp_path):
    # Qwen2.5-VL's rule (the default): 280x364 px = 10 x 13 = 130 tokens + 2 per page
    bench = _write_bench(tmp_path)
    out = tmp_path / "padded"
    assert (
        evaluate.main(
            ["build", "--from-jsonl", str(bench), "--output", str(out), "--lengths", "1300", "--depths", "0,1"]
        )
        == 0
    )
    items = read_eval_set(out)
    b0 = [it for it in items if it["qa_id"] == "b0"]
    assert len(b0) == 2
    for it in b0:
        # budget 1300 - 96 reserve = 1204 = 9 pages of 132 (1188); evidence: b0's page 2
        assert it["context_tokens"] == 9 * 132 and it["num_tokens"] == 1188 + 96
        (pos,) = [i for i, p in enumerate(it["pages"]) if p["evidence"]]
        assert (it["pages"][pos]["doc_id"], it["pages"][pos]["page"]) == ("b0", 2)
        assert pos == (0 if it["depth"] == 0 else 8)
    # lines without evidence use the whole document as the anchor (4 pages of its own, then others)
    b1 = [it for it in items if it["qa_id"] == "b1" and it["depth"] == 0][0]
    assert [p["doc_id"] for p in b1["pages"][:4]] == ["b1"] * 4


def test_needle_cli(tmp_path):
    pool = write_pool(tmp_path)
    out = tmp_path / "needle"
    assert (
        evaluate.main(
            [
                "needle",
                "build",
                "--pool",
                str(pool),
                "--output",
                str(out),
                "--lengths",
                "1200,2400",
                "--depths",
                "0,0.5,1",
                "--trials",
                "2",
                "--dpi",
                "36",
            ]
        )
        == 0
    )
    items = read_eval_set(out)
    assert len(items) == 12
    # a pretend model that finds the needle only in the first half of each context
    preds = [
        {
            **{k: it[k] for k in ("id", "task", "target_tokens", "depth", "answer", "answer_format")},
            "prediction": f"Answer: {it['answer'] if it['depth'] <= 0.5 else 0}",
        }
        for it in items
    ]
    write_jsonl_atomic(tmp_path / "pred.jsonl", preds)
    assert evaluate.main(["score", "--predictions", str(tmp_path / "pred.jsonl")]) == 0
    scored = read_jsonl(tmp_path / "pred.scored.jsonl")
    assert accuracy_grid(scored) == ([1200, 2400], [0.0, 0.5, 1.0], [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    png = tmp_path / "heat.png"
    assert (
        evaluate.main(["needle", "plot", "--predictions", str(tmp_path / "pred.scored.jsonl"), "--output", str(png)])
        == 0
    )
    with Image.open(png) as im:
        assert im.format == "PNG"


def test_judge(tmp_path):
    from megatron_vlm.eval.judge import parse_verdict
    from tests import fake_openai as fake

    assert parse_verdict("Yes.") == 1.0 and parse_verdict("no") == 0.0 and parse_verdict("maybe") is None

    def answer(body):  # a judge that says yes when the model answer contains the reference
        text = body["messages"][0]["content"]
        ref = text.split("Reference answer: ")[1].split("\n")[0]
        pred = text.split("Model answer: ")[1].split("\n")[0]
        return "yes" if ref.lower() in pred.lower() else "no"

    rows = [
        {"question": "Colour?", "answer": "blue", "answer_format": "Str", "prediction": "Answer: dark blue"},
        {"question": "Colour?", "answer": "red", "answer_format": "Str", "prediction": "Answer: green"},
    ]
    write_jsonl_atomic(tmp_path / "p.jsonl", rows)
    with fake.FakeOpenAI(answer=answer, faults={0: "503"}) as server:
        assert (
            evaluate.main(
                [
                    "score",
                    "--predictions",
                    str(tmp_path / "p.jsonl"),
                    "--judge-url",
                    server.url,
                    "--judge-model",
                    "judge",
                ]
            )
            == 0
        )
    scored = read_jsonl(tmp_path / "p.scored.jsonl")
    assert [r["judge_score"] for r in scored] == [1.0, 0.0]
    report = json.loads((tmp_path / "p.scored.report.json").read_text())
    assert report["judge"]["accuracy"] == 0.5 and report["judge"]["n"] == 2


class EchoBackend:
    """Answers with the question's first word; fails on items whose id ends with '!'."""

    def __init__(self):
        self.asked = []

    def answer(self, item):
        self.asked.append(item["id"])
        if item["id"].endswith("!"):
            raise RuntimeError("model fell over")
        return "Answer: " + item["question"].split()[0]

    def answer_stream(self, items):
        from megatron_vlm.eval.runner import sequential_stream

        return sequential_stream(self.answer, items)


def _items(ids):
    return [{"id": i, "question": f"{i} ?", "answer": i, "answer_format": "Str", "pages": []} for i in ids]


def test_run_resumes_and_records_errors(tmp_path):
    from megatron_vlm.eval.runner import run_eval

    out = tmp_path / "pred.jsonl"
    # a previous run answered "b" before it died
    (tmp_path / "pred.jsonl.partial").write_text(
        json.dumps({"id": "b", "prediction": "Answer: b", "model": "m"}) + "\n"
    )
    backend = EchoBackend()
    run_eval(_items(["a", "b", "c!"]), backend, out, "m", log=lambda *_: None)
    assert backend.asked == ["a", "c!"]
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["a", "b", "c!"]
    assert rows[0]["prediction"] == "Answer: a" and rows[2]["error"] == "RuntimeError: model fell over"
    assert not (tmp_path / "pred.jsonl.partial").exists()
    with pytest.raises(FileExistsError):
        run_eval(_items(["a"]), backend, out, "m", log=lambda *_: None)


def test_openai_backend_retries_and_bounds(tmp_path):
    from megatron_vlm.eval.backends import OpenAIBackend
    from megatron_vlm.eval.runner import run_eval
    from tests import fake_openai as fake

    image = tmp_path / "p.png"
    Image.new("RGB", (56, 56), "white").save(image)
    items = [{**it, "pages": [{"image": str(image)}]} for it in _items([f"q{i}" for i in range(6)])]

    def answer(body):
        text = body["messages"][0]["content"][-1]["text"]
        assert body["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
        return "Answer: " + text.split()[0]

    # request 0 gets a 503 and request 2 a 429: both retried; at most 2 requests in flight
    with fake.FakeOpenAI(answer=answer, faults={0: "503", 2: "429"}, delay_s=0.05) as server:
        backend = OpenAIBackend(server.url, "m", concurrency=2, retries=3)
        backend.client.backoff_s = 0.01
        run_eval(items, backend, tmp_path / "pred.jsonl", "m", log=lambda *_: None)
        assert server.max_in_flight <= 2
    rows = read_jsonl(tmp_path / "pred.jsonl")
    assert [r["prediction"] for r in rows] == [f"Answer: q{i}" for i in range(6)]
    assert not any("error" in r for r in rows)


def test_build_costs_pages_with_the_models_family(tmp_path):
    """--family qwen3_vl: 280x364 px pages cost 11 x 9 = 99 tokens (32 px each: 352x288), not Qwen2.5-VL's
    13 x 10 = 130 (28 px: 364x280); 1300 - 96 reserved = 1204 holds 11 pages of 99 + 2."""
    bench = _write_bench(tmp_path)
    out = tmp_path / "padded"
    argv = ["build", "--from-jsonl", str(bench), "--output", str(out), "--lengths", "1300", "--depths", "0", "--family"]
    assert evaluate.main([*argv, "qwen3_vl"]) == 0
    items = read_eval_set(out)
    assert {p["tokens"] for it in items for p in it["pages"]} == {99}
    assert {tuple(p["grid_thw"]) for it in items for p in it["pages"]} == {(1, 22, 18)}
    assert all(it["context_tokens"] == 11 * 101 for it in items)
    assert json.loads((out / "eval.json").read_text())["sources"]["family"] == "qwen3_vl"


def test_needle_build_costs_needles_and_haystack_with_the_family(tmp_path):
    """Every page of a needle item (haystack and needle) costs what HF's smart_resize gives with the
    chosen family's factor and pixel limits (28 px / 3,136.. for Qwen2.5-VL, 32 px / 65,536.. for Qwen3-VL)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    from megatron_vlm.models.family import get_family

    pool = write_pool(tmp_path)
    costs = {}
    for family in ("qwen2_5_vl", "qwen3_vl"):
        rule = get_family(family).image
        out = tmp_path / f"needle_{family}"
        argv = ["needle", "build", "--pool", str(pool), "--output", str(out), "--lengths", "2400", "--depths", "0.5",
                "--dpi", "36", "--family", family]
        assert evaluate.main(argv) == 0
        (item,) = read_eval_set(out)
        for p in item["pages"]:
            with Image.open(p["image"]) as im:
                w, h = im.size
            rh, rw = smart_resize(h, w, factor=rule.factor, min_pixels=rule.min_pixels, max_pixels=rule.max_pixels)
            assert p["grid_thw"] == [1, rh // rule.patch_size, rw // rule.patch_size]
            assert p["tokens"] == (rh // rule.factor) * (rw // rule.factor)
            costs.setdefault(p["image"].rsplit("/", 1)[-1], []).append(p["tokens"])
        assert json.loads((out / "eval.json").read_text())["family"] == family
    assert any(a != b for a, b in (c for c in costs.values() if len(c) == 2))  # the families differ on some page
