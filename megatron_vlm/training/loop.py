"""The LongPT training loop on Megatron-Core, top to bottom.

    result = train(load_recipe("examples/recipes/debug.yaml"))   # under torchrun, one call per rank

1. start the process groups for the recipe's layout;
2. turn the token budget into steps and micro-batches (budget.py);
3. build the model chunks (models.py), wrap them for data parallelism, build the optimizer;
4. open the data stream (synthetic.py, or the shard loader);
5. resume from CKPT_DIR/latest, or start from checkpoint.init_from;
6. per step: LR from the schedule, Megatron's forward-backward schedule over the micro-batches,
   the loss reduced per target token over the global batch, a NaN/Inf check, the optimizer step,
   metrics, and a checkpoint when due or when SIGTERM/SIGUSR1 arrived.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_vlm.parallel import destroy, device, initialize
from megatron_vlm.training import checkpointing
from megatron_vlm.training.budget import Budget, learning_rate, plan_budget
from megatron_vlm.training.config import Recipe, RecipeError, recipe_to_yaml
from megatron_vlm.training.flops import flops_model_for
from megatron_vlm.training.forward_step import ForwardStep, reduce_report, report_to_metrics
from megatron_vlm.training.logging import RunLogger, peak_memory_gib
from megatron_vlm.training.optimizer import (
    build_optimizer,
    grads_are_finite,
    optimizer_step,
    set_learning_rate,
    wrap_ddp,
)
from megatron_vlm.training.providers import get_provider
from megatron_vlm.training.signals import StopSignal


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had NaN/Inf loss or gradients."""


@dataclass
class TrainResult:
    """What a call to :func:`train` did (the same on every rank)."""

    start_step: int
    """Step the run started from (0, or the resumed checkpoint's step)."""
    last_step: int
    """Step reached when the loop ended."""
    budget: Budget
    """The token budget as steps and micro-batches."""
    history: list[dict] = field(default_factory=list)
    """Per-step metrics (loss, per-task loss, lr, grad norm, ...), in order."""
    stopped_by_signal: bool = False
    """True when SIGTERM/SIGUSR1 ended the run (after a checkpoint)."""
    checkpoint: str | None = None
    """The last checkpoint saved by this call."""


def train(recipe: Recipe, stop: StopSignal | None = None) -> TrainResult:
    """Run (or resume) the recipe to its step budget. Collective: call on every rank.

    ``stop`` records SIGTERM/SIGUSR1 (training/signals.py); the command creates it before its
    imports so a signal during start-up is honoured too. Without one, it is created here."""
    stop = stop or StopSignal()
    initialize(recipe.parallel, seed=recipe.train.seed)
    try:
        return _train(recipe, stop)
    finally:
        destroy()


def _train(recipe: Recipe, stop: StopSignal) -> TrainResult:
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    dp_size, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    budget = plan_budget(recipe.train.tokens, recipe.train.global_batch_tokens, recipe.data.max_seq_length, dp_size)
    last_step = min(budget.total_steps, recipe.train.max_steps or budget.total_steps)
    is_rank0 = dist.get_rank() == 0
    if is_rank0:
        print(f"[train] resolved recipe:\n{recipe_to_yaml(recipe)}", flush=True)

    provider = get_provider(recipe)
    chunks, _ = build_model(provider, recipe)
    optimizer = build_optimizer(chunks, recipe)
    loader = build_data(recipe, provider, dp_rank, dp_size)
    is_loader_writer = ps.get_tensor_model_parallel_rank() == 0 and ps.get_context_parallel_rank() == 0 \
        and ps.get_pipeline_model_parallel_rank() == 0

    start_step, train_state = 0, {}
    resume_from = checkpointing.latest_checkpoint(recipe.checkpoint.dir) if recipe.checkpoint.resume else None
    if resume_from is not None:
        train_state = checkpointing.load_checkpoint(resume_from, chunks, optimizer, loader, dp_rank, recipe)
        start_step = train_state["step"]
    elif recipe.checkpoint.init_from:
        init_weights(recipe.checkpoint.init_from, provider, chunks, optimizer)

    logger = RunLogger(recipe, last_step, active=is_rank0, wandb_run_id=train_state.get("wandb_run_id"),
                       start_step=start_step)
    logger.console(
        f"{budget.total_steps} steps in the budget, running {start_step + 1}..{last_step}; "
        f"{budget.sequences_per_step} sequences of {'up to ' if recipe.data.variable_seq_length else ''}"
        f"{recipe.data.max_seq_length} tokens per step, "
        f"{budget.micro_batches_per_rank} micro-batches on each of {dp_size} data-parallel ranks"
        + (f"; resumed from {resume_from}" if resume_from else "")
    )
    flops_model = flops_model_for(recipe, provider)
    forward_backward = get_forward_backward_func()
    cp_size = recipe.parallel.cp
    forward_step = ForwardStep(provider, cp_size, ps.get_context_parallel_rank(), device().torch_device)
    data_iterator = chunk_iterators(loader, len(chunks)) if len(chunks) > 1 else loader
    dp_cp_group = ps.get_data_parallel_group(with_context_parallel=True)
    nonfinite_streak = train_state.get("nonfinite_streak", 0)
    result = TrainResult(start_step, start_step, budget)
    tokens_done = train_state.get("consumed_tokens", 0)

    def save(step: int) -> None:
        state = {"step": step, "consumed_tokens": tokens_done, "total_steps": budget.total_steps,
                 "world_size": dist.get_world_size(), "dp": dp_size, "nonfinite_streak": nonfinite_streak,
                 "wandb_run_id": logger.wandb_run_id}
        result.checkpoint = str(checkpointing.save_checkpoint(
            recipe.checkpoint.dir, step, chunks, optimizer, loader, state, recipe, dp_rank, is_loader_writer,
            recipe.checkpoint.keep_last))
        logger.console(f"saved checkpoint {result.checkpoint}")

    step = start_step
    if stop.requested(device().torch_device):  # a signal during start-up: nothing new to save, `latest` stands
        logger.console(f"signal received before the first step; exiting at step {step} without a new checkpoint")
        result.stopped_by_signal = True
        last_step = step
    while step < last_step:
        started = time.monotonic()
        lr = learning_rate(step, lr=recipe.train.lr, min_lr=recipe.train.min_lr, warmup_steps=recipe.train.warmup_steps,
                           total_steps=budget.total_steps, schedule=recipe.train.lr_schedule)
        set_learning_rate(optimizer, lr, recipe.train.weight_decay)
        for chunk in chunks:
            chunk.zero_grad_buffer()
        optimizer.zero_grad()

        losses = forward_backward(
            forward_step_func=forward_step, data_iterator=data_iterator, model=chunks,
            num_microbatches=budget.micro_batches_per_rank, seq_length=recipe.data.max_seq_length,
            micro_batch_size=1, forward_only=False,
        )
        report = reduce_report(losses, dp_cp_group).to(device().torch_device)
        if ps.get_pipeline_model_parallel_world_size() > 1:  # only the last stage has the loss
            dist.all_reduce(report, group=ps.get_pipeline_model_parallel_group())
        finite = bool(torch.isfinite(report[0]).item()) and grads_are_finite(chunks)
        if finite:
            _, grad_norm, _ = optimizer_step(optimizer)
            nonfinite_streak = 0
        else:
            grad_norm, nonfinite_streak = float("nan"), nonfinite_streak + 1
            logger.console(f"step {step + 1}: non-finite loss or gradients, update skipped "
                           f"({nonfinite_streak} in a row, limit {recipe.train.max_nonfinite_steps})")
            if nonfinite_streak >= recipe.train.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"{nonfinite_streak} consecutive steps with NaN/Inf loss or gradients (last at step {step + 1}); "
                    f"stopping. Lower train.lr or check the data; resume from {recipe.checkpoint.dir}/latest")
        step += 1
        tokens_done += budget.tokens_per_step

        gathered = [None] * dp_size  # what every DP rank's micro-batches held: ids, real lengths, image grids
        dist.all_gather_object(gathered, forward_step.take_records(), group=ps.get_data_parallel_group())
        sample_ids, seq_lengths, image_grids = ([x for rank in gathered for x in rank[k]] for k in range(3))
        elapsed = time.monotonic() - started
        flops = flops_model.step_flops(seq_lengths, image_grids)
        metrics = {
            **report_to_metrics(report.cpu()), "lr": lr, "grad_norm": float(grad_norm or 0.0) if finite else math.nan,
            "skipped": not finite, "step_time_s": elapsed, "tokens": sum(seq_lengths),
            "tokens_per_s": sum(seq_lengths) / elapsed,  # real tokens: no packing or CP padding
            "consumed_tokens": tokens_done, "memory_gib": peak_memory_gib(),
            "mfu": flops / elapsed / (dist.get_world_size() * recipe.logging.peak_tflops * 1e12)
            if recipe.logging.peak_tflops else 0.0,
        }
        result.history.append(metrics)
        result.last_step = step
        logger.log_step(step, metrics, sample_ids, seq_lengths)

        if stop.requested(device().torch_device):
            logger.console(f"signal received: saving at step {step} and exiting")
            save(step)
            result.stopped_by_signal = True
            break
        interval = recipe.checkpoint.save_interval
        if step == last_step or (interval and step % interval == 0):
            save(step)
            if step < last_step and stop.requested(device().torch_device):  # arrived during the save: it is complete
                logger.console(f"signal received during the save of step {step}; exiting")
                result.stopped_by_signal = True
                break

    logger.close()
    if hasattr(loader, "close"):  # the shard loader's worker processes
        loader.close()
    return result


def build_model(provider, recipe: Recipe) -> tuple[list, object]:
    """One chunk per virtual pipeline stage (one without vpp), bf16-wrapped and in Megatron DDP."""
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.transformer.module import Float16Module

    vpp = recipe.parallel.vpp
    chunks = []
    for vp_stage in range(vpp or 1):
        stage = vp_stage if vpp else None
        chunk = provider.build(
            recipe,
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
            vp_stage=stage,
        )
        config = chunk.config
        if device().is_cuda:
            chunk.cuda(device().index)
        if config.bf16:
            chunk = Float16Module(config, chunk)
        chunks.append(chunk)
    chunks = wrap_ddp(chunks, config, recipe)
    config.finalize_model_grads_func = finalize_model_grads
    # Variable-length packing: pipeline stages exchange each micro-batch's activation shape first.
    config.variable_seq_lengths = recipe.data.variable_seq_length
    config.no_sync_func = [c.no_sync for c in chunks] if len(chunks) > 1 else chunks[0].no_sync
    return chunks, config


def build_data(recipe: Recipe, provider, dp_rank: int, dp_size: int):
    """This data-parallel rank's micro-batch stream (docs/formats.md section 4), with state_dict()."""
    source, data, par = recipe.train.data_source, recipe.data, recipe.parallel
    # Variable lengths must still split evenly over CP ranks (2*cp chunks) and, with sequence parallelism, TP ranks.
    unit = math.lcm(2 * par.cp if par.cp > 1 else 1, par.cp * par.tp if par.shards_sequence else 1)
    if data.variable_seq_length and data.seq_length_multiple % unit:
        raise RecipeError(f"data.seq_length_multiple={data.seq_length_multiple} must be a multiple of {unit} "
                          "(2 x parallel.cp, and cp x tp with sequence parallelism)")
    if source == "synthetic":
        from megatron_vlm.training.synthetic import SyntheticPackedBatches

        return SyntheticPackedBatches(seq_length=data.max_seq_length, vocab_size=provider.vocab_size(recipe),
                                      dp_rank=dp_rank, dp_size=dp_size, seed=data.seed,
                                      length_multiple=data.seq_length_multiple if data.variable_seq_length else None,
                                      patch_dim=provider.family.image.patch_dim)
    if not data.tokenizer or not (Path(data.tokenizer) / "tokenizer.json").is_file():
        raise RecipeError(f"data.tokenizer={data.tokenizer!r} is not a tokenizer directory (no tokenizer.json); "
                          f"point it at the {provider.family.name} model's tokenizer")
    if not (Path(data.shards) / "index.json").is_file():
        raise RecipeError(f"data.shards={data.shards!r} has no index.json (run `preprocess_data.py build` first)")
    from megatron_vlm.data.loader import PackedLoader

    return PackedLoader.from_recipe(data, provider.family.name, dp_rank, dp_size)


def init_weights(path: str, provider, chunks: list, optimizer) -> None:
    """Start from an HF directory (converted on the fly) or a Megatron checkpoint."""
    if (Path(path) / "config.json").is_file():
        provider.load_hf(chunks, path)
    else:
        checkpointing.load_model_weights(path, chunks)
    optimizer.reload_model_params()  # the fp32 master copies follow the loaded weights
    if dist.get_rank() == 0:
        print(f"[train] initialised weights from {path}", flush=True)


def chunk_iterators(loader, num_chunks: int) -> list:
    """Interleaved pipelines ask each model chunk for every micro-batch; fetch each once and share it."""
    cache: dict[int, dict] = {}
    position = [0] * num_chunks

    class _ChunkView:
        def __init__(self, chunk: int):
            self.chunk = chunk

        def __iter__(self):
            return self

        def __next__(self):
            index = position[self.chunk]
            position[self.chunk] += 1
            if index not in cache:
                cache[index] = next(loader)
            batch = cache[index]
            if all(p > index for p in position):
                del cache[index]
            return batch

    return [_ChunkView(c) for c in range(num_chunks)]
