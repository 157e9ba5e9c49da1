"""The trainer at PP=2 x VPP=2 (interleaved 1F1B, Qwen2.5-VL debug model) follows the PP=1 run step for step.

Both runs start from one HF directory (``checkpoint.init_from``: converted on the fly into every
chunk) and train 2 steps on the same synthetic global batches: PP=1 as 2 data-parallel ranks of 2
micro-batches each, PP=2 x VPP=2 as 4 micro-batches through 2 chunks per rank. Loss and grad norm
of both steps (the second after an optimizer step) must agree. Model-level checks (gradients per
parameter, image batches, checkpoints across layouts) are in test_qwen_parallel.py.

    python -m pytest tests/distributed/test_train_vpp.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dist_utils import free_port, run_distributed

LAYERS, SEQ = 4, 64


def _recipe(tmp: str, name: str, *extra: str):
    from megatron_vlm.training.config import load_recipe

    return load_recipe(None, [
        "model.kind=qwen2_5_vl", "model.flavor=debug", f"model.num_layers={LAYERS}", "train.data_source=synthetic",
        f"data.max_seq_length={SEQ}", f"train.global_batch_tokens={4 * SEQ}", f"train.tokens={40 * SEQ}",
        "train.precision=fp32", "train.lr=1e-3", "train.max_steps=2", f"checkpoint.dir={Path(tmp) / name}",
        "logging.wandb_mode=disabled", *extra,
    ])


def _both(tmp: str, init: str, second_port: int) -> dict:
    """PP=1 then PP=2 x VPP=2 in one spawn (spawning dominates the cost)."""
    import os

    from megatron_vlm.training.loop import train

    out = {}
    for run, extra in (("pp1", ()), ("vpp", ("parallel.pp=2", "parallel.vpp=2"))):
        history = train(_recipe(tmp, run, init, *extra)).history
        out[run] = [{k: m[k] for k in ("loss", "grad_norm", "target_tokens")} for m in history]
        os.environ["MASTER_PORT"] = str(second_port)  # train() tore the process group down: meet afresh
    return out


def _random_hf_dir(path: Path) -> None:
    """The debug flavor as a transformers checkpoint with random weights (built on the meta device
    and filled directly: HF's own init of the 152K-token embeddings takes seconds)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from megatron_vlm.models.qwen2_5_vl.config import flavor, to_hf_config

    config = Qwen2_5_VLConfig(**to_hf_config(flavor("debug").replace(text=dict(num_hidden_layers=LAYERS))))
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train-vpp")
    _random_hf_dir(tmp / "hf")
    init = f"checkpoint.init_from={tmp / 'hf'}"
    per_rank = run_distributed(_both, 2, str(tmp), init, free_port(), timeout_s=300)
    return tmp, [r["pp1"] for r in per_rank], [r["vpp"] for r in per_rank]


def test_pp2xvpp2_trains_like_pp1(runs):
    _, pp1, vpp = runs
    ref = pp1[0]
    assert len(ref) == 2 and pp1[1] == ref
    assert vpp[0] == vpp[1]  # the loop reduces the loss to every rank
    for step, (a, b) in enumerate(zip(ref, vpp[0])):
        assert b["target_tokens"] == a["target_tokens"], step
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), step
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), step
    assert vpp[0][1]["loss"] != pytest.approx(ref[0]["loss"], rel=1e-4)  # the step changed the weights
