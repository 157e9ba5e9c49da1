"""A Megatron dist checkpoint saved at one TP/PP layout loads at another with the same weights and logits.

Chain: TP=1 (random weights, the reference) -> load at TP=2+SP, save -> load that at TP=1, and at
PP=2, save -> load that at TP=2 and at TP=2xPP=2. Every load is checked against the reference
weights bit for bit (gathered to full tensors), and its logits against the reference: bit-identical
at the same layout, to fp32 rounding across layouts.

    python -m pytest tests/distributed/test_dist_checkpoint_reshard.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from megatron_vlm.parallel import ParallelLayout
from tests.dist_utils import run_distributed

TP1 = ParallelLayout()
TP2 = ParallelLayout(tp=2, sequence_parallel=True)
PP2 = ParallelLayout(pp=2)
TP2PP2 = ParallelLayout(tp=2, pp=2, sequence_parallel=True)


def _load_run_save(layout, load_path, save_path, seed):
    """Build ``layout`` (fresh random init), load ``load_path`` (or keep random weights and
    perturb them if None), optionally save to ``save_path``; return full weights and logits."""
    from megatron.core import parallel_state

    from megatron_vlm.parallel import destroy, initialize
    from tests.distributed import tiny_gpt

    initialize(layout, seed=seed)
    config = tiny_gpt.tiny_config(layout)
    model = tiny_gpt.build_model(layout)
    if load_path is None:
        tiny_gpt.randomize_(model)
    else:
        tiny_gpt.load_checkpoint(model, load_path)
    if save_path is not None:
        tiny_gpt.save_checkpoint(model, save_path)
    params = tiny_gpt.gather_full(model, config, "param")
    model.eval()
    out = tiny_gpt.logits(model)
    keep = parallel_state.get_tensor_model_parallel_rank() == 0
    destroy()
    return {"params": params if keep else {}, "logits": out if keep else None}


def _run(layout, world, load_path, save_path=None, seed=0):
    merged = {"params": {}, "logits": None}
    for r in run_distributed(_load_run_save, world, layout, load_path, save_path, seed, timeout_s=240):
        merged["params"].update(r["params"])
        if r["logits"] is not None:
            merged["logits"] = r["logits"]
    return merged


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("reshard")
    paths = {name: str(root / name) for name in ("tp1", "tp2", "pp2")}
    for p in paths.values():
        Path(p).mkdir()
    ref = _run(TP1, 1, None, paths["tp1"], seed=1)
    at_tp2 = _run(TP2, 2, paths["tp1"], paths["tp2"], seed=2)
    at_pp2 = _run(PP2, 2, paths["tp2"], paths["pp2"], seed=3)
    return paths, ref, at_tp2, at_pp2


def _assert_same_weights(got, ref, what):
    assert got["params"].keys() == ref["params"].keys(), what
    for key, p in ref["params"].items():
        assert torch.equal(got["params"][key], p), f"{what}: {key} differs"


def _assert_close_logits(got, ref):
    # Different TP layouts sum the same products in a different order: fp32 rounding only.
    assert got["logits"].shape == ref["logits"].shape
    torch.testing.assert_close(got["logits"], ref["logits"], rtol=1e-5, atol=1e-5)


def test_intermediate_saves_kept_the_weights(checkpoints):
    _, ref, at_tp2, at_pp2 = checkpoints
    assert ref["logits"].shape == (3, 2, 32, 128) and ref["logits"].std() > 0.1
    _assert_same_weights(at_tp2, ref, "TP1 checkpoint loaded at TP2")
    _assert_same_weights(at_pp2, ref, "TP2 checkpoint loaded at PP2")
    _assert_close_logits(at_tp2, ref)
    assert torch.equal(at_pp2["logits"], ref["logits"])  # PP alone does not reorder any sum


def test_tp2_checkpoint_loads_at_tp1(checkpoints):
    paths, ref, _, _ = checkpoints
    got = _run(TP1, 1, paths["tp2"], seed=4)
    _assert_same_weights(got, ref, "TP2 checkpoint loaded at TP1")
    assert torch.equal(got["logits"], ref["logits"])


def test_pp2_checkpoint_loads_at_tp2(checkpoints):
    paths, ref, at_tp2, _ = checkpoints
    got = _run(TP2, 2, paths["pp2"], seed=5)
    _assert_same_weights(got, ref, "PP2 checkpoint loaded at TP2")
    assert torch.equal(got["logits"], at_tp2["logits"])
    _assert_close_logits(got, ref)


def test_pp2_checkpoint_loads_at_tp2_pp2(checkpoints):
    paths, ref, _, _ = checkpoints
    got = _run(TP2PP2, 4, paths["pp2"], seed=6)
    _assert_same_weights(got, ref, "PP2 checkpoint loaded at TP2xPP2")
    _assert_close_logits(got, ref)
