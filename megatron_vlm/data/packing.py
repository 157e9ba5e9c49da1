"""Packing tokenized samples into one THD sequence (at most max_length) with sub-sequence boundaries.

``choose_best_fit`` picks which buffered samples go into the next sequence: the longest sample
first, then repeatedly the longest one that still fits ``max_length`` (best fit over the
buffer), so long documents are never starved and the space left is filled as tightly as the
buffer allows. ``pack`` lays the chosen samples end to end: each sample is one sub-sequence,
padded at its end to a multiple of ``pad_multiple`` (2 x context-parallel size, so every
sub-sequence splits into 2*CP equal chunks), then one padding sub-sequence (task and id
``"padding"``, 0 sample tokens) ends the sequence at its length T:

- fixed length (``length_multiple=None``): T = max_length, always; what pipeline schedules with
  one fixed activation shape and the benchmarks of a fixed shape want;
- variable length (``length_multiple=m``): T = the sub-sequences' total rounded up to a multiple
  of m (capped at max_length), so the padding is < m tokens instead of whatever one long
  document leaves of max_length (~20% with the paper's pool-native 80K-125K-token documents).
  Which samples go together is the same in both modes (best fit against max_length).

Labels are the next token only where that token is an answer target in the same sub-sequence,
so no label and no attention (cu_seqlens) crosses a sample boundary; mRoPE ids restart at 0 in
every sub-sequence. The micro-batch layout is docs/formats.md section 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_vlm.models.family import ModelFamily

IGNORE_INDEX = -100
PADDING = "padding"  # task and id of the padding tail sub-sequence


@dataclass
class Sample:
    """One tokenized instance ready to pack."""

    id: str
    task: str
    input_ids: torch.Tensor  # [L] int64
    target_mask: torch.Tensor  # [L] bool
    pixel_values: torch.Tensor  # [P, patch_dim]
    image_grid_thw: torch.Tensor  # [n, 3] int64

    def __len__(self) -> int:
        return int(self.input_ids.numel())


def padded_length(length: int, pad_multiple: int) -> int:
    """``length`` rounded up to a multiple of ``pad_multiple``."""
    return -(-length // pad_multiple) * pad_multiple


def choose_best_fit(lengths: list[int], capacity: int) -> list[int]:
    """Indices (into ``lengths``) of the samples for the next sequence, in packing order.

    The longest sample goes first; then the longest remaining that fits the space left, until
    none fits. Ties go to the earlier index, so the choice is deterministic. Lengths should
    already be padded lengths; a sample longer than ``capacity`` is never chosen.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    chosen: list[int] = []
    space = capacity
    for i in order:
        if lengths[i] <= space:
            chosen.append(i)
            space -= lengths[i]
            if space == 0:
                break
    return chosen


def sequence_length(used: int, max_length: int, length_multiple: int | None) -> int:
    """Length T of a packed sequence whose sub-sequences take ``used`` tokens (module docstring)."""
    if length_multiple is None:
        return max_length
    return min(max_length, max(length_multiple, padded_length(used, length_multiple)))


def pack(samples: list[Sample], family: ModelFamily, max_length: int, pad_multiple: int = 1,
         pixel_values: torch.Tensor | None = None, length_multiple: int | None = None) -> dict:
    """One packed micro-batch (docs/formats.md section 4) from samples that fit ``max_length``.

    ``family`` gives the pad token, the mRoPE ids of each sample and the pixel row width.

    The sequence is ``max_length`` long when ``length_multiple`` is None, else the samples'
    padded total rounded up to a multiple of ``length_multiple`` (at most ``max_length``).
    ``pixel_values``, when given, is the samples' pixels already concatenated (saves a copy of
    what is ~2.5 GB at 128K tokens of pages).
    """
    if max_length % pad_multiple:
        raise ValueError(f"max_length {max_length} is not a multiple of pad_multiple {pad_multiple}")
    if length_multiple is not None and length_multiple % pad_multiple:
        raise ValueError(f"length_multiple {length_multiple} is not a multiple of pad_multiple {pad_multiple}")
    ends = [padded_length(len(s), pad_multiple) for s in samples]
    if sum(ends) > max_length:
        raise ValueError(f"samples need more than {max_length} tokens")
    total = sequence_length(sum(ends), max_length, length_multiple)
    tokens = torch.full((total,), family.tokens.pad, dtype=torch.int64)
    labels = torch.full((total,), IGNORE_INDEX, dtype=torch.int64)
    position_ids = torch.zeros(3, total, dtype=torch.int64)
    bounds = [0]
    for s, padded in zip(samples, ends):
        n, start = len(s), bounds[-1]
        end = start + padded
        tokens[start : start + n] = s.input_ids
        # Label at i is the token at i+1 when that token is a target of this same sample.
        shifted_target = s.target_mask[1:]
        labels[start : start + n - 1] = torch.where(shifted_target, s.input_ids[1:], IGNORE_INDEX)
        pos = family.position_ids(s.input_ids, s.image_grid_thw if s.image_grid_thw.numel() else None)
        position_ids[:, start : start + n] = pos
        if end > start + n:  # in-sequence padding continues the text count
            nxt = int(pos.max()) + 1 if n else 0
            position_ids[:, start + n : end] = torch.arange(nxt, nxt + end - start - n)
        bounds.append(end)
    tasks, ids, lengths = [s.task for s in samples], [s.id for s in samples], [len(s) for s in samples]
    if bounds[-1] < total:
        position_ids[:, bounds[-1] :] = torch.arange(total - bounds[-1])
        bounds.append(total)
        tasks, ids, lengths = tasks + [PADDING], ids + [PADDING], lengths + [0]
    pixel_dtype = samples[0].pixel_values.dtype if samples else torch.float32
    return {
        "tokens": tokens.unsqueeze(0),
        "labels": labels.unsqueeze(0),
        "loss_mask": (labels != IGNORE_INDEX).float().unsqueeze(0),
        "position_ids": position_ids.unsqueeze(1),
        "cu_seqlens": torch.tensor(bounds, dtype=torch.int32),
        "pixel_values": pixel_values if pixel_values is not None
        else torch.cat([s.pixel_values for s in samples]) if samples
        else torch.zeros(0, family.image.patch_dim, dtype=pixel_dtype),
        "image_grid_thw": torch.cat([s.image_grid_thw for s in samples]).reshape(-1, 3)
        if samples
        else torch.zeros(0, 3, dtype=torch.int64),
        "sample_tasks": tasks,
        "sample_ids": ids,
        "sample_num_tokens": lengths,
    }


def packing_efficiency(batch: dict) -> float:
    """Share of the sequence holding sample tokens (not padding)."""
    return sum(batch["sample_num_tokens"]) / batch["tokens"].shape[1]
