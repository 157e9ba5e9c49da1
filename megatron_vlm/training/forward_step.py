"""Megatron's forward_step / loss_func pair for packed micro-batches, and the loss it reports.

The training loss is the mean over every target token of the WHOLE global batch: each micro-batch
returns (sum of its token losses, its number of target tokens), Megatron's schedules run with
``calculate_per_token_loss=True`` and ``finalize_model_grads`` divides the summed gradients by
the token count summed over micro-batches and data- and context-parallel ranks. So a packed
micro-batch with 3 answer tokens weighs 3/N, not 1/num_microbatches, and a global batch split
into micro-batches, DP and CP ranks gives the same gradient as the batch computed at once.

The report per micro-batch is one float tensor ``[loss sum, tokens, (sum, tokens) per task]``;
:func:`reduce_report` sums it over micro-batches and the DP x CP group.
"""

from __future__ import annotations

from functools import partial

import torch

TASKS = ("extract-single", "extract-multi", "reasoning", "ocr-full", "ocr-needle")
"""Task types with their own loss curve (docs/formats.md section 2); anything else counts as `other`."""
REPORT_NAMES = TASKS + ("other",)


def token_task_index(batch: dict) -> torch.Tensor:
    """[1, T] int64: for every token, the index in REPORT_NAMES of its sub-sequence's task."""
    cu = batch["cu_seqlens"].long()
    lengths = cu[1:] - cu[:-1]
    ids = torch.tensor(
        [TASKS.index(t) if t in TASKS else len(TASKS) for t in batch["sample_tasks"]], dtype=torch.int64
    )
    return torch.repeat_interleave(ids, lengths)[None]


def loss_func(loss_mask: torch.Tensor, task_index: torch.Tensor, per_token_loss: torch.Tensor):
    """Megatron loss_func: (loss sum, target-token count, {"lm loss": report}) for one micro-batch."""
    mask = loss_mask.float().reshape(-1)
    losses = per_token_loss.float().reshape(-1) * mask
    loss_sum = losses.sum()
    num_tokens = mask.sum()
    per_task = torch.zeros(len(REPORT_NAMES), 2, dtype=torch.float32, device=losses.device)
    per_task[:, 0].index_add_(0, task_index.reshape(-1), losses.detach())
    per_task[:, 1].index_add_(0, task_index.reshape(-1), mask)
    report = torch.cat([torch.stack([loss_sum.detach(), num_tokens]), per_task.reshape(-1)])
    return loss_sum, num_tokens.to(torch.int), {"lm loss": report}


def prepare_batch(batch: dict, cp_size: int, cp_rank: int, device: torch.device, family) -> dict:
    """Add per-token task ids, take this rank's context-parallel share (``family``'s pad tokens say
    which slots hold image and video embeddings), move tensors to the device."""
    batch = dict(batch)
    batch["task_index"] = token_task_index(batch)
    if cp_size > 1:
        from megatron_vlm.parallel.context_parallel import split_batch_for_cp

        full_tasks = batch["task_index"]
        batch = split_batch_for_cp(batch, cp_size, cp_rank, image_token_id=family.tokens.image_pad,
                                   video_token_id=family.tokens.video_pad)
        index = batch["cp_source_index"]
        batch["task_index"] = full_tasks[:, index.clamp(min=0)]  # pad slots carry loss_mask 0
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class ForwardStep:
    """Callable for ``get_forward_backward_func()(forward_step_func=...)``.

    It also records what each micro-batch held, before any split: the sample ids (the exact sample
    stream), each sample's own token count (no padding: the sequence-length histogram, tokens/s and
    the FLOPs of training.flops) and each image's [t, h, w] grid (the ViT's FLOPs).
    """

    def __init__(self, provider, cp_size: int, cp_rank: int, device: torch.device):
        self.provider, self.cp_size, self.cp_rank, self.device = provider, cp_size, cp_rank, device
        self.sample_ids: list[str] = []
        self.seq_lengths: list[int] = []
        self.image_grids: list[list[int]] = []

    def __call__(self, data_iterator, model):
        batch = next(data_iterator)
        if not batch.get("_recorded"):  # interleaved pipelines hand every chunk the same batch object
            batch["_recorded"] = True
            real = [i for i, task in enumerate(batch["sample_tasks"]) if task != "padding"]
            self.sample_ids += [batch["sample_ids"][i] for i in real]
            self.seq_lengths += [int(batch["sample_num_tokens"][i]) for i in real]
            self.image_grids += batch["image_grid_thw"].tolist()
        batch = prepare_batch(batch, self.cp_size, self.cp_rank, self.device, self.provider.family)
        output = self.provider.forward(model, batch)
        return output, partial(loss_func, batch["loss_mask"], batch["task_index"])

    def take_records(self) -> tuple[list[str], list[int], list[list[int]]]:
        """(sample ids, their real token counts, image grids) recorded since the last call."""
        records = self.sample_ids, self.seq_lengths, self.image_grids
        self.sample_ids, self.seq_lengths, self.image_grids = [], [], []
        return records


def reduce_report(losses_reduced: list[dict], group) -> torch.Tensor:
    """Sum the per-micro-batch reports of this rank, then over ``group`` (DP x CP). Empty off the last PP stage."""
    if not losses_reduced:
        return torch.zeros(2 + 2 * len(REPORT_NAMES))
    total = torch.stack([r["lm loss"] for r in losses_reduced]).sum(0)
    if group is not None and torch.distributed.get_world_size(group) > 1:
        torch.distributed.all_reduce(total, group=group)
    return total


def report_to_metrics(total: torch.Tensor) -> dict[str, float]:
    """{"loss": mean per target token, "loss/<task>": per task (tasks with tokens only), "target_tokens": N}."""
    out = {"loss": float(total[0] / total[1].clamp(min=1)), "target_tokens": float(total[1])}
    per_task = total[2:].reshape(-1, 2)
    for name, (loss_sum, count) in zip(REPORT_NAMES, per_task):
        if count > 0:
            out[f"loss/{name}"] = float(loss_sum / count)
    return out
