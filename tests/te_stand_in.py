"""A CPU stand-in for ``transformer_engine.pytorch.DotProductAttention``, for tests without TE.

It keeps the parts of TE 2.x's contract that our code relies on (read from TE's
``dot_product_attention.py`` / ``utils.py`` at v2.9-v2.11):

- constructor: total heads for this module, ``kv_channels``, ``num_gqa_groups``, ``qkv_format``,
  ``attn_mask_type``, ``softmax_scale``; ``set_context_parallel_group(group, global_ranks,
  stream, comm_type)`` binds a CP group (ring attention);
- forward in ``thd``: int32 ``cu_seqlens_q/kv``; under CP also ``cu_seqlens_q/kv_padded`` (the
  GLOBAL boundaries); returns [T, heads * head_dim];
- no float32 THD kernel: a float32 call raises, as TE's backend selection does at v2.9/v2.10
  (FlashAttention and FusedAttention take fp16/bf16 only; the unfused backend refuses THD);
- an ``_extra_state`` in its state dict (TE modules carry their FP8 metadata there).

The numbers come from our own reference kernels (``torch_attention``; under CP the all-gather
``cp_attention_thd``), so a test with the stand-in checks routing and arguments, not TE's maths
(that is tests/gpu/test_cp_te.py). Every call is recorded in ``CALLS``.

    install(monkeypatch)   # puts transformer_engine and transformer_engine.pytorch in sys.modules
"""

from __future__ import annotations

import sys
import types

import torch

CALLS: list[dict] = []


class DotProductAttention(torch.nn.Module):
    def __init__(self, num_attention_heads, kv_channels, num_gqa_groups=None, attention_dropout=0.0,
                 qkv_format="sbhd", attn_mask_type="causal", softmax_scale=None, **_):
        super().__init__()
        self.heads, self.head_dim = num_attention_heads, kv_channels
        self.kv_heads = num_gqa_groups or num_attention_heads
        self.qkv_format, self.attn_mask_type = qkv_format, attn_mask_type
        self.softmax_scale = softmax_scale or kv_channels**-0.5
        self.cp_group, self.cp_ranks, self.cp_comm_type = None, None, None
        CALLS.append({"init": dict(heads=num_attention_heads, kv_heads=self.kv_heads, head_dim=kv_channels)})

    def set_context_parallel_group(self, cp_group, cp_global_ranks, cp_stream, cp_comm_type="p2p"):
        self.cp_group, self.cp_ranks, self.cp_comm_type = cp_group, list(cp_global_ranks), cp_comm_type

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor([7], dtype=torch.uint8)

    def set_extra_state(self, state) -> None:
        pass

    def forward(self, q, k, v, cu_seqlens_q=None, cu_seqlens_kv=None, cu_seqlens_q_padded=None,
                cu_seqlens_kv_padded=None, max_seqlen_q=None, max_seqlen_kv=None, attn_mask_type=None, **_):
        from megatron_vlm.models.common.attention import torch_attention
        from megatron_vlm.parallel.cp_attention import cp_attention_thd

        assert self.qkv_format == "thd" and q.dim() == 3 and q.shape[1:] == (self.heads, self.head_dim)
        assert k.shape[1] == self.kv_heads and cu_seqlens_q.dtype == torch.int32 and max_seqlen_q is not None
        if q.dtype == torch.float32:
            raise RuntimeError("No dot product attention backend is available for the provided inputs")
        mask = attn_mask_type or self.attn_mask_type
        causal = mask in ("causal", "padding_causal")
        CALLS.append({"forward": dict(cp=self.cp_group is not None, cu=cu_seqlens_q.tolist(), max_seqlen=max_seqlen_q,
                                      cu_padded=None if cu_seqlens_q_padded is None else cu_seqlens_q_padded.tolist(),
                                      mask=mask, ranks=self.cp_ranks, comm=self.cp_comm_type)})
        if self.cp_group is not None:
            assert cu_seqlens_q_padded is not None, "TE's THD context parallelism needs cu_seqlens_q_padded"
            out = cp_attention_thd(q, k, v, cu_seqlens_q, cu_seqlens_q_padded, group=self.cp_group,
                                   softmax_scale=self.softmax_scale, causal=causal)
        else:
            out = torch_attention(q, k, v, cu_seqlens_q, causal, self.softmax_scale)
        return out.reshape(q.shape[0], -1)


def install(monkeypatch=None) -> None:
    """Make ``import transformer_engine.pytorch`` give this stand-in (with ``monkeypatch``: undone
    after the test; without: for the life of the process, e.g. a test rank)."""
    te = types.ModuleType("transformer_engine")
    te_pytorch = types.ModuleType("transformer_engine.pytorch")
    te_pytorch.DotProductAttention = DotProductAttention
    te.pytorch = te_pytorch
    for name, module in (("transformer_engine", te), ("transformer_engine.pytorch", te_pytorch)):
        if monkeypatch is not None:
            monkeypatch.setitem(sys.modules, name, module)
        else:
            sys.modules[name] = module
