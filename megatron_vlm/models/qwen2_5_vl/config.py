"""Qwen2.5-VL model shapes as dataclasses, named flavors, and the bridge to/from HF ``config.json``.

    from megatron_vlm.models.qwen2_5_vl.config import flavor, from_hf_config
    cfg = flavor("7B")                      # published Qwen2.5-VL-7B shapes
    cfg = from_hf_config("HF_DIR")          # or a config.json path, or its dict

Only shapes and numerics live here; parallel layout and precision are the trainer's business.
The fields every family has, and their meaning, are in models/common/config.py; this module adds
Qwen2.5-VL's own (window attention, video timing) and its architecture facts. The flavors copy the
published configs of Qwen/Qwen2.5-VL-{3B,7B,32B,72B}-Instruct (one ViT for all; 3B ties the output
layer to the input embedding); ``debug`` is a tiny model for CPU tests. ``to_hf_config`` writes the
dict transformers' ``Qwen2_5_VLConfig`` takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_vlm.models.common.config import (
    TextShape,
    VisionShape,
    VLConfig,
    as_dict,  # noqa: F401 - part of every family's config API
    patch_fields,
)
from megatron_vlm.models.common.hf_config import load_hf_config
from megatron_vlm.models.common.rope_scaling import (
    RopeScaling,  # noqa: F401 - importable from here, as before the common config
    rope_dict,
    rope_scaling_from_hf,
    rope_scaling_to_hf,
)
from megatron_vlm.models.qwen2_5_vl.family import FAMILY

_TOKENS = FAMILY.tokens


@dataclass(kw_only=True)
class VisionConfig(VisionShape):
    """The ViT: patch embedding, window/full-attention blocks, patch merger into the LLM width."""

    window_size: int = 112
    """Window-attention side in pixels (112 px = 4x4 merged tokens)."""
    fullatt_block_indexes: list[int] = field(default_factory=lambda: [7, 15, 23, 31])
    """Blocks (0-based) that attend over the whole image instead of windows."""
    tokens_per_second: int = 2
    """Video: temporal mRoPE ids advance by this many per second of video."""
    rms_norm_eps: float = 1e-6
    """Epsilon of the ViT norms and the merger's norm (fixed in HF)."""

    # Architecture facts the planner and the FLOPs model read for every family (Qwen3-VL's differ).
    gated_mlp = True
    """SwiGLU blocks (gate, up, down)."""
    norm_bias = False
    """RMSNorm: weight only."""
    patch_bias = False
    """The patch embedding has no bias."""
    num_position_embeddings = 0
    """No learned position grid."""
    deepstack_visual_indexes = ()
    """No DeepStack taps."""


@dataclass(kw_only=True)
class TextConfig(TextShape):
    """The Qwen2 decoder: GQA with QKV bias, RMSNorm, SwiGLU without bias, mRoPE."""

    rope_theta: float = 1_000_000.0
    """LongPT raises it to 4e6 (Dynamic-NTK rule, see rope.ntk_scaled_theta)."""
    mrope_section: list[int] = field(default_factory=lambda: [16, 24, 24])
    max_position_embeddings: int = 128000

    # Architecture facts the model, the planner and the FLOPs model read (Qwen3-VL's differ).
    qkv_bias = True
    """Q, K and V projections have a bias."""
    qk_norm = False
    """No RMSNorm on each head's q and k."""


@dataclass(kw_only=True)
class Qwen2_5_VLConfig(VLConfig):
    """The whole Qwen2.5-VL model: a TextConfig, a VisionConfig and the family's token ids."""

    image_token_id: int = _TOKENS.image_pad
    video_token_id: int = _TOKENS.video_pad
    vision_start_token_id: int = _TOKENS.vision_start
    vision_end_token_id: int = _TOKENS.vision_end


_VIT = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, **patch_fields(FAMILY.image))
"""The ViT of every published flavor."""


def _published(**text) -> Qwen2_5_VLConfig:
    """A published flavor: its LLM, and the ViT with its merger into the LLM's width."""
    return Qwen2_5_VLConfig(text=TextConfig(**text), vision=VisionConfig(**_VIT, out_hidden_size=text["hidden_size"]))


FLAVORS: dict[str, Qwen2_5_VLConfig] = {
    "debug": Qwen2_5_VLConfig(
        text=TextConfig(
            vocab_size=152064, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, mrope_section=[2, 3, 3],
            tie_word_embeddings=False,
        ),
        vision=VisionConfig(
            depth=2, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
            fullatt_block_indexes=[1], **patch_fields(FAMILY.image),
        ),
    ),
    "3B": _published(
        vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
        num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True,
    ),
    "7B": _published(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4,
    ),
    "32B": _published(
        vocab_size=152064, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
        num_attention_heads=40, num_key_value_heads=8,
    ),
    "72B": _published(
        vocab_size=152064, hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
        num_attention_heads=64, num_key_value_heads=8,
    ),
}
_FLAGSHIP = FLAVORS["7B"]
"""Fills what a ``config.json`` leaves out."""


def flavor(name: str) -> Qwen2_5_VLConfig:
    """A fresh copy of a named flavor: debug, 3B, 7B, 32B or 72B."""
    if name not in FLAVORS:
        raise ValueError(f"unknown flavor {name!r}; choose from {', '.join(FLAVORS)}")
    return from_hf_config(to_hf_config(FLAVORS[name]))


def from_hf_config(source) -> Qwen2_5_VLConfig:
    """Build from an HF ``config.json`` (dir, file or dict), old (flat) or new (text_config) layout."""
    raw = load_hf_config(source)
    text_raw = dict(raw)
    text_raw.update(raw.get("text_config") or {})
    vis_raw = raw.get("vision_config") or {}
    d = _FLAGSHIP.vision
    text = TextConfig.from_hf(raw, text_raw, _FLAGSHIP.text, rope_scaling=rope_scaling_from_hf(rope_dict(text_raw), 32768))
    vision = VisionConfig.from_hf(
        vis_raw, d, text.hidden_size,
        window_size=int(vis_raw.get("window_size", d.window_size)),
        fullatt_block_indexes=list(vis_raw.get("fullatt_block_indexes", d.fullatt_block_indexes)),
        tokens_per_second=int(vis_raw.get("tokens_per_second", d.tokens_per_second)),
    )
    if vis_raw.get("hidden_act", "silu") != "silu" or text_raw.get("hidden_act", "silu") != "silu":
        raise ValueError("only hidden_act='silu' is supported (as in every published Qwen2.5-VL)")
    return Qwen2_5_VLConfig.from_hf(raw, text, vision, FAMILY.tokens)


def to_hf_config(cfg: Qwen2_5_VLConfig) -> dict:
    """The ``config.json`` dict (old flat layout, which every transformers version reads)."""
    t, v = cfg.text, cfg.vision
    rope = {"type": "mrope", **rope_scaling_to_hf(t.rope_scaling), "mrope_section": list(t.mrope_section)}
    if t.rope_scaling.type != "yarn":
        del rope["rope_type"]  # the flat layout's mrope entry, as published
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "hidden_act": "silu",
        **t.hf_fields(),
        "rope_scaling": rope,
        "use_sliding_window": False,
        "attention_dropout": 0.0,
        **cfg.hf_fields(),
        "vision_config": {
            **v.hf_fields(), "in_chans": v.in_channels, "window_size": v.window_size,
            "fullatt_block_indexes": list(v.fullatt_block_indexes), "tokens_per_second": v.tokens_per_second,
            "hidden_act": "silu",
        },
    }
