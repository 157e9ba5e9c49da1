"""The per-token loss of a global batch split over micro-batches and DP ranks equals the batch computed at once.

The global batch is 4 packed sequences with different numbers of answer tokens. Megatron's schedule
runs it as 4 micro-batches on one rank, or 2 micro-batches on each of 2 DP ranks (variable-length
sequences there: the padding tail cut to a multiple of 4 tokens); the reference is a plain copy of
the same model run on all 4 sequences at once, loss = sum of token losses / number of answer
tokens. Loss and every parameter gradient must agree.

At PP=2 the stages exchange activations whose length changes from micro-batch to micro-batch
(variable-length packing, ``config.variable_seq_lengths``): loss and gradients equal those of the
same samples packed to the fixed length (whose PP=2 result test_gpt_parity checks against TP=1).
"""

from __future__ import annotations

import pytest
import torch

from tests.dist_utils import run_distributed

SEQ, GLOBAL_SEQS = 64, 4


def _recipe(extra=()):
    from megatron_vlm.training.config import load_recipe

    return load_recipe(None, [
        "model.kind=gpt", "train.data_source=synthetic", f"data.max_seq_length={SEQ}",
        f"train.global_batch_tokens={SEQ * GLOBAL_SEQS}", f"train.tokens={SEQ * GLOBAL_SEQS * 4}",
        "train.precision=fp32", "parallel.distributed_optimizer=false", "logging.wandb_mode=disabled", *extra,
    ])


def _lengths_seen(loader, seen: list):
    for batch in loader:
        seen.append(batch["tokens"].shape[1])
        yield batch


def _megatron_vs_reference(world: int, variable: bool) -> dict:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_vlm.parallel import ParallelLayout, destroy, initialize
    from megatron_vlm.training.forward_step import ForwardStep, reduce_report, report_to_metrics
    from megatron_vlm.training.loop import build_data, build_model
    from megatron_vlm.training.providers import block_causal_mask, get_provider
    from megatron_vlm.training.synthetic import synthetic_micro_batch

    recipe = _recipe([f"data.variable_seq_length={variable}", "data.seq_length_multiple=4"])
    initialize(ParallelLayout(), seed=7)
    provider = get_provider(recipe)
    chunks, _ = build_model(provider, recipe)
    reference = provider.build(recipe, True, True, None)
    reference.load_state_dict(chunks[0].module.state_dict())

    dp = ps.get_data_parallel_world_size()
    loader = build_data(recipe, provider, ps.get_data_parallel_rank(), dp)
    forward_step = ForwardStep(provider, 1, 0, torch.device("cpu"))
    chunks[0].zero_grad_buffer()
    lengths = []
    losses = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=_lengths_seen(loader, lengths), model=chunks,
        num_microbatches=GLOBAL_SEQS // dp, seq_length=SEQ, micro_batch_size=1, forward_only=False)
    metrics = report_to_metrics(reduce_report(losses, ps.get_data_parallel_group(with_context_parallel=True)))

    # Reference: the whole global batch (micro-batches 0..3 of the stream), each sequence padded
    # to SEQ (no loss, its own sub-sequence), as one batch of 4 sequences.
    batches = [synthetic_micro_batch(i, seq_length=SEQ, vocab_size=provider.vocab_size(recipe), seed=recipe.data.seed,
                                     num_batches=16) for i in range(GLOBAL_SEQS)]
    tokens = torch.cat([b["tokens"] for b in batches])
    labels = torch.cat([b["labels"] for b in batches]).clamp(min=0)
    mask = torch.cat([b["loss_mask"] for b in batches])
    positions = torch.cat([b["position_ids"] for b in batches], dim=1)
    attn = torch.cat([block_causal_mask(b["cu_seqlens"], SEQ) for b in batches])
    per_token = reference(tokens, positions, attn, labels=labels)
    ref_loss = (per_token * mask).sum() / mask.sum()
    ref_loss.backward()

    grads = dict(reference.named_parameters())
    worst = 0.0
    for name, param in chunks[0].module.named_parameters():
        worst = max(worst, float((param.main_grad - grads[name].grad).abs().max() / grads[name].grad.abs().max()))
    counts = sorted({int(b["loss_mask"].sum()) for b in batches})
    destroy()
    return {"loss": metrics["loss"], "ref_loss": float(ref_loss), "tokens": metrics["target_tokens"],
            "ref_tokens": float(mask.sum()), "worst_grad_rel": worst, "counts": counts, "lengths": lengths,
            "rank": dist.get_rank() if dist.is_initialized() else None}


@pytest.mark.parametrize("world, variable", [(1, False), (2, True)], ids=["dp1x4mb", "dp2x2mb_varlen"])
def test_global_batch_loss_and_grads_match_the_batch_at_once(world, variable):
    for r in run_distributed(_megatron_vs_reference, world, world, variable, timeout_s=240):
        assert len(r["counts"]) > 1, "the micro-batches should carry different numbers of target tokens"
        assert r["tokens"] == r["ref_tokens"]
        assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-5)
        assert r["worst_grad_rel"] < 1e-4
        assert all(n % 4 == 0 for n in r["lengths"]) and (min(r["lengths"]) < SEQ) == variable


def _pp2_variable_vs_fixed() -> dict:
    import dataclasses

    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_vlm.parallel import ParallelLayout, destroy, initialize
    from megatron_vlm.training.forward_step import ForwardStep, reduce_report, report_to_metrics
    from megatron_vlm.training.loop import build_data, build_model
    from megatron_vlm.training.providers import get_provider

    recipe = _recipe(["parallel.pp=2", "data.seq_length_multiple=4"])
    initialize(ParallelLayout(pp=2), seed=7)
    provider = get_provider(recipe)
    chunks, config = build_model(provider, recipe)
    out = {"variable_seq_lengths": config.variable_seq_lengths}
    for variable in (True, False):
        data = dataclasses.replace(recipe.data, variable_seq_length=variable)
        loader = build_data(dataclasses.replace(recipe, data=data), provider, 0, 1)
        lengths = []
        chunks[0].zero_grad_buffer()
        losses = get_forward_backward_func()(
            forward_step_func=ForwardStep(provider, 1, 0, torch.device("cpu")),
            data_iterator=_lengths_seen(loader, lengths), model=chunks, num_microbatches=GLOBAL_SEQS,
            seq_length=SEQ, micro_batch_size=1, forward_only=False)
        report = reduce_report(losses, None)
        dist.all_reduce(report, group=ps.get_pipeline_model_parallel_group())  # only the last stage has it
        grads = {n: p.main_grad.clone() for n, p in chunks[0].module.named_parameters()}
        out[variable] = {"metrics": report_to_metrics(report), "grads": grads, "lengths": lengths}
    destroy()
    return out


def test_pp2_variable_length_micro_batches_equal_fixed_length():
    for r in run_distributed(_pp2_variable_vs_fixed, 2, timeout_s=240):
        var, fixed = r[True], r[False]
        assert r["variable_seq_lengths"]
        assert fixed["lengths"] == [SEQ] * GLOBAL_SEQS
        assert len(set(var["lengths"])) > 1 and all(n % 4 == 0 and n <= SEQ for n in var["lengths"])
        assert var["metrics"]["target_tokens"] == fixed["metrics"]["target_tokens"] > 0
        assert var["metrics"]["loss"] == pytest.approx(fixed["metrics"]["loss"], rel=1e-6)
        assert var["grads"].keys() == fixed["grads"].keys()
        for name, g in fixed["grads"].items():
            assert g.abs().max() > 0, name
            torch.testing.assert_close(var["grads"][name], g, rtol=1e-5, atol=1e-7, msg=name)
