"""Local (pure PyTorch) context-parallel attention for packed THD sequences.

Each CP rank holds, per packed sub-sequence, two chunks of Q/K/V in the load-balanced layout of
:mod:`megatron_vlm.parallel.context_parallel`. ``cp_attention_thd`` all-gathers K and V over the
CP group, puts them back in global order, and attends each local query chunk to the keys of
its own sub-sequence up to its global position (causal). The all-gather's backward
reduce-scatters the K/V gradients, so every rank ends with the gradients of its own K/V.

It takes the same boundaries as Transformer Engine's THD CP attention (global ``cu_seqlens``
and ``cu_seqlens_padded``), runs on CPU and GPU, supports GQA and any float dtype, and is the
CPU reference for TE's. It holds the full K/V of the sequence on every rank: fine for tests and
moderate lengths, not a replacement for TE's ring attention at 128K+.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from megatron_vlm.parallel.context_parallel import local_global_positions
from megatron_vlm.parallel.cp_comm import all_gather_cp, group_rank, group_size


@functools.lru_cache(maxsize=64)
def _gather_order(cu_seqlens_padded: tuple[int, ...], cp_size: int) -> torch.Tensor:
    """Rows of the rank-order all-gather, listed in global padded order."""
    return local_global_positions(torch.tensor(cu_seqlens_padded), cp_size).reshape(-1).argsort()


def cp_attention_thd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    cu_seqlens_padded: torch.Tensor | None = None,
    group=None,
    softmax_scale: float | None = None,
    causal: bool = True,
    attend: Callable | None = None,
    rows_per_call: int = 4096,
) -> torch.Tensor:
    """Attention of this rank's queries over the whole packed sequence.

    q [T_loc, Hq, D], k [T_loc, Hkv, D], v [T_loc, Hkv, Dv] (T_loc = T_pad / CP, the rank's
    slots); ``cu_seqlens`` / ``cu_seqlens_padded`` [n+1] are the GLOBAL actual / padded
    sub-sequence boundaries (as TE takes them). Hq must be a multiple of Hkv (query head h uses
    K/V head h // (Hq/Hkv), Megatron's grouping). Returns [T_loc, Hq, Dv]; pad slots are 0.

    ``cu_seqlens_padded=None`` treats the padded boundaries as the actual ones: pad slots then
    count as tokens at the end of their sub-sequence. Real tokens never attend to them (they
    come later), so real outputs and all gradients that flow from real tokens are unchanged;
    the model uses this form (one boundary tensor in its PackedSeqParams).

    ``attend``: optional single-rank kernel ``attend(q, k, v, cu_seqlens, causal) -> out`` on
    equal-length THD q/k/v (e.g. the model's torch / flash-attn / TE backend, with its own
    softmax scale). Each local query chunk then runs as one sub-sequence over its key prefix,
    its queries preceded by zero rows so the kernel sees a square causal problem: exact, one
    kernel call, but about (CP+1)/2 times the rank's share of attention FLOPs. Without it a
    masked SDPA computes only the share, with ``softmax_scale`` (default 1/sqrt(D)),
    ``rows_per_call`` queries per call.
    """
    cp, rank = group_size(group), group_rank(group)
    if cu_seqlens_padded is None:
        cu_seqlens_padded = cu_seqlens
    cu_pad = [int(x) for x in cu_seqlens_padded.tolist()]
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    if cu_pad[-1] != cp * q.shape[0]:
        raise ValueError(
            f"padded boundaries end at {cu_pad[-1]}, expected CP*T_loc = {cp}*{q.shape[0]}: under context "
            "parallelism pass the split's global cu_seqlens_padded (split_batch_for_cp)"
        )
    heads_q, heads_kv = q.shape[1], k.shape[1]
    if heads_q % heads_kv:
        raise ValueError(f"{heads_q} query heads are not a multiple of {heads_kv} key/value heads")

    order = _gather_order(tuple(cu_pad), cp).to(q.device)
    k_global = all_gather_cp(k, group).index_select(0, order)
    v_global = all_gather_cp(v, group).index_select(0, order)

    # One block per (sub-sequence, local chunk): its real query rows and the key prefix they see.
    blocks = []  # (first local row, real rows, pad rows, first global key, number of keys, query offset)
    for start, end, length in zip(cu_pad[:-1], cu_pad[1:], lengths):
        chunk = (end - start) // (2 * cp)
        for half, c in enumerate((rank, 2 * cp - 1 - rank)):
            n_real = max(0, min(chunk, length - c * chunk))
            n_keys = c * chunk + n_real if causal else length
            blocks.append((start // cp + half * chunk, n_real, chunk - n_real, start, n_keys, c * chunk))
    if attend is None:
        scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
        outs = [_masked_block(q, k_global, v_global, b, causal, scale, rows_per_call) for b in blocks if b[1]]
    else:
        outs = _kernel_blocks(q, k_global, v_global, [b for b in blocks if b[1]], causal, attend)
    pieces, it = [], iter(outs)
    for _, n_real, n_pad, *_ in blocks:
        if n_real:
            pieces.append(next(it))
        if n_pad:
            pieces.append(q.new_zeros((n_pad, heads_q, v.shape[-1])))
    return torch.cat(pieces)


def _masked_block(q, k_global, v_global, block, causal, scale, rows_per_call: int = 4096):
    """One block's real queries over their keys, ``rows_per_call`` queries at a time so the
    mask and logits stay bounded for long chunks; each call sees only the keys it needs."""
    row, n_real, _, key_start, n_keys, q_offset = block
    outs = []
    for first in range(0, n_real, rows_per_call):
        n = min(rows_per_call, n_real - first)
        mask, keys = None, n_keys
        if causal:
            q_off = torch.arange(q_offset + first, q_offset + first + n, device=q.device)
            keys = q_offset + first + n
            mask = torch.arange(keys, device=q.device)[None, :] <= q_off[:, None]
        kv = slice(key_start, key_start + keys)
        outs.append(_attend(q[row + first : row + first + n], k_global[kv], v_global[kv], mask, scale))
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def _kernel_blocks(q, k_global, v_global, blocks, causal, attend):
    """All blocks as one packed square problem for ``attend``; returns the real rows per block."""
    qs, ks, vs, bounds = [], [], [], [0]
    for row, n_real, _, key_start, n_keys, _ in blocks:
        qs += [q.new_zeros((n_keys - n_real, *q.shape[1:])), q[row : row + n_real]]
        ks.append(k_global[key_start : key_start + n_keys])
        vs.append(v_global[key_start : key_start + n_keys])
        bounds.append(bounds[-1] + n_keys)
    cu = torch.tensor(bounds, dtype=torch.int32, device=q.device)
    out = attend(torch.cat(qs), torch.cat(ks), torch.cat(vs), cu, causal)
    return [out[end - n_real : end] for (_, n_real, *_), end in zip(blocks, bounds[1:])]


def _attend(q, k, v, mask, scale):
    """q [n, Hq, D], k/v [m, Hkv, D], mask [n, m] bool (True = attend) -> [n, Hq, Dv]."""
    per_kv = q.shape[1] // k.shape[1]
    if per_kv > 1:
        k = k.repeat_interleave(per_kv, dim=1)
        v = v.repeat_interleave(per_kv, dim=1)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], attn_mask=mask, scale=scale
    )
    return out[0].transpose(0, 1)
