"""The parallelism planner: parameter counts against HF transformers, memory rules, layouts, budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_vlm.planner import (
    GB,
    Layout,
    PlanRequest,
    Shapes,
    Training,
    budget,
    estimate_memory,
    plan,
    shapes_for,
    total_params,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["Qwen2.5-VL-3B-Instruct", "Qwen2.5-VL-7B-Instruct"])
def test_param_count_matches_hf_model_on_meta(reference_dir, name):
    """Our parameter formula against the real HF model built on the meta device from the published config."""
    import torch
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    cfg = AutoConfig.from_pretrained(reference_dir / "hf_configs" / name)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    hf_total = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    flavor = name.split("-")[2]
    assert total_params(shapes_for(flavor)) == hf_total


@pytest.mark.parametrize("name", ["2B", "4B", "8B", "32B"])
def test_qwen3_param_count_matches_hf_model_on_meta(reference_dir, name):
    """Qwen3-VL: head_dim 128 != hidden / heads (4B, 32B), QK-norm, no QKV bias, LayerNorm + GELU ViT
    with a position grid and DeepStack mergers; the shapes come from the family's flavor."""
    import torch
    from transformers import AutoConfig, Qwen3VLForConditionalGeneration

    cfg = AutoConfig.from_pretrained(reference_dir / "qwen3_vl" / f"Qwen3-VL-{name}-Instruct")
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(cfg)
    assert total_params(shapes_for(name, "qwen3_vl")) == sum(p.numel() for p in model.parameters())


def test_flavor_table_matches_published_configs(reference_dir):
    for flavor in ("3B", "7B"):
        raw = json.loads((reference_dir / "hf_configs" / f"Qwen2.5-VL-{flavor}-Instruct" / "config.json").read_text())
        s = shapes_for(flavor)
        got = (s.vocab_size, s.hidden_size, s.ffn_hidden_size, s.num_layers, s.num_heads, s.num_kv_heads,
               s.tied_embeddings, s.vit_depth, s.vit_hidden_size, s.vit_ffn_hidden_size)
        v = raw["vision_config"]
        want = (raw["vocab_size"], raw["hidden_size"], raw["intermediate_size"], raw["num_hidden_layers"],
                raw["num_attention_heads"], raw["num_key_value_heads"], raw["tie_word_embeddings"], v["depth"],
                v["hidden_size"], v["intermediate_size"])
        assert got == want


def test_paper_budget_steps():
    # 5B tokens at 32 x 131,072 = 4,194,304 tokens per step: 1,192 whole steps (DESIGN.md).
    b = budget(PlanRequest())
    assert (b.global_batch_sequences, b.steps) == (32, 1192)
    assert b.tokens_trained == 1192 * 32 * 131072 <= 5_000_000_000


def test_7b_128k_on_64_h100_fits_80gb():
    # As the recipe runs it: vision tower frozen (trained, it needs full recompute; see below).
    req = PlanRequest(flavor="7B", seq_length=131072, num_gpus=64, gpu_memory_gb=80, train_vision=False)
    best = plan(req)[0]
    assert best.fits
    assert best.layout.world_size == 64
    assert best.memory.total <= (80 - req.reserve_gb) * GB
    assert 32 % best.layout.dp == 0 and best.micro_batches * best.layout.dp == 32
    print(f"7B/128K/64xH100: {best.layout}, {best.memory.total / GB:.1f} GB")


def test_trained_vit_at_128k():
    # Images shared out over CP ranks: a trained ViT fits with selective recompute.
    assert plan(PlanRequest(flavor="7B", num_gpus=64, recompute="selective"))[0].fits
    # Every CP rank encoding the whole micro-batch's ~524K patches: only with full recompute.
    assert not plan(PlanRequest(flavor="7B", num_gpus=64, recompute="selective", vision_cp=False))[0].fits
    assert plan(PlanRequest(flavor="7B", num_gpus=64, recompute="full", vision_cp=False))[0].fits


def test_vision_activations_split_over_cp():
    s = shapes_for("7B")
    lay = Layout(tp=4, cp=4, dp=4, sequence_parallel=True)
    shared = estimate_memory(s, lay, Training(seq_length=131072, vision_cp=True)).vision
    everyone = estimate_memory(s, lay, Training(seq_length=131072, vision_cp=False)).vision
    merged = 131072 * 3584 * 2  # the all-gathered merger output is whole on every rank either way
    assert shared - merged == pytest.approx((everyone - merged) / 4)


def test_72b_and_3b_have_fitting_layouts():
    assert plan(PlanRequest(flavor="72B", num_gpus=256, recompute="full", train_vision=False))[0].fits
    assert plan(PlanRequest(flavor="3B", num_gpus=32, train_vision=False))[0].fits


def test_adam_states_by_hand():
    """A one-layer model: bf16 weights 2 B, fp32 grads 4 B, Adam (master + 2 moments) 12 B / (dp*cp)."""
    s = Shapes(vocab_size=100, hidden_size=8, ffn_hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1)
    # layer: qkv 8*(8+2*4)+16, proj 64, mlp 3*8*16, norms 16; embeddings 2*800; final norm 8
    n = (8 * 16 + 16) + 64 + 384 + 16 + 1600 + 8
    train = Training(seq_length=16, include_vision=False)
    m = estimate_memory(s, Layout(dp=4, cp=2), train)
    assert m.weights == 2 * n and m.grads == 4 * n and m.optimizer == pytest.approx(12 * n / 8)
    m = estimate_memory(s, Layout(dp=4), Training(seq_length=16, include_vision=False, distributed_optimizer=False))
    assert m.optimizer == 12 * n


def test_parallelism_divides_activations():
    s = shapes_for("7B")
    train = Training(seq_length=131072)
    one = estimate_memory(s, Layout(tp=1, cp=1, sequence_parallel=False), train)
    tp_sp = estimate_memory(s, Layout(tp=4, cp=1, sequence_parallel=True), train)
    cp = estimate_memory(s, Layout(tp=1, cp=4, sequence_parallel=False), train)
    # With SP every kept tensor is split over TP; CP splits the sequence. Flash keeps no s^2 term.
    assert tp_sp.activations == pytest.approx(one.activations / 4)
    assert cp.activations == pytest.approx(one.activations / 4)
    full = estimate_memory(s, Layout(tp=4, cp=4), Training(seq_length=131072, recompute="full"))
    sel = estimate_memory(s, Layout(tp=4, cp=4), train)
    assert full.activations < sel.activations / 5


def test_pipeline_first_stage_holds_pp_microbatches():
    s = shapes_for("7B")
    train = Training(seq_length=32768, include_vision=False, micro_batches=16)
    pp1 = estimate_memory(s, Layout(tp=4, pp=1), train)
    pp2 = estimate_memory(s, Layout(tp=4, pp=2), train)
    # 1F1B: the first stage keeps pp micro-batches of L/pp layers = the same activations as pp=1.
    assert pp2.activations == pytest.approx(pp1.activations - 2 * 32768 * 3584 * 2 / 4, rel=1e-6)
    assert pp2.weights < pp1.weights


def test_layouts_respect_megatron_divisibility():
    for e in plan(PlanRequest(flavor="7B", num_gpus=64)):
        lay = e.layout
        assert 28 % lay.tp == 0 and 4 % lay.tp == 0 and lay.tp <= 8
        assert 131072 % (2 * lay.cp) == 0 and lay.world_size == 64


def test_cli_prints_plan_and_writes_json(tmp_path):
    out = tmp_path / "plan.json"
    r = subprocess.run(
        [sys.executable, str(REPO / "tools/plan_parallelism.py"), "--flavor", "7B", "--gpus", "64", "--freeze-vision",
         "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "1,192 steps" in r.stdout and "wrote" in r.stdout
    data = json.loads(out.read_text())
    assert data["budget"]["steps"] == 1192 and data["layouts"][0]["fits"]


def test_cli_exits_1_when_nothing_fits():
    r = subprocess.run([sys.executable, str(REPO / "tools/plan_parallelism.py"), "--flavor", "72B", "--gpus", "8"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no layout fits" in r.stdout


def test_cli_bad_input_one_line():
    r = subprocess.run([sys.executable, str(REPO / "tools/plan_parallelism.py"), "--gpus", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--gpus must be positive" in r.stderr


def test_cli_flavor_is_checked_against_the_family():
    r = subprocess.run([sys.executable, str(REPO / "tools/plan_parallelism.py"), "--family", "qwen2_5_vl", "--flavor", "8B"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--flavor '8B' is not a qwen2_5_vl flavor; known: debug, 3B, 7B, 32B, 72B" in r.stderr
