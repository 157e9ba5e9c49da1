"""loss_func / per-task report against hand-computed sums; the synthetic batches follow docs/formats.md section 4."""

import pytest
import torch

from megatron_vlm.training.forward_step import REPORT_NAMES, loss_func, report_to_metrics, token_task_index
from megatron_vlm.training.synthetic import SyntheticPackedBatches, synthetic_micro_batch


def test_loss_func_sums_over_target_tokens_and_per_task():
    batch = {"cu_seqlens": torch.tensor([0, 3, 5, 6], dtype=torch.int32),
             "sample_tasks": ["reasoning", "extract-single", "padding"]}
    task_index = token_task_index(batch)
    assert task_index.tolist() == [[2, 2, 2, 0, 0, 5]]
    per_token = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0, 0.0]])
    loss_sum, count, report = loss_func(mask, task_index, per_token)
    assert loss_sum.item() == 2 + 3 + 5 and count.item() == 3
    metrics = report_to_metrics(report["lm loss"])
    assert metrics["loss"] == pytest.approx(10 / 3)
    assert metrics["loss/reasoning"] == 2.5 and metrics["loss/extract-single"] == 5.0
    assert "loss/other" not in metrics and len(REPORT_NAMES) * 2 + 2 == report["lm loss"].numel()


def test_loss_func_backward_is_the_masked_sum():
    per_token = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    loss_sum, _, _ = loss_func(torch.tensor([[1.0, 0.0, 1.0]]), torch.zeros(1, 3, dtype=torch.int64), per_token)
    loss_sum.backward()
    assert per_token.grad.tolist() == [[1.0, 0.0, 1.0]]


def test_synthetic_batch_follows_the_loader_contract():
    b = synthetic_micro_batch(3, seq_length=96, vocab_size=50, seed=1, num_batches=4)
    T = 96
    assert b["tokens"].shape == (1, T) and b["tokens"].dtype == torch.int64
    assert b["labels"].shape == (1, T) and b["loss_mask"].dtype == torch.float32
    assert b["position_ids"].shape == (3, 1, T)
    cu = b["cu_seqlens"]
    assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == T
    assert len(b["sample_tasks"]) == len(b["sample_ids"]) == len(b["sample_num_tokens"]) == len(cu) - 1
    assert b["sample_num_tokens"] == [0 if t == "padding" else e - s
                                      for t, s, e in zip(b["sample_tasks"], cu[:-1].tolist(), cu[1:].tolist())]
    # labels are next-token targets where the loss mask is on, -100 elsewhere
    on = b["loss_mask"][0] > 0
    assert (b["labels"][0][~on] == -100).all()
    idx = on.nonzero()[:, 0]
    assert torch.equal(b["labels"][0][idx], b["tokens"][0][idx + 1])
    # position ids restart at 0 at each sub-sequence
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        assert b["position_ids"][0, 0, s:e].tolist() == list(range(e - s))


def test_synthetic_stream_is_split_over_dp_ranks_and_resumes():
    ranks = [SyntheticPackedBatches(seq_length=64, vocab_size=50, dp_rank=r, dp_size=2, num_batches=100) for r in (0, 1)]
    seen = [next(ranks[i % 2])["sample_ids"][0] for i in range(6)]
    assert seen == [f"mb{i}-s0" for i in range(6)]
    state = ranks[0].state_dict()
    expected = next(ranks[0])
    fresh = SyntheticPackedBatches(seq_length=64, vocab_size=50, dp_rank=0, dp_size=2, num_batches=100)
    fresh.load_state_dict(state)
    assert fresh.__next__()["sample_ids"] == expected["sample_ids"]
