"""Context parallelism does not change the loss or the gradients: the debug Qwen2.5-VL on the same two packed
micro-batches (sub-sequences of different lengths) at CP=2 gives the CP=1 loss and grads.

Each CP rank sums the token losses of its chunks and counts its target tokens; Megatron's
finalize_model_grads divides by the count summed over DP x CP, so the mean is over the whole batch.
Both packing modes: sequences padded to max_seq_length (the CP split trims the padding tail) and
variable-length ones (the tail cut to a multiple of 2*CP by the data, nothing for the split to trim).
"""

from __future__ import annotations

import pytest
import torch

from tests.dist_utils import run_distributed


def _lengths_seen(loader, seen: list):
    for batch in loader:
        seen.append(batch["tokens"].shape[1])
        yield batch


def _one_step(cp: int):
    """One forward-backward of the same model on the same two micro-batches, in each packing mode."""
    import dataclasses

    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_vlm.parallel import ParallelLayout, destroy, initialize
    from megatron_vlm.training.config import load_recipe
    from megatron_vlm.training.forward_step import ForwardStep, reduce_report, report_to_metrics
    from megatron_vlm.training.loop import build_data, build_model
    from megatron_vlm.training.models import get_provider

    recipe = load_recipe(None, [
        "model.kind=qwen2_5_vl", "model.flavor=debug", f"parallel.cp={cp}", "train.data_source=synthetic",
        "data.max_seq_length=128", "train.global_batch_tokens=256", "train.tokens=256", "train.precision=fp32",
        "parallel.distributed_optimizer=false", "data.seq_length_multiple=4",
    ])
    initialize(ParallelLayout(cp=cp), seed=3)
    provider = get_provider(recipe)
    chunks, _ = build_model(provider, recipe)
    out = {}
    for variable in (False, True):
        data = dataclasses.replace(recipe.data, variable_seq_length=variable)
        loader = build_data(dataclasses.replace(recipe, data=data), provider, 0, 1)
        forward_step = ForwardStep(provider, cp, ps.get_context_parallel_rank(), torch.device("cpu"))
        chunks[0].zero_grad_buffer()
        lengths = []
        losses = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=_lengths_seen(loader, lengths), model=chunks, num_microbatches=2,
            seq_length=128, micro_batch_size=1, forward_only=False)
        metrics = report_to_metrics(reduce_report(losses, ps.get_data_parallel_group(with_context_parallel=True)))
        # big vocab matrices as norms (the payload crosses a pipe), everything else whole
        grads = {n: (p.main_grad.norm().reshape(1) if p.numel() > 1_000_000 else p.main_grad).numpy().copy()
                 for n, p in chunks[0].module.named_parameters()}  # numpy: pickled by value, not shared memory
        out[variable] = (metrics, grads, lengths)
    destroy()
    return out


@pytest.fixture(scope="module")
def cp1_and_cp2():
    return run_distributed(_one_step, 1, 1, timeout_s=300)[0], run_distributed(_one_step, 2, 2, timeout_s=300)


@pytest.mark.parametrize("variable", [False, True], ids=["fixed", "variable"])
def test_cp2_matches_cp1(cp1_and_cp2, variable):
    ref_metrics, ref_grads, ref_lengths = cp1_and_cp2[0][variable]
    assert ref_lengths == [128, 128] if not variable else all(n % 4 == 0 for n in ref_lengths) and min(ref_lengths) < 128
    for by_mode in cp1_and_cp2[1]:
        metrics, grads, lengths = by_mode[variable]
        assert lengths == ref_lengths
        assert metrics["target_tokens"] == ref_metrics["target_tokens"]
        assert metrics["loss"] == pytest.approx(ref_metrics["loss"], rel=1e-5)
        for task in ("extract-single", "extract-multi", "reasoning"):
            assert metrics[f"loss/{task}"] == pytest.approx(ref_metrics[f"loss/{task}"], rel=1e-5)
        for name, ref in ref_grads.items():
            torch.testing.assert_close(torch.from_numpy(grads[name]), torch.from_numpy(ref), rtol=1e-4, atol=1e-6,
                                       msg=name)
