"""Transformer Engine's attention module for the model, and its context-parallel call.

``make_te_attention`` builds TE's ``DotProductAttention`` for the model's core attention (with a
CP group when the layer runs under context parallelism). ``te_cp_attention`` runs it, CP group
set (ring exchange of K/V, ``cp_comm_type="p2p"`` by default), on this rank's load-balanced chunks. The
boundaries are the split's GLOBAL ``cu_seqlens`` / ``cu_seqlens_padded``, which is TE's
convention (it divides the padded ones by CP itself). Transformer Engine is imported lazily;
this needs CUDA and TE's fused attention. Its CPU reference is
:func:`megatron_vlm.parallel.cp_attention.cp_attention_thd` (tests/gpu/test_cp_te.py compares
the two on 2 GPUs).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_vlm.parallel.state import device


def make_te_attention(num_heads: int, head_dim: int, num_kv_heads: int, softmax_scale: float | None, group=None,
                      cp_comm_type: str = "p2p"):
    """A TE DotProductAttention in THD format (padding mask types; causal chosen per call), with
    this rank's head counts; bound to the CP ``group`` (ring exchange) when one is given."""
    from transformer_engine.pytorch import DotProductAttention

    attn = DotProductAttention(
        num_attention_heads=num_heads,
        kv_channels=head_dim,
        num_gqa_groups=num_kv_heads,
        attention_dropout=0.0,
        qkv_format="thd",
        attn_mask_type="padding_causal",
        softmax_scale=softmax_scale,
    )
    if group is not None:
        stream = torch.cuda.Stream() if device().is_cuda else None  # None: CPU tests with a stand-in TE
        attn.set_context_parallel_group(group, dist.get_process_group_ranks(group), stream, cp_comm_type)
    return attn


def te_cp_attention(attn, q, k, v, cu_seqlens: torch.Tensor, cu_seqlens_padded: torch.Tensor,
                    causal: bool = True) -> torch.Tensor:
    """q [T_loc, Hq, D], k/v [T_loc, Hkv, D] on this CP rank -> [T_loc, Hq, D]."""
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    cu_pad = cu_seqlens_padded.to(device=q.device, dtype=torch.int32)
    longest = int((cu_pad[1:] - cu_pad[:-1]).max())  # global; TE divides by CP
    out = attn(
        q, k, v,
        cu_seqlens_q=cu, cu_seqlens_kv=cu, cu_seqlens_q_padded=cu_pad, cu_seqlens_kv_padded=cu_pad,
        max_seqlen_q=longest, max_seqlen_kv=longest, attn_mask_type="padding_causal" if causal else "padding",
    )  # fmt: skip
    return out.view(q.shape[0], q.shape[1], -1)
