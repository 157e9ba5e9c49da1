"""A tiny Megatron GPTModel gives the same loss and gradients at TP=1, TP=2+SP, PP=2 and TP=2xPP=2.

Weights come from one source of truth: a Megatron dist checkpoint written once at TP=1 and loaded
into every layout (each layout also initialises with a different seed, so only the load can make
them equal). Every run goes through ``get_forward_backward_func`` with several micro-batches, then
Megatron's DDP wrapper and ``finalize_model_grads`` (which sums the sequence-parallel norm grads
over the TP group); gradients are gathered back to full TP=1 tensors and compared.

    python -m pytest tests/distributed/test_gpt_parity.py -q
"""

from __future__ import annotations

import pytest
import torch

from megatron_vlm.parallel import ParallelLayout
from tests.dist_utils import run_distributed

# fp32 everywhere. TP/SP/PP change only the order of floating-point sums (row-parallel partial sums
# all-reduced, reduce-scatter vs all-reduce, micro-batch accumulation), so differences sit at a few
# ulps amplified through 4 layers and backward: measured below 1e-6 relative. 2e-5 relative
# (per tensor, in norm) leaves that margin while any real bug (a missing SP all-reduce halves a
# norm grad, a wrong SwiGLU/QKV shard order scrambles whole rows) is off by O(1).
REL_TOL = 2e-5
LOSS_TOL = 1e-6


def _run_layout(layout, path, seed, make_checkpoint=False):
    """Load the TP=1 checkpoint into ``layout`` (first writing it, at TP=1, if asked), run one
    forward-backward, and return the loss and this rank's full weights and gradients."""
    from megatron.core import parallel_state
    from megatron.core.distributed import finalize_model_grads

    from megatron_vlm.parallel import destroy, initialize
    from tests.distributed import tiny_gpt

    initialize(layout, seed=seed)
    if make_checkpoint:
        assert layout == ParallelLayout()
        source = tiny_gpt.build_model(layout)
        tiny_gpt.randomize_(source)
        tiny_gpt.save_checkpoint(source, path)
    config = tiny_gpt.tiny_config(layout)
    model = tiny_gpt.build_model(layout)
    tiny_gpt.load_checkpoint(model, path)
    params = tiny_gpt.gather_full(model, config, "param")
    ddp = tiny_gpt.wrap_ddp(model, config)
    ddp.zero_grad_buffer()
    loss = tiny_gpt.forward_backward(ddp, layout)
    finalize_model_grads([ddp])
    grads = tiny_gpt.gather_full(model, config, "grad")
    keep = parallel_state.get_tensor_model_parallel_rank() == 0
    destroy()
    return {"loss": loss, "params": params if keep else {}, "grads": grads if keep else {}}


def _merge(results: list[dict]) -> dict:
    merged = {"params": {}, "grads": {}, "loss": None}
    for r in results:
        for key in ("params", "grads"):
            overlap = merged[key].keys() & r[key].keys()
            assert not overlap, f"two stages returned {sorted(overlap)}"
            merged[key].update(r[key])
        if r["loss"] is not None:
            merged["loss"] = r["loss"]
    return merged


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tp1_checkpoint"))
    ref = _merge(run_distributed(_run_layout, 1, ParallelLayout(), path, 7, True, timeout_s=240))
    return path, ref


LAYOUTS = {
    "tp2_sp": (ParallelLayout(tp=2, sequence_parallel=True), 2),
    "pp2": (ParallelLayout(pp=2), 2),
    "tp2_sp_pp2": (ParallelLayout(tp=2, pp=2, sequence_parallel=True), 4),
}


def test_reference_is_sane(reference):
    _, ref = reference
    assert 4.0 < ref["loss"] < 6.0  # ~ln(128) = 4.85 for a near-random model
    assert len(ref["grads"]) == len(ref["params"]) > 10
    # every gradient (norm weights included) is non-trivial, so the comparisons below mean something
    for name, g in ref["grads"].items():
        assert g.abs().max() > 0, name


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_same_loss_and_gradients_as_tp1(reference, name):
    path, ref = reference
    layout, world = LAYOUTS[name]
    got = _merge(run_distributed(_run_layout, world, layout, path, 100 + world, timeout_s=240))

    assert got["params"].keys() == ref["params"].keys()
    for key, p in ref["params"].items():
        assert torch.equal(got["params"][key], p), f"{key}: weights loaded at {name} differ from TP=1"
    assert got["loss"] == pytest.approx(ref["loss"], rel=LOSS_TOL)
    assert got["grads"].keys() == ref["grads"].keys()
    errors = {key: _rel_err(got["grads"][key], g) for key, g in ref["grads"].items()}
    worst = max(errors, key=errors.get)
    print(f"{name}: loss {got['loss']:.7f} vs {ref['loss']:.7f}; worst grad rel err {errors[worst]:.2e} ({worst})")
    bad = {k: e for k, e in errors.items() if e > REL_TOL}
    assert not bad, f"gradients differ from TP=1 at {name}: {bad}"
