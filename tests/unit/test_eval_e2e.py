"""End to end on CPU: pool + QA -> eval set -> tiny Qwen2.5-VL (saved with save_pretrained) answered
in-process and through an OpenAI-compatible server on loopback -> same answers, same scores.

The model is random, so its answers are noise; the test checks that both paths give the same text
for the same item, that the prompt the model sees has exactly the token count the eval set
claims, and that score / compare run on the results. Processor: our QwenInputs (tokenizer from
the reference dir, Qwen2VLImageProcessor PIL fallback), because AutoProcessor needs torchvision.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_vlm.eval import commands
from megatron_vlm.eval.files import read_jsonl, write_jsonl_atomic
from tests.unit.eval_pool import write_pool
from tools import evaluate

pytestmark = pytest.mark.slow


def make_tiny_qwen(path: Path) -> Path:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=151936,
            max_position_embeddings=32768,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
            rope_theta=1e6,
            tie_word_embeddings=True,
            initializer_range=0.5,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=2,
            out_hidden_size=64,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[1],
            initializer_range=0.5,
        ),
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        bos_token_id=151643,
        eos_token_id=151645,
    )
    # initializer_range 0.5 (not 0.02): a random model whose answer depends on its input, so
    # "both paths give the same answer" cannot pass by the model always saying the same thing.
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory, qwen_tokenizer_dir, reference_dir):
    root = tmp_path_factory.mktemp("e2e")
    pool = write_pool(root)
    qa = root / "qa"
    qa.mkdir()
    rows = [
        {
            "id": "q1",
            "doc_id": "doc03",
            "task": "extract-single",
            "segment": [0, 9],
            "question": "What colour is page 4?",
            "answer": "blue",
            "answer_format": "Str",
            "evidence_pages": [4],
        },
        {
            "id": "q2",
            "doc_id": "doc05",
            "task": "reasoning",
            "segment": [0, 6],
            "question": "How many tables are there?",
            "answer": 3,
            "answer_format": "Int",
            "evidence_pages": [1],
        },
    ]
    (qa / "records-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "train_ids.txt").write_text("doc00\ndoc01\n")
    model = make_tiny_qwen(root / "tiny-qwen")
    preprocessor = reference_dir / "hf_configs" / "Qwen2.5-VL-7B-Instruct"
    return root, pool, qa, model, qwen_tokenizer_dir, preprocessor


def test_inprocess_and_server_agree(setup):
    from megatron_vlm.eval import commands
    from megatron_vlm.eval.backends import HFBackend
    from megatron_vlm.eval.evalset import read_eval_set
    from megatron_vlm.eval.server import ChatServer

    root, pool, qa, model, tokenizer, preprocessor = setup
    eval_dir = root / "evalset"
    assert (
        evaluate.main(
            [
                "build",
                "--pool",
                str(pool),
                "--qa",
                str(qa),
                "--output",
                str(eval_dir),
                "--exclude",
                str(root / "train_ids.txt"),
                "--lengths",
                "700,1100",
                "--depths",
                "0.5",
                "--tokenizer",
                str(tokenizer),
            ]
        )
        == 0
    )
    items = read_eval_set(eval_dir)
    assert len(items) == 4 and all(it["prompt_tokens_exact"] for it in items)

    backend = HFBackend(model, device="cpu", max_new_tokens=6, tokenizer_dir=tokenizer, preprocessor_dir=preprocessor)
    # The prompt the model gets has exactly the eval set's token count (and generate() itself
    # checks that the <|image_pad|> count equals the vision features, so the pad expansion is right).
    for item in items:
        from megatron_vlm.eval.backends import load_images

        ids = backend.inputs(item["question"], load_images(item))["input_ids"]
        assert ids.shape[1] == item["num_tokens"] <= item["target_tokens"]

    local = root / "pred_local.jsonl"
    commands.run(eval_dir, local, backend, "tiny-local", log=lambda *_: None)

    server = ChatServer(backend, model_name="tiny").start()
    try:
        remote = root / "pred_server.jsonl"
        assert (
            evaluate.main(
                [
                    "run",
                    "--eval-set",
                    str(eval_dir),
                    "--output",
                    str(remote),
                    "--backend",
                    "openai",
                    "--url",
                    server.url,
                    "--served-model",
                    "tiny",
                    "--concurrency",
                    "2",
                    "--max-new-tokens",
                    "6",
                    "--name",
                    "tiny-server",
                ]
            )
            == 0
        )
        assert server.requests == len(items)
    finally:
        server.stop()

    a, b = read_jsonl(local), read_jsonl(remote)
    assert [r["id"] for r in a] == [r["id"] for r in b] == [it["id"] for it in items]
    assert [r["prediction"] for r in a] == [r["prediction"] for r in b]
    assert len({r["prediction"] for r in a}) > 1  # the answers depend on the input
    assert not any("error" in r for r in a + b)

    # Give the first item the in-process answer as its gold answer in both files (same edit on both
    # sides), so the scores mix hits and misses instead of being all zero for a random model.
    for rows in (a, b):
        rows[0]["answer"], rows[0]["answer_format"] = a[0]["prediction"].strip() or "x", "Str"
    write_jsonl_atomic(local, a)
    write_jsonl_atomic(remote, b)
    assert evaluate.main(["score", "--predictions", str(local)]) == 0
    assert evaluate.main(["score", "--predictions", str(remote)]) == 0
    sa, sb = read_jsonl(root / "pred_local.scored.jsonl"), read_jsonl(root / "pred_server.scored.jsonl")
    assert [r["score"] for r in sa] == [r["score"] for r in sb]
    assert sa[0]["score"] == 1.0
    assert (
        evaluate.main(
            [
                "compare",
                "--base",
                str(root / "pred_local.scored.jsonl"),
                "--trained",
                str(root / "pred_server.scored.jsonl"),
                "--output",
                str(root / "cmp"),
            ]
        )
        == 0
    )
    cmp = json.loads((root / "cmp" / "compare.json").read_text())
    assert cmp["delta"]["overall"] == 0.0
    assert cmp["base"]["overall"]["accuracy"] == pytest.approx(sum(r["score"] for r in sa) / len(sa))


def test_cli_errors_are_one_line(setup, tmp_path, capsys):
    root, pool, qa, *_ = setup
    assert evaluate.main(["build", "--output", str(tmp_path / "x")]) == 2
    assert evaluate.main(["score", "--predictions", str(tmp_path / "missing.jsonl")]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"answer": 1, "answer_format": "Int"}\n')
    assert evaluate.main(["score", "--predictions", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("evaluate.py ") for line in err)
    assert not (tmp_path / "bad.scored.jsonl").exists()


@pytest.mark.slow(40)
def test_mmlongbench_end_to_end(setup, tmp_path):
    """A small MMLongBench-format file imported, answered by the tiny model with the MMLongBench prompt
    (in process and through the loopback server with continue_final_message), scored by MMLongBench's
    rules (chosen from the lines' benchmark field), reported as the paper's tables, compared."""
    from megatron_vlm.eval.backends import HFBackend
    from megatron_vlm.eval.server import ChatServer
    from tests.unit import eval_benchmarks as bench

    _, _, _, model, tokenizer, preprocessor = setup
    data, images = bench.write_mmlongbench(tmp_path)
    eval_dir = tmp_path / "mmlb"
    assert evaluate.main(["import", "mmlongbench", "--input", str(data), "--image-root", str(images),
                          "--output", str(eval_dir), "--samples", "0"]) == 0
    backend = HFBackend(model, device="cpu", max_new_tokens=4, tokenizer_dir=tokenizer, preprocessor_dir=preprocessor,
                        prompt_mode="mmlongbench")
    base = tmp_path / "base.jsonl"
    commands.run(eval_dir, base, backend, "tiny-base", image_root=images, log=lambda *_: None)
    server = ChatServer(backend, model_name="tiny").start()
    try:
        trained = tmp_path / "trained.jsonl"
        assert evaluate.main(["run", "--eval-set", str(eval_dir), "--image-root", str(images), "--output", str(trained),
                              "--backend", "openai", "--url", server.url, "--served-model", "tiny", "--prompt",
                              "mmlongbench", "--max-new-tokens", "4", "--name", "tiny-trained"]) == 0
    finally:
        server.stop()
    a, b = read_jsonl(base), read_jsonl(trained)
    assert [r["prediction"] for r in a] == [r["prediction"] for r in b]  # the same continuation both ways
    assert all(r["prediction"].startswith("Answer:") and r["prompt"] == "mmlongbench" for r in a)
    assert len({r["prediction"] for r in a}) > 1
    # the trained side gets its first answer right, so the tables differ where they should
    from megatron_vlm.eval.rules_mmlongbench import parse_answer

    b[0]["answer"], b[0]["answer_format"] = parse_answer(b[0]["prediction"]) or "x", "String"
    write_jsonl_atomic(trained, b)
    for path in (base, trained):
        assert evaluate.main(["score", "--predictions", str(path)]) == 0
    rep = json.loads((tmp_path / "trained.scored.report.json").read_text())
    assert rep["rules"] == "mmlongbench" and rep["string_metric"] == "token-f1"
    scored = read_jsonl(tmp_path / "trained.scored.jsonl")
    by_ds = {}
    for r in scored:
        by_ds.setdefault(r["dataset"], []).append(r["score"])
    tables = rep["paper_tables"]
    assert tables["datasets"]["mmlongdoc"]["8192"] == pytest.approx(100 * sum(by_ds["mmlongdoc"]) / 3)
    assert tables["average"]["8192"] == pytest.approx(
        (tables["datasets"]["mmlongdoc"]["8192"] + tables["datasets"]["slidevqa"]["8192"]) / 2
    )
    assert tables["reported"] == {"64K/128K": None, "256K": None, "512K": None}  # only 8K here
    assert "| **doc-VQA avg** |" in (tmp_path / "trained.scored.report.md").read_text()
    assert evaluate.main(["compare", "--base", str(tmp_path / "base.scored.jsonl"), "--trained",
                          str(tmp_path / "trained.scored.jsonl"), "--output", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| mmlongdoc | tiny-base |" in md and "| mmlongdoc | tiny-trained |" in md


def test_inputs_give_the_hf_processors_positions_and_logits(setup, tmp_path):
    """QwenInputs (the in-process eval's processor) gives the model what HF's Qwen2.5-VL processor
    gives: the same ids and pixels and the image tokens marked (mm_token_type_ids), so the model
    computes the same mRoPE positions and logits. Unmarked, transformers 5.x gives the image tokens
    text positions, silently (the bug this test was written for)."""
    import shutil

    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from megatron_vlm.eval import prompts
    from megatron_vlm.eval.backends import QwenInputs

    _, _, _, model_dir, tokenizer, preprocessor = setup
    hf_dir = tmp_path / "processor"
    shutil.copytree(tokenizer, hf_dir)
    shutil.copyfile(preprocessor / "preprocessor_config.json", hf_dir / "preprocessor_config.json")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((252, 196), (140, 308))]
    prompt = prompts.default_prompt("What is on the second page?", len(images))
    ours = QwenInputs(tokenizer, preprocessor).encode(prompt, images)
    processor = AutoProcessor.from_pretrained(hf_dir)
    text = prompts.render(prompt, processor.tokenizer, prompts.load_chat_template(tokenizer))
    ref = processor(text=[text], images=images, return_tensors="pt")
    assert torch.equal(ours["input_ids"], ref["input_ids"])
    assert torch.equal(ours["mm_token_type_ids"], ref["mm_token_type_ids"])
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**ours).logits, model(**ref).logits, rtol=1e-5, atol=1e-5)
