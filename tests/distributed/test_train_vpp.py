"""The trainer at PP=2 x VPP=2 (interleaved 1F1B, Qwen2.5-VL debug model) follows the PP=1 run step for step.

Both runs start from one HF directory (``checkpoint.init_from``: converted on the fly into every
chunk) and train 2 steps on the same synthetic global batches, packed to variable lengths (56 or
64 tokens, so pipeline stages exchange shapes first): PP=1 as 2 data-parallel ranks of 2
micro-batches each, PP=2 x VPP=2 as 4 micro-batches through 2 chunks per rank. Loss and grad norm
of both steps (the second after an optimizer step) must agree, and the final trainer checkpoints
(the vpp one holds model0/model1 and the optimizer state) export to the same HF weights.
Model-level checks (gradients per parameter, image batches, checkpoints across layouts, tied
embeddings) are in test_qwen_parallel.py.

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
        "data.seq_length_multiple=8", "logging.wandb_mode=disabled", *extra,
    ])


def _both(tmp: str, init: str, ports: list[int]) -> dict:
    """PP=1 then PP=2 x VPP=2 in one spawn (spawning dominates the cost), then rank 0 exports both
    final checkpoints to HF."""
    import os

    from megatron_vlm.checkpoint.convert import mcore_to_hf
    from megatron_vlm.parallel import destroy
    from megatron_vlm.training.loop import train

    out = {}
    for run, extra, port in (("pp1", (), ports[0]), ("vpp", ("parallel.pp=2", "parallel.vpp=2"), ports[1])):
        history = train(_recipe(tmp, run, init, *extra)).history
        out[run] = [{k: m[k] for k in ("loss", "grad_norm", "target_tokens")} for m in history]
        os.environ["MASTER_PORT"] = str(port)  # train() tore the process group down: meet afresh
    if os.environ["RANK"] == "0":  # the converter starts its own one-rank group
        os.environ.update(WORLD_SIZE="1", MASTER_PORT=str(ports[2]))
        for run in ("pp1", "vpp"):
            mcore_to_hf(str(Path(tmp) / run), str(Path(tmp) / f"hf-{run}"), progress=lambda msg: None)
        destroy()
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
    per_rank = run_distributed(_both, 2, str(tmp), init, [free_port() for _ in range(3)], timeout_s=300)
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


def test_pp2xvpp2_checkpoint_exports_like_the_pp1_one(runs):
    import torch
    from safetensors.torch import load_file

    tmp, _, _ = runs
    exports = {}
    for run in ("pp1", "vpp"):
        exports[run] = {}
        for file in sorted((tmp / f"hf-{run}").glob("*.safetensors")):
            exports[run].update(load_file(file))
    assert exports["vpp"].keys() == exports["pp1"].keys()
    for name, weight in exports["pp1"].items():  # 2 Adam steps of lr 1e-3 from weights of scale 0.05
        torch.testing.assert_close(exports["vpp"][name], weight, rtol=0, atol=1e-5, msg=name)
