"""A tiny, fixed, packed text dataset that follows the loader's micro-batch contract.

It stands in for ``megatron_vlm.data.loader`` where tests need a trainer without shards: each
micro-batch is one packed THD sequence (docs/formats.md section 4) of a few sub-sequences, each a
random "question" followed by an "answer" that is the question shifted by one token id, so a
small model can learn it. The dataset is ``num_batches`` micro-batches, cycled; the stream is
split over data-parallel ranks round-robin (rank r takes micro-batches r, r+dp, r+2dp, ...).
``state_dict()`` / ``load_state_dict()`` restore the exact position, as the real loader does.
With ``length_multiple`` (the recipe's variable-length packing) the padding tail is cut so the
sequence ends at a multiple of it, as the real loader's variable-length mode does.
"""

from __future__ import annotations

import torch

from megatron_vlm.data.packing import sequence_length

TASKS = ("extract-single", "extract-multi", "reasoning")


def synthetic_micro_batch(index: int, *, seq_length: int, vocab_size: int, seed: int, num_batches: int,
                          min_len: int = 8, length_multiple: int | None = None, patch_dim: int = 0) -> dict:
    """Micro-batch number ``index`` of the stream (a pure function of its arguments). It holds no
    image: ``pixel_values`` is [0, patch_dim] (the model family's patch row width)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index % num_batches)
    tokens = torch.zeros(seq_length, dtype=torch.int64)
    labels = torch.full((seq_length,), -100, dtype=torch.int64)
    loss_mask = torch.zeros(seq_length, dtype=torch.float32)
    positions = torch.zeros(seq_length, dtype=torch.int64)
    bounds, tasks, ids, num_tokens = [0], [], [], []
    start = 0
    while seq_length - start >= 2 * min_len:
        length = int(torch.randint(min_len, max(min_len + 1, seq_length // 2), (1,), generator=gen))
        length = min(length, seq_length - start)
        question = length // 2
        q = torch.randint(1, vocab_size, (question,), generator=gen)
        answer = (q.repeat(2)[: length - question] % (vocab_size - 1)) + 1
        sample = torch.cat([q, answer])
        end = start + length
        tokens[start:end] = sample
        # next-token targets inside the sub-sequence; loss only where the target is an answer token
        labels[start + question - 1 : end - 1] = sample[question:]
        loss_mask[start + question - 1 : end - 1] = 1.0
        positions[start:end] = torch.arange(length)
        bounds.append(end)
        tasks.append(TASKS[len(ids) % len(TASKS)])
        ids.append(f"mb{index}-s{len(ids)}")
        num_tokens.append(length)
        start = end
    if length_multiple is not None:  # variable length: cut the padding tail
        seq_length = sequence_length(start, seq_length, length_multiple)
        tokens, labels, loss_mask, positions = (t[:seq_length] for t in (tokens, labels, loss_mask, positions))
    if start < seq_length:  # the padding tail is its own sub-sequence
        positions[start:] = torch.arange(seq_length - start)
        bounds.append(seq_length)
        tasks.append("padding")
        ids.append(f"mb{index}-pad")
        num_tokens.append(0)
    return {
        "tokens": tokens[None],
        "labels": labels[None],
        "loss_mask": loss_mask[None],
        "position_ids": positions[None, None].expand(3, 1, seq_length).clone(),
        "cu_seqlens": torch.tensor(bounds, dtype=torch.int32),
        "pixel_values": torch.zeros(0, patch_dim),
        "image_grid_thw": torch.zeros(0, 3, dtype=torch.int64),
        "sample_tasks": tasks,
        "sample_ids": ids,
        "sample_num_tokens": num_tokens,
    }


class SyntheticPackedBatches:
    """Iterator over this data-parallel rank's share of the synthetic stream, with resumable state."""

    def __init__(self, *, seq_length: int, vocab_size: int, dp_rank: int = 0, dp_size: int = 1,
                 seed: int = 1234, num_batches: int = 16, length_multiple: int | None = None, patch_dim: int = 0):
        self.seq_length, self.vocab_size, self.seed, self.num_batches = seq_length, vocab_size, seed, num_batches
        self.length_multiple, self.patch_dim = length_multiple, patch_dim
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.consumed = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        index = self.consumed * self.dp_size + self.dp_rank
        self.consumed += 1
        return synthetic_micro_batch(index, seq_length=self.seq_length, vocab_size=self.vocab_size,
                                     seed=self.seed, num_batches=self.num_batches, length_multiple=self.length_multiple,
                                     patch_dim=self.patch_dim)

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "dp_rank": self.dp_rank, "dp_size": self.dp_size}

    def load_state_dict(self, state: dict) -> None:
        if state["dp_size"] != self.dp_size:
            raise ValueError(f"loader state was saved with dp={state['dp_size']}, this run has dp={self.dp_size}")
        self.consumed = state["consumed"]
