"""Rotary embeddings of Qwen2.5-VL: the ViT's 2D rope, the LLM's mRoPE, theta scaling and YaRN.

All functions return rotation angles ("freqs") laid out as Megatron's unfused rope expects:
``[S, B, 1, head_dim]`` = cat(f, f) over the half-dims, applied by rotate-half. Angles are always
computed per token from the position ids given, never by slicing a precomputed table; so packed
sequences and context-parallel shards (whose position ids arrive already split) need nothing
special.

- ViT: each patch rotates the first quarter of the head by its row and the second by its column
  (HF: ``Qwen2_5_VLVisionRotaryEmbedding``), ids block-major over the merge x merge blocks.
- LLM: mRoPE; frequency pair j takes its angle from the t, h or w id by ``mrope_section``.
- ``ntk_scaled_theta``: the Dynamic-NTK base rule LongPT uses to go 1e6 -> 4e6 (s=4, d=128).
- YaRN: per-frequency blend of interpolation and extrapolation (HF's ``_compute_yarn_parameters``)
  plus the attention factor, which scales q and k alike, so we fold its square into the softmax scale.

Precision. Frequencies and angles are float32 whatever the model's dtype, as HF and vLLM compute
them at inference. They are therefore never a registered buffer: Megatron's ``Float16Module``
calls ``.bfloat16()`` on the model, which casts every floating buffer, and bf16 frequencies (8
significant bits) put the phase off by radians at 128K positions. ``MRopeEmbedding`` keeps them
as a plain attribute (``inv_freq``, float32) and moves them to the ids' device when used.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from megatron_vlm.models.common.rope_scaling import RopeScaling


def default_inv_freq(dim: int, theta: float) -> torch.Tensor:
    """1 / theta^(2i/dim) for i < dim/2, in float32."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))


def ntk_scaled_theta(theta: float, scale: float, head_dim: int) -> float:
    """Dynamic-NTK base: theta * s^(d/(d-2)). (1e6, s=4, d=128 gives ~4.09e6; LongPT rounds to 4e6.)"""
    return theta * scale ** (head_dim / (head_dim - 2))


def yarn_inv_freq(dim: int, theta: float, scaling: RopeScaling) -> tuple[torch.Tensor, float]:
    """YaRN inverse frequencies and attention factor, as HF computes them (truncate=True)."""
    s = scaling.factor
    attention_factor = scaling.attention_factor
    if attention_factor is None:
        attention_factor = 1.0 if s <= 1 else 0.1 * math.log(s) + 1.0

    def correction_dim(rotations: float) -> float:
        return dim * math.log(scaling.original_max_position_embeddings / (rotations * 2 * math.pi)) / (
            2 * math.log(theta)
        )

    low = max(math.floor(correction_dim(scaling.beta_fast)), 0)
    high = min(math.ceil(correction_dim(scaling.beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp
    base = theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    inv = (1.0 / (s * base)) * (1 - extrapolate) + (1.0 / base) * extrapolate
    return inv, float(attention_factor)


class MRopeEmbedding(nn.Module):
    """mRoPE angles from [3, B, S] position ids; drop-in for Megatron's MultimodalRotaryEmbedding.

    Unlike Megatron's, it never slices by context-parallel rank: the ids it gets are the rank's own.
    ``attention_factor`` (YaRN, else 1.0) must be folded into the softmax scale by the caller.
    """

    def __init__(
        self, head_dim: int, theta: float, mrope_section: list[int], scaling: RopeScaling | None = None,
        interleaved: bool = False,
    ):
        """``interleaved`` (Qwen3-VL): frequency pair j takes h for j % 3 == 1 and w for j % 3 == 2
        while j < 3 * section, t otherwise; else (Qwen2.5-VL) contiguous t | h | w blocks."""
        super().__init__()
        if sum(mrope_section) * 2 != head_dim:
            raise ValueError(f"mrope_section {mrope_section} must sum to head_dim/2 = {head_dim // 2}")
        scaling = scaling or RopeScaling()
        if scaling.type == "yarn":
            inv, self.attention_factor = yarn_inv_freq(head_dim, theta, scaling)
        elif scaling.type == "none":
            inv, self.attention_factor = default_inv_freq(head_dim, theta), 1.0
        else:
            raise ValueError(f"unknown rope scaling {scaling.type!r}")
        # A plain attribute, not a buffer, so that module casts (Float16Module's .bfloat16()) leave it float32.
        self.inv_freq = inv.float()
        self.mrope_section = list(mrope_section)
        self.axis = mrope_axes(mrope_section, interleaved)

    def forward(self, position_ids: torch.Tensor, mrope_section: list[int] | None = None, cp_group=None) -> torch.Tensor:
        """Angles [S, B, 1, head_dim] (float32) for ids [3, B, S].

        Megatron's GPTModel passes its config's ``mrope_section`` (it must be this embedding's own)
        and a ``cp_group``, with which its own embedding would cut the angles to this CP rank's
        tokens; the ids here already are this rank's tokens (the micro-batch is split before the
        model, parallel/context_parallel.py), so there is nothing to cut and ``cp_group`` is unused.
        """
        if mrope_section is not None and list(mrope_section) != self.mrope_section:
            raise ValueError(f"mrope_section {list(mrope_section)} differs from this embedding's {self.mrope_section}")
        if self.inv_freq.device != position_ids.device:
            self.inv_freq = self.inv_freq.to(position_ids.device)  # moved once, stays float32
        angles = position_ids.float()[..., None] * self.inv_freq  # [3, B, S, d/2], float32
        axis = self.axis.to(angles.device)
        picked = angles.gather(0, axis.view(1, 1, 1, -1).expand(1, *angles.shape[1:])).squeeze(0)  # [B, S, d/2]
        emb = torch.cat([picked, picked], dim=-1)
        return emb.transpose(0, 1).unsqueeze(2).contiguous()


def mrope_axes(mrope_section: list[int], interleaved: bool = False) -> torch.Tensor:
    """Which id (0 t, 1 h, 2 w) each of the head_dim / 2 frequency pairs takes its angle from."""
    if not interleaved:
        return torch.cat([torch.full((n,), i % 3) for i, n in enumerate(mrope_section)])
    j = torch.arange(sum(mrope_section))
    axis = torch.zeros_like(j)
    for a in (1, 2):
        axis[(j % 3 == a) & (j < 3 * mrope_section[a])] = a
    return axis


def vision_position_ids(grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """(row, col) of every patch [N, 2], in the ViT's input order (block-major over merge blocks)."""
    out = []
    for t, h, w in grid_thw.tolist():
        rows = torch.arange(h).view(h // merge, merge, 1, 1).expand(-1, -1, w // merge, merge)
        cols = torch.arange(w).view(1, 1, w // merge, merge).expand(h // merge, merge, -1, -1)
        ids = torch.stack([rows.transpose(1, 2).flatten(), cols.transpose(1, 2).flatten()], dim=-1)
        out.append(ids.repeat(t, 1))
    return torch.cat(out)


def vision_rope_freqs(grid_thw: torch.Tensor, head_dim: int, merge: int, theta: float = 10000.0) -> torch.Tensor:
    """ViT angles [N, head_dim]: rows rotate one quarter-pair set, columns the other (HF's 2D rope)."""
    inv = default_inv_freq(head_dim // 2, theta)
    ids = vision_position_ids(grid_thw, merge).float()
    hw = torch.cat([ids[:, :1] * inv, ids[:, 1:] * inv], dim=-1)
    return torch.cat([hw, hw], dim=-1)
