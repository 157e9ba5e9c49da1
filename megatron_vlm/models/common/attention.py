"""Core attention (softmax(q k^T) v) for the ``core_attention`` slot of Megatron ModuleSpecs.

One module, three backends behind one choice (``backend=`` in the spec's params):
- ``torch``: PyTorch SDPA, one call per packed sub-sequence; runs anywhere (the CPU reference).
- ``flash``: flash-attn's varlen kernel (imported lazily).
- ``te``: Transformer Engine's DotProductAttention in THD format (imported lazily).
``auto`` picks te, then flash, then torch, by what imports on a CUDA machine, for bf16/fp16; torch
for float32 (no fp32 packed kernel in TE or flash-attn: :func:`resolve_backend`).

Packed sequences. Megatron's ``thd`` path re-indexes the rope table from 0 in every sub-sequence
and slices it per context-parallel rank, which is wrong for mRoPE (ids come per token and are
not 0..len). So we keep q/k/v in ``sbhd`` with batch 1 (Megatron then applies the per-token
angles as given) and pass the boundaries in ``PackedSeqParams(qkv_format="sbhd", cu_seqlens_q=...)``
(see :func:`packed_seq_params`). Attention never crosses a boundary; GQA is handled by each backend.

Context parallelism (cp > 1): the tokens of this rank are its load-balanced chunks. With ``te``
attention runs on Transformer Engine's ring (p2p) attention (``parallel.cp_te``); with the other
backends ``megatron_vlm.parallel.context_parallel.cp_attention`` all-gathers K/V and runs this
module's single-rank ``attend`` as the local kernel (the CPU path, and the reference for TE's).

The TE module is built with the layer, never at the first forward, so every rank's state dict
holds its ``_extra_state`` (a CP rank whose ViT encoded no image never runs the ViT).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule

from megatron_vlm.parallel.state import device

BACKENDS = ("auto", "torch", "flash", "te")


def packed_seq_params(cu_seqlens: torch.Tensor) -> PackedSeqParams:
    """Boundaries of a packed [T, 1, ...] sequence for our core attention (see the module doc)."""
    cu = cu_seqlens.to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
    return PackedSeqParams(
        qkv_format="sbhd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest, max_seqlen_kv=longest
    )


def resolve_backend(backend: str, dtype: torch.dtype | None = None) -> str:
    """The backend ``auto`` stands for on this machine for activations of ``dtype``.

    te > flash > torch on CUDA for bf16/fp16; torch without CUDA, and for float32 everywhere:
    neither flash-attn nor Transformer Engine (2.9, 2.10) has a float32 kernel for packed (THD)
    attention, and TE's one at 2.11 (unfused) materialises the whole score matrix and does not run
    under context parallelism. An explicit ``te`` or ``flash`` with float32 is refused in one line.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {BACKENDS}")
    if backend in ("te", "flash") and dtype == torch.float32:
        raise ValueError(f"attention backend {backend} has no float32 kernel for packed sequences: "
                         "train in bf16 (train.precision=bf16) or use the torch attention backend")
    if backend != "auto":
        return backend
    if not device().is_cuda or dtype == torch.float32:
        return "torch"
    for name, module in (("te", "transformer_engine.pytorch"), ("flash", "flash_attn")):
        try:
            __import__(module)
            return name
        except ImportError:
            continue
    return "torch"


def torch_attention(q, k, v, cu_seqlens, causal: bool, scale: float) -> torch.Tensor:
    """q [T, hq, d], k/v [T, hk, d] -> [T, hq, d]; attention within each [cu[i], cu[i+1]) only."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    bounds = cu_seqlens.tolist() if cu_seqlens is not None else [0, q.shape[0]]
    out = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end <= start:
            continue
        qs, ks, vs = (x[start:end].transpose(0, 1) for x in (q, k, v))
        out.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale).transpose(0, 1))
    tail = q.shape[0] - bounds[-1]
    if tail > 0:  # tokens past the last boundary attend among themselves
        qs, ks, vs = (x[bounds[-1] :].transpose(0, 1) for x in (q, k, v))
        out.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale).transpose(0, 1))
    return torch.cat(out, dim=0)


def flash_attention(q, k, v, cu_seqlens, causal: bool, scale: float) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    if cu_seqlens is None:
        cu_seqlens = torch.tensor([0, q.shape[0]], dtype=torch.int32, device=q.device)
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    return flash_attn_varlen_func(q, k, v, cu, cu, longest, longest, softmax_scale=scale, causal=causal)


class CoreAttention(MegatronModule):
    """Fills Megatron's ``core_attention`` slot; takes sbhd (or thd) q/k/v, returns [S, B, hq*d]."""

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str = "self",
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
        backend: str = "auto",
    ):
        super().__init__(config=config)
        self.layer_number = layer_number
        self.attn_mask_type = attn_mask_type
        self.backend = resolve_backend(backend, config.params_dtype)
        self.softmax_scale = softmax_scale or config.softmax_scale or 1.0 / math.sqrt(config.kv_channels)
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        if dropout:
            raise ValueError("attention dropout is not supported (Qwen2.5-VL trains with 0.0)")
        # Context parallelism is decided by the config (the ViT's config has cp=1 even when the LLM's has more).
        self.cp_group = getattr(pg_collection, "cp", None) if config.context_parallel_size > 1 else None
        self._te = None
        if self.backend == "te":
            # Built here, not at the first forward: its _extra_state must be in the state dict of
            # every rank, also of a CP rank whose ViT encoded no image (and so never ran it).
            from megatron_vlm.parallel.cp_te import make_te_attention

            tp = config.tensor_model_parallel_size
            self._te = make_te_attention(
                config.num_attention_heads // tp, config.kv_channels, (config.num_query_groups or config.num_attention_heads) // tp,
                self.softmax_scale, group=self.cp_group,
            )

    def attend(self, q, k, v, cu_seqlens, causal: bool) -> torch.Tensor:
        """Single-rank attention on thd tensors: q [T, hq, d], k/v [T, hk, d] -> [T, hq, d]."""
        if self.backend == "torch":
            return torch_attention(q, k, v, cu_seqlens, causal, self.softmax_scale)
        if self.backend == "flash":
            return flash_attention(q, k, v, cu_seqlens, causal, self.softmax_scale)
        if cu_seqlens is None:
            cu_seqlens = torch.tensor([0, q.shape[0]], dtype=torch.int32, device=q.device)
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
        longest = int((cu[1:] - cu[:-1]).max())
        out = self._te(q, k, v, cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest, max_seqlen_kv=longest,
                       attn_mask_type="padding_causal" if causal else "padding")
        return out.view(q.shape[0], q.shape[1], q.shape[2])

    def attend_cp(self, q, k, v, cu_seqlens, causal: bool) -> torch.Tensor:
        """This CP rank's queries over the whole sequence; ``cu_seqlens``: GLOBAL padded boundaries.

        ``te``: Transformer Engine's ring (p2p) attention, the padded boundaries given as both its
        actual and padded ones (pad slots count as tokens at the end of their sub-sequence, which
        no real token attends to: the all-gather path's convention). Other backends: the all-gather
        path, which is also the CPU reference for TE's (tests/gpu/test_cp_te.py)."""
        if self.backend == "te":
            from megatron_vlm.parallel.cp_te import te_cp_attention

            return te_cp_attention(self._te, q, k, v, cu_seqlens, cu_seqlens, causal=causal)
        from megatron_vlm.parallel.context_parallel import cp_attention

        return cp_attention(q, k, v, cu_seqlens=cu_seqlens, causal=causal, cp_group=self.cp_group, attend=self.attend)

    def forward(
        self, query, key, value, attention_mask=None, attn_mask_type=None, attention_bias=None, packed_seq_params=None
    ):
        if attention_bias is not None:
            raise ValueError("attention_bias is not supported")
        mask_type = attn_mask_type or self.attn_mask_type
        causal = mask_type in (AttnMaskType.causal, AttnMaskType.padding_causal)
        if attention_mask is not None:
            raise ValueError("explicit attention masks are not supported: pass packed_seq_params for packing")
        cu = packed_seq_params.cu_seqlens_q if packed_seq_params is not None else None
        thd = query.dim() == 3
        if thd:
            query, key, value = (x.unsqueeze(1) for x in (query, key, value))
        seq, batch = query.shape[:2]
        if cu is not None and batch != 1:
            raise ValueError("packed sequences need batch size 1")
        outs = []
        for b in range(batch):
            q, k, v = query[:, b], key[:, b], value[:, b]
            if self.cp_group is not None:
                if cu is None:  # one unpacked sequence: its padded length is the whole
                    cu = torch.tensor([0, seq * self.config.context_parallel_size], dtype=torch.int32)
                out = self.attend_cp(q, k, v, cu, causal)
            else:
                out = self.attend(q, k, v, cu, causal)
            outs.append(out.reshape(seq, -1))
        out = torch.stack(outs, dim=1)
        return out.squeeze(1) if thd else out
