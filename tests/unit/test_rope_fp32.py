"""Rope frequencies and angles stay float32 in a bf16 model built the way the trainer builds it.

Megatron's ``Float16Module`` calls ``.bfloat16()`` on the model, which casts every floating
buffer. Rope frequencies held in a buffer become bf16 (8 significant bits): the model then trains
on phases that differ from HF's and vLLM's (float32) by radians at 128K positions. For every
model family, text and vision: build with ``train.precision=bf16`` through
``training.loop.build_model`` (provider -> Float16Module -> DDP) on CPU, then

- every ``inv_freq`` in the model is float32 and equal to the fp64 reference to relative 1e-6;
- the LLM's angles at positions 131,071 and 524,287 are within 0.02 / 0.05 rad of fp64 (what
  float32 arithmetic allows; bf16 frequencies are tens of radians off there);
- the ViT's 2D angles equal the fp64 reference to relative 1e-6.

A family adds itself to ``FAMILIES``: its recipe overrides, where its LLM rope module is, how to
get its angles for text positions, its (theta, head_dim), and its ViT angles if it has a ViT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from tests.qwen_utils import single_rank_fixture

THETA = 4_000_000  # LongPT's mRoPE base
FAR = {131_071: 0.02, 524_287: 0.05}  # position -> largest angle error (rad) float32 arithmetic gives


def reference_inv_freq(theta: float, dim: int) -> torch.Tensor:
    """1 / theta^(2i/dim), i < dim/2, in float64."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


@dataclass(frozen=True)
class Family:
    overrides: tuple[str, ...]
    text_angles: Callable  # (model, positions [N] int64) -> angles [N, head_dim]
    theta_and_dim: Callable  # (model) -> (rope base, rotary head dim)
    vision_angles: Callable | None = None  # (model, grid_thw) -> (angles [N, d], fp64 reference [N, d])


def _text_ids(positions: torch.Tensor) -> torch.Tensor:
    return positions.view(1, 1, -1).expand(3, 1, -1)  # text tokens: t = h = w


def _qwen2_5_vl_vision(model, grid_thw):
    from megatron_vlm.models.qwen2_5_vl.rope import vision_position_ids

    v = model.cfg.vision
    inv = reference_inv_freq(v.rope_theta, v.head_dim // 2)
    ids = vision_position_ids(grid_thw, v.spatial_merge_size).double()
    hw = torch.cat([ids[:, :1] * inv, ids[:, 1:] * inv], dim=-1)
    return model.vision.rope_angles(grid_thw), torch.cat([hw, hw], dim=-1)


FAMILIES = {
    "qwen2_5_vl": Family(
        overrides=("model.kind=qwen2_5_vl",),
        text_angles=lambda m, pos: m.language_model.rotary_pos_emb(_text_ids(pos))[:, 0, 0],
        theta_and_dim=lambda m: (m.cfg.text.rope_theta, m.cfg.text.head_dim),
        vision_angles=_qwen2_5_vl_vision,
    ),
    "qwen3_vl": Family(  # interleaved mRoPE: for text ids (t = h = w) the same angles as plain rope
        overrides=("model.kind=qwen3_vl",),
        text_angles=lambda m, pos: m.language_model.rotary_pos_emb(_text_ids(pos))[:, 0, 0],
        theta_and_dim=lambda m: (m.cfg.text.rope_theta, m.cfg.text.head_dim),
        vision_angles=_qwen2_5_vl_vision,  # the same 2D rope (models/qwen3_vl/vision.py reuses it)
    ),
    "gpt": Family(
        overrides=("model.kind=gpt",),
        text_angles=lambda m, pos: m.rotary_pos_emb(_text_ids(pos), m.config.mrope_section)[:, 0, 0],
        theta_and_dim=lambda m: (THETA, m.config.kv_channels),
    ),
}


@pytest.fixture(scope="module", autouse=True)
def _megatron():
    yield from single_rank_fixture()


def _build_bf16(family: Family):
    from megatron_vlm.training.config import load_recipe
    from megatron_vlm.training.loop import build_model
    from megatron_vlm.training.providers import get_provider

    recipe = load_recipe(None, [*family.overrides, "model.flavor=debug", f"model.rope_theta={THETA}",
                                "train.precision=bf16", "train.data_source=synthetic", "logging.wandb_mode=disabled"])
    chunks, _ = build_model(get_provider(recipe), recipe)
    wrapped = chunks[0].module  # DDP -> Float16Module
    assert type(wrapped).__name__ == "Float16Module"
    model = wrapped.module
    assert next(p for n, p in model.named_parameters() if "linear_qkv.weight" in n).dtype == torch.bfloat16
    return model


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_rope_stays_fp32_under_bf16(name):
    family = FAMILIES[name]
    model = _build_bf16(family)
    theta, dim = family.theta_and_dim(model)
    reference = reference_inv_freq(theta, dim)

    holders = [m for m in model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)]
    assert holders, "no module holds rope frequencies (inv_freq)"
    for module in holders:
        assert module.inv_freq.dtype == torch.float32, f"{type(module).__name__}.inv_freq is {module.inv_freq.dtype}"
        if module.inv_freq.numel() == reference.numel():  # the LLM's
            torch.testing.assert_close(module.inv_freq.double(), reference, rtol=1e-6, atol=0)

    positions = torch.tensor([0, 1, 100, *FAR], dtype=torch.int64)
    with torch.no_grad():
        angles = family.text_angles(model, positions)
    assert angles.dtype == torch.float32
    expected = positions.double()[:, None] * torch.cat([reference, reference])
    error = (angles.double() - expected).abs().amax(-1)
    for i, (position, tolerance) in enumerate(FAR.items(), start=3):
        assert error[i] <= tolerance, f"{name}: angle off by {float(error[i]):.3f} rad at position {position}"
    assert float(error[2]) <= 1e-4  # 100 tokens apart

    if family.vision_angles is not None:
        got, want = family.vision_angles(model, torch.tensor([[1, 64, 48], [2, 8, 12]]))
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
