"""From a token budget to steps and micro-batches, and the learning-rate schedule over those steps.

One micro-batch is one packed sequence of at most ``seq_length`` tokens (docs/formats.md section
4), so a global batch of ``global_batch_tokens`` is ``global_batch_tokens / seq_length``
sequences, split evenly over the data-parallel ranks (CP and TP ranks share a sequence). With
LongPT's numbers, 5B tokens at 4M-token batches of 131,072-token sequences: 32 sequences per
step, 1,192 steps.

The budget counts sequence SLOTS (``seq_length`` tokens each), not real tokens. So the number of
steps and the LR schedule are known before training, and a step trains on the same samples
whether the loader pads sequences to ``seq_length`` or ends them at their real length
(``data.variable_seq_length``): the best fit that fills a slot is the same, and variable length
only stops computing the padding. Real tokens per step are the slots times the packing
efficiency: with pool-native documents (80K-125K tokens, one per 131,072-token slot) ~80%, so
LongPT's 5B-token budget trains on ~4.0B real tokens (1,192 x 32 documents of ~105K). Throughput
(tokens/s) and MFU count real tokens (training/loop.py); ``consumed_tokens`` counts slots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class BudgetError(ValueError):
    """The budget does not fit the layout; the message says which numbers disagree."""


@dataclass(frozen=True)
class Budget:
    """How a token budget turns into optimizer steps on one layout."""

    total_steps: int
    """Optimizer steps the budget pays for (floor: never more tokens than budgeted)."""
    sequences_per_step: int
    """Packed sequences in one global batch."""
    micro_batches_per_rank: int
    """Micro-batches (packed sequences) each data-parallel rank runs per step (gradient accumulation)."""
    tokens_per_step: int
    """Sequence slots of one global batch in tokens (sequences x seq_length); real tokens are fewer."""


def plan_budget(total_tokens: int, global_batch_tokens: int, seq_length: int, dp: int) -> Budget:
    """Steps and accumulation for ``total_tokens`` at ``global_batch_tokens`` per step on ``dp`` ranks."""
    if global_batch_tokens % seq_length:
        raise BudgetError(
            f"train.global_batch_tokens={global_batch_tokens} is not a multiple of data.max_seq_length={seq_length}"
        )
    sequences = global_batch_tokens // seq_length
    if sequences % dp:
        raise BudgetError(f"{sequences} sequences per global batch do not split over {dp} data-parallel ranks")
    steps = total_tokens // global_batch_tokens
    if steps < 1:
        raise BudgetError(f"train.tokens={total_tokens} is less than one global batch ({global_batch_tokens} tokens)")
    return Budget(steps, sequences, sequences // dp, global_batch_tokens)


def learning_rate(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int,
                  schedule: str = "cosine") -> float:
    """LR used for optimizer step ``step`` (0-based).

    Linear warmup reaches ``lr`` at the end of step ``warmup_steps - 1``; then ``constant`` holds
    it and ``cosine`` decays it to ``min_lr`` at the last step.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule != "cosine":
        raise BudgetError(f"train.lr_schedule must be cosine or constant, got {schedule!r}")
    decay_steps = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
