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
    cu_seqlens_padded: torch.Tensor,
    group=None,
    softmax_scale: float | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Attention of this rank's queries over the whole packed sequence.

    q [T_loc, Hq, D], k [T_loc, Hkv, D], v [T_loc, Hkv, Dv] (T_loc = T_pad / CP, the rank's
    slots); ``cu_seqlens`` / ``cu_seqlens_padded`` [n+1] are the GLOBAL actual / padded
    sub-sequence boundaries (as TE takes them). Hq must be a multiple of Hkv (query head h uses
    K/V head h // (Hq/Hkv), Megatron's grouping). Returns [T_loc, Hq, Dv]; pad slots are 0.
    """
    cp, rank = group_size(group), group_rank(group)
    cu_pad = [int(x) for x in cu_seqlens_padded.tolist()]
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    if cu_pad[-1] != cp * q.shape[0]:
        raise ValueError(f"cu_seqlens_padded ends at {cu_pad[-1]}, expected cp*T_loc = {cp * q.shape[0]}")
    heads_q, heads_kv = q.shape[1], k.shape[1]
    if heads_q % heads_kv:
        raise ValueError(f"{heads_q} query heads are not a multiple of {heads_kv} key/value heads")
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5

    order = _gather_order(tuple(cu_pad), cp).to(q.device)
    k_global = all_gather_cp(k, group).index_select(0, order)
    v_global = all_gather_cp(v, group).index_select(0, order)

    pieces = []
    for start, end, length in zip(cu_pad[:-1], cu_pad[1:], lengths):
        chunk = (end - start) // (2 * cp)
        local_start = start // cp
        for half, c in enumerate((rank, 2 * cp - 1 - rank)):
            n_real = max(0, min(chunk, length - c * chunk))
            if n_real:
                rows = slice(local_start + half * chunk, local_start + half * chunk + n_real)
                q_off = torch.arange(c * chunk, c * chunk + n_real, device=q.device)
                n_keys = c * chunk + n_real if causal else length
                k_off = torch.arange(n_keys, device=q.device)
                mask = k_off[None, :] <= q_off[:, None] if causal else None
                pieces.append(
                    _attend(q[rows], k_global[start : start + n_keys], v_global[start : start + n_keys], mask, scale)
                )
            if chunk - n_real:
                pieces.append(q.new_zeros((chunk - n_real, heads_q, v.shape[-1])))
    return torch.cat(pieces)


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
