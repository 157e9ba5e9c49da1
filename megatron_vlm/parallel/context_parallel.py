"""Context-parallel split of a packed THD micro-batch, and its inverse (pure functions).

Every packed sub-sequence i (``cu_seqlens``) of actual length L_i is padded to P_i, a multiple
of 2*CP, and cut into 2*CP equal chunks; CP rank r keeps chunks r and 2*CP-1-r of every
sub-sequence, in that order, sub-sequence after sub-sequence. Under causal attention the early
chunk is cheap and the late one expensive, so every rank gets the same work.

The padded layout is exactly what Transformer Engine's THD context-parallel attention expects:
``cu_seqlens`` are the GLOBAL actual boundaries (TE's ``cu_seqlens_q``/``_kv``) and
``cu_seqlens_padded`` the GLOBAL padded boundaries (TE's ``cu_seqlens_q_padded``/``_kv_padded``);
TE divides the padded ones by CP itself, and the rank's local tensor holds, per sub-sequence,
``P_i / CP`` slots (first half = chunk r, second half = chunk 2*CP-1-r). Pad slots sit at the
end of a sub-sequence's padded range, so the same batch also feeds
:func:`megatron_vlm.parallel.cp_attention.cp_attention_thd` (the local path).

Keeping the micro-batch length fixed (T/CP per rank): the loader's padding tail is its own last
sub-sequence and carries no loss and no image tokens. When that is so, the tail is shortened
by the padding the other sub-sequences needed, so the padded total stays T (rounded up to a
multiple of 2*CP); nothing else changes, because attention never crosses a sub-sequence. When
the last sub-sequence is a real sample (a full pack), the padded total is the sum of the P_i
(rounded up), up to 2*CP-1 tokens per sub-sequence more than T: shapes then vary between
micro-batches, which pipeline parallelism does not allow unless the loader leaves that room.

The model (local attention) takes ``packed_seq_params(cu_seqlens_padded)``: one boundary tensor
in which pad slots count as the last tokens of their sub-sequence; no real token attends to
them, so real outputs and gradients are unchanged.

Main entry: ``split_batch_for_cp(batch, cp_size, cp_rank, image_token_id=..., video_token_id=...)``
(the model family's pad ids) on the loader's micro-batch
(docs/formats.md section 4). ``cp_partition`` is the index math behind it; ``unsplit`` puts
per-rank tensors back into the original token order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class CPPartition:
    """Where every token of a packed sequence goes under context parallelism."""

    cp_size: int
    total_len: int
    """Length T of the packed sequence before the split."""
    cu_seqlens: torch.Tensor
    """[n+1] int32, global actual boundaries after the tail trim (TE ``cu_seqlens_q``)."""
    cu_seqlens_padded: torch.Tensor
    """[n+1] int32, global boundaries with each sub-sequence padded to a multiple of 2*CP
    (TE ``cu_seqlens_q_padded``)."""
    source_index: torch.Tensor
    """[CP, T_pad/CP] int64: for rank r's local slot j, the token index in the original packed
    sequence, or -1 for a pad slot."""

    @property
    def local_len(self) -> int:
        return self.source_index.shape[1]

    def local_cu_seqlens_padded(self) -> torch.Tensor:
        """[n+1] int32 padded boundaries inside one rank's local tensor."""
        return (self.cu_seqlens_padded // self.cp_size).to(torch.int32)

    def local_cu_seqlens(self, cp_rank: int) -> torch.Tensor:
        """[n+1] int32 boundaries of the real (non-pad) tokens in rank ``cp_rank``'s tensor,
        counting only real tokens (what TE computes internally for a padded THD batch)."""
        real = self.source_index[cp_rank] >= 0
        lp = self.local_cu_seqlens_padded().long()
        counts = torch.stack([real[a:b].sum() for a, b in zip(lp[:-1].tolist(), lp[1:].tolist())])
        return torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]).to(torch.int32)


def local_global_positions(cu_seqlens_padded: torch.Tensor, cp_size: int) -> torch.Tensor:
    """[CP, T_pad/CP] int64: the global padded position of every local slot of every rank.

    Rank r's slots for sub-sequence i are chunk r then chunk 2*CP-1-r of that sub-sequence,
    each P_i/(2*CP) long.
    """
    bounds = cu_seqlens_padded.long().tolist()
    rows = []
    for rank in range(cp_size):
        pieces = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            chunk = (end - start) // (2 * cp_size)
            if (end - start) % (2 * cp_size):
                raise ValueError(f"padded sub-sequence length {end - start} is not a multiple of 2*cp={2 * cp_size}")
            for c in (rank, 2 * cp_size - 1 - rank):
                pieces.append(torch.arange(start + c * chunk, start + (c + 1) * chunk))
        rows.append(torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long))
    return torch.stack(rows)


def cp_partition(
    cu_seqlens: torch.Tensor, cp_size: int, trim_last: bool = False, local_multiple: int = 1
) -> CPPartition:
    """Split plan for a packed sequence with boundaries ``cu_seqlens`` ([n+1], ending at T).

    ``trim_last``: the last sub-sequence is padding that may be shortened so the padded total
    stays T (rounded up to a whole number of units, see below; module docstring). Without it
    every sub-sequence keeps all its tokens.
    ``local_multiple``: each rank's length T_pad/CP is made a multiple of it (the TP size when
    sequence parallelism splits the rank's tokens further); the extra slots pad the last
    sub-sequence.
    """
    if cp_size < 1:
        raise ValueError(f"cp_size must be >= 1, got {cp_size}")
    bounds = [int(x) for x in cu_seqlens.tolist()]
    if bounds[0] != 0 or any(b <= a for a, b in zip(bounds[:-1], bounds[1:])):
        raise ValueError(f"cu_seqlens must start at 0 and increase strictly, got {bounds}")
    total = bounds[-1]
    unit = 2 * cp_size
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    padded = [-(-n // unit) * unit for n in lengths]
    whole = math.lcm(unit, cp_size * local_multiple)  # T_pad is a multiple of this
    target = -(-total // whole) * whole
    if trim_last and sum(padded[:-1]) <= target:
        padded[-1] = target - sum(padded[:-1])
        lengths[-1] = min(lengths[-1], padded[-1])
        if padded[-1] == 0:
            lengths, padded = lengths[:-1], padded[:-1]
    else:
        padded[-1] += max(target, -(-sum(padded) // whole) * whole) - sum(padded)

    actual_starts = bounds[:-1][: len(lengths)]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    cu_pad = torch.tensor([0, *torch.tensor(padded).cumsum(0).tolist()], dtype=torch.int32)

    # global padded position -> original token index (or -1)
    total_padded = int(cu_pad[-1])
    source_of_global = torch.full((total_padded,), -1, dtype=torch.long)
    for start_orig, start_pad, n in zip(actual_starts, cu_pad[:-1].tolist(), lengths):
        source_of_global[start_pad : start_pad + n] = torch.arange(start_orig, start_orig + n)
    source_index = source_of_global[local_global_positions(cu_pad, cp_size)]
    return CPPartition(cp_size, total, cu, cu_pad, source_index)


def _take(full: torch.Tensor, index: torch.Tensor, dim: int, fill) -> torch.Tensor:
    """``full`` indexed along ``dim`` by ``index``, with ``fill`` where the index is -1."""
    picked = full.index_select(dim, index.clamp(min=0))
    shape = [1] * picked.dim()
    shape[dim] = index.numel()
    return torch.where((index >= 0).view(shape), picked, torch.as_tensor(fill, dtype=full.dtype))


def split_batch_for_cp(
    batch: dict,
    cp_size: int,
    cp_rank: int,
    *,
    image_token_id: int,
    video_token_id: int,
    pad_token_id: int = 0,
    local_multiple: int = 1,
) -> dict:
    """Rank ``cp_rank``'s share of a loader micro-batch (docs/formats.md section 4).

    Returns a new dict with the same keys, where ``tokens``/``labels``/``loss_mask`` are
    [1, T_pad/CP] and ``position_ids`` [3, 1, T_pad/CP] (pad slots: ``pad_token_id``, -100, 0,
    position 0), ``cu_seqlens`` / ``cu_seqlens_padded`` are the GLOBAL actual / padded
    boundaries (pass them to TE as ``cu_seqlens_q`` / ``cu_seqlens_q_padded``, and to
    :func:`cp_attention_thd`), and these are added:

    - ``cp_source_index`` [T_pad/CP] int64: original token index of each local slot, -1 = pad;
    - ``image_token_rows`` / ``video_token_rows`` [k] int64: for the local image (video) pad
      tokens in local order, the row of the full image (video) embedding matrix they take
      (embeddings are in token order, so row = how many such tokens precede it);
    - ``cp_partition``: the :class:`CPPartition`, for :func:`unsplit`.

    ``pixel_values``, ``image_grid_thw`` and other keys pass through whole: the vision work is
    shared out by :mod:`megatron_vlm.parallel.cp_vision`. ``local_multiple``: see
    :func:`cp_partition` (pass the TP size with sequence parallelism).
    """
    tokens = batch["tokens"]
    if tokens.shape[0] != 1:
        raise ValueError(f"expected one packed sequence (batch dim 1), got tokens {tuple(tokens.shape)}")
    cu_seqlens = batch["cu_seqlens"]
    last_start = int(cu_seqlens[-2])
    tail_tokens = tokens[0, last_start:]
    tail_is_padding = bool(
        (batch["loss_mask"][0, last_start:] == 0).all()
        and not ((tail_tokens == image_token_id) | (tail_tokens == video_token_id)).any()
    )
    part = cp_partition(cu_seqlens, cp_size, trim_last=tail_is_padding, local_multiple=local_multiple)
    index = part.source_index[cp_rank]

    out = dict(batch)
    out["tokens"] = _take(tokens, index, 1, pad_token_id)
    out["labels"] = _take(batch["labels"], index, 1, IGNORE_INDEX)
    out["loss_mask"] = _take(batch["loss_mask"], index, 1, 0)
    out["position_ids"] = _take(batch["position_ids"], index, 2, 0)
    out["cu_seqlens"] = part.cu_seqlens.to(cu_seqlens.device)
    out["cu_seqlens_padded"] = part.cu_seqlens_padded.to(cu_seqlens.device)
    out["cp_source_index"] = index
    out["cp_partition"] = part
    for key, token_id in (("image_token_rows", image_token_id), ("video_token_rows", video_token_id)):
        is_tok = tokens[0] == token_id
        row_of = is_tok.long().cumsum(0) - 1
        local = index[(index >= 0) & is_tok[index.clamp(min=0)]]
        out[key] = row_of[local]
    return out


def unsplit(per_rank: list[torch.Tensor], partition: CPPartition, dim: int = 0, fill=0) -> torch.Tensor:
    """Inverse of the split: per-rank tensors (rank order, ``dim`` of length T_pad/CP) back to
    the original order of length T along ``dim``. Tokens the split dropped (the trimmed
    padding tail) get ``fill``. Differentiable."""
    stacked = torch.cat(per_rank, dim=dim)
    flat_index = partition.source_index.reshape(-1)
    keep = flat_index >= 0
    shape = list(stacked.shape)
    shape[dim] = partition.total_len
    out = torch.full(shape, fill, dtype=stacked.dtype, device=stacked.device)
    src = stacked.index_select(dim, keep.nonzero().squeeze(1).to(stacked.device))
    return out.index_copy(dim, flat_index[keep].to(stacked.device), src)


def gather_from_cp(local: torch.Tensor, partition: CPPartition, dim: int = 0, group=None, fill=0) -> torch.Tensor:
    """All-gather a per-rank tensor over the CP group and :func:`unsplit` it (e.g. logits).
    Differentiable: the gradient flows back to each rank's own slots."""
    from megatron_vlm.parallel.cp_comm import all_gather_cp

    gathered = all_gather_cp(local.movedim(dim, 0).contiguous(), group)
    parts = list(gathered.chunk(partition.cp_size, dim=0))
    return unsplit(parts, partition, dim=0, fill=fill).movedim(0, dim)


def cp_attention(
    q, k, v, cu_seqlens, causal=True, cp_group=None, attend=None, softmax_scale=None, cu_seqlens_padded=None
):
    """Context-parallel attention for the model's core attention; see
    :func:`megatron_vlm.parallel.cp_attention.cp_attention_thd` (same arguments, ``cp_group``
    is its ``group``). Under CP the model passes the GLOBAL padded boundaries as ``cu_seqlens``."""
    from megatron_vlm.parallel.cp_attention import cp_attention_thd

    return cp_attention_thd(
        q, k, v, cu_seqlens, cu_seqlens_padded, group=cp_group, softmax_scale=softmax_scale, causal=causal,
        attend=attend,
    )  # fmt: skip
