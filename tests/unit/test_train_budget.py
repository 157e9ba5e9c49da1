"""Token budget -> steps/micro-batches, and the LR schedule, against hand-computed values."""

import math

import pytest

from megatron_vlm.training.budget import BudgetError, learning_rate, plan_budget


def test_longpt_budget_is_1192_steps_of_32_sequences():
    b = plan_budget(5_000_000_000, 32 * 131_072, 131_072, dp=4)
    assert b.total_steps == 1192  # 5e9 / 4,194,304 = 1192.09
    assert b.sequences_per_step == 32
    assert b.micro_batches_per_rank == 8
    assert b.tokens_per_step == 4_194_304


@pytest.mark.parametrize(
    "args, message",
    [
        ((10_000, 1000, 128, 1), "multiple of data.max_seq_length"),
        ((10_000, 384, 128, 2), "do not split over 2"),
        ((100, 512, 128, 1), "less than one global batch"),
    ],
)
def test_budget_errors_name_the_numbers(args, message):
    with pytest.raises(BudgetError, match=message):
        plan_budget(*args)


def test_warmup_then_cosine_to_min_lr():
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=14)
    assert learning_rate(0, **kw) == pytest.approx(0.25)
    assert learning_rate(3, **kw) == pytest.approx(1.0)
    # decay over steps 4..13 (9 intervals): halfway at step 8.5 -> cos = 0
    assert learning_rate(4, **kw) == pytest.approx(1.0)
    mid = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 9))
    assert learning_rate(8, **kw) == pytest.approx(mid)
    assert learning_rate(13, **kw) == pytest.approx(0.1)


def test_constant_schedule_and_bad_name():
    assert learning_rate(100, lr=2.0, min_lr=0.0, warmup_steps=10, total_steps=1000, schedule="constant") == 2.0
    with pytest.raises(BudgetError, match="cosine or constant"):
        learning_rate(100, lr=2.0, min_lr=0.0, warmup_steps=10, total_steps=1000, schedule="linear")
