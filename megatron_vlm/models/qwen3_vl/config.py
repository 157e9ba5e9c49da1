"""Qwen3-VL model shapes as dataclasses, named flavors, and the bridge to/from HF ``config.json``.

    from megatron_vlm.models.qwen3_vl.config import flavor, from_hf_config
    cfg = flavor("8B")                      # published Qwen3-VL-8B-Instruct shapes
    cfg = from_hf_config("HF_DIR")          # or a config.json path, or its dict

Only shapes and numerics live here; parallel layout and precision are the trainer's business.
The flavors mirror the published configs of Qwen/Qwen3-VL-{2B,4B,8B,32B}-Instruct as numbers (a
user's install has no reference files); tests/unit/test_qwen3_config.py checks each against
``../shared/reference/qwen3_vl/`` (2B and 4B share the small ViT and tie the output layer to the
input embedding). ``debug`` is a tiny model for CPU tests. ``to_hf_config`` writes the dict
transformers' ``Qwen3VLConfig`` takes (text_config / vision_config, as published). The fields every
family has are in models/common/config.py.

Differences from Qwen2.5-VL that the fields carry: the LLM has an explicit ``head_dim`` (4B and
32B have hidden / heads = 80 but head_dim 128), QK-norm and no QKV bias; its mRoPE is interleaved
(frequency j takes h for j % 3 == 1, w for j % 3 == 2, t otherwise, within the sections); the ViT
has learned position embeddings (``num_position_embeddings``, a square grid) and DeepStack taps.
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
from megatron_vlm.models.common.rope_scaling import rope_dict, rope_scaling_from_hf, rope_scaling_to_hf
from megatron_vlm.models.qwen3_vl.family import FAMILY

_TOKENS = FAMILY.tokens


@dataclass(kw_only=True)
class VisionConfig(VisionShape):
    """The ViT: patch embedding + learned position grid, full-attention blocks, merger, DeepStack mergers."""

    num_position_embeddings: int
    """Learned position embeddings: a square grid (48 x 48 as published), bilinearly resampled to each image's grid."""
    deepstack_visual_indexes: list[int]
    """ViT blocks (0-based) whose outputs go through their own merger and are added to the hidden
    states of LLM layers 0, 1, ... (in this order) at the visual positions."""
    layer_norm_eps: float = 1e-6
    """Epsilon of the ViT's LayerNorms and the mergers' (fixed in HF)."""

    # Architecture facts the planner and the FLOPs model read (Qwen2.5-VL's VisionConfig has the same names).
    gated_mlp = False
    """Plain MLP blocks (fc1, GELU-tanh, fc2)."""
    norm_bias = True
    """LayerNorm: weight and bias."""
    patch_bias = True
    """The patch embedding has a bias."""
    window_size = 0
    """No window attention."""

    @property
    def fullatt_block_indexes(self) -> list[int]:
        """Every block attends over the whole frame."""
        return list(range(self.depth))

    @property
    def position_grid_side(self) -> int:
        """Side of the square learned position grid."""
        return int(round(self.num_position_embeddings**0.5))


@dataclass(kw_only=True)
class TextConfig(TextShape):
    """The Qwen3 decoder: GQA without QKV bias, QK-norm (RMSNorm per head), SwiGLU, interleaved mRoPE."""

    vocab_size: int = 151936
    head_dim: int = 128
    """Per-head width; not hidden / heads in every flavor."""
    rope_theta: float = 5_000_000.0
    """Native window 256K; kept for 128K training, see the 8B recipe."""
    mrope_section: list[int] = field(default_factory=lambda: [24, 20, 20])
    mrope_interleaved: bool = True
    """The sections are interleaved (see the module doc). Every published Qwen3-VL interleaves;
    False is refused (it is Qwen2.5-VL's layout)."""
    max_position_embeddings: int = 262144

    qkv_bias = False
    """No bias on Q, K, V (``attention_bias`` false in every published config)."""
    qk_norm = True
    """RMSNorm over each head's q and k before rope."""


@dataclass(kw_only=True)
class Qwen3VLConfig(VLConfig):
    """The whole Qwen3-VL model: a TextConfig, a VisionConfig and the family's token ids."""

    image_token_id: int = _TOKENS.image_pad
    video_token_id: int = _TOKENS.video_pad
    vision_start_token_id: int = _TOKENS.vision_start
    vision_end_token_id: int = _TOKENS.vision_end


_VIT = dict(num_heads=16, num_position_embeddings=2304, **patch_fields(FAMILY.image))
"""What the two published ViTs share."""
_SMALL_VIT = dict(_VIT, depth=24, hidden_size=1024, intermediate_size=4096, deepstack_visual_indexes=[5, 11, 17])
_LARGE_VIT = dict(_VIT, depth=27, hidden_size=1152, intermediate_size=4304, deepstack_visual_indexes=[8, 16, 24])


def _published(vit: dict, **text) -> Qwen3VLConfig:
    """A published flavor: its LLM, and the ViT ``vit`` with its merger into the LLM's width."""
    return Qwen3VLConfig(text=TextConfig(**text), vision=VisionConfig(**vit, out_hidden_size=text["hidden_size"]))


FLAVORS: dict[str, Qwen3VLConfig] = {
    "debug": Qwen3VLConfig(
        text=TextConfig(
            vocab_size=151936, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=24, mrope_section=[4, 4, 4],
        ),
        vision=VisionConfig(
            depth=3, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
            num_position_embeddings=16, deepstack_visual_indexes=[0, 1, 2], **patch_fields(FAMILY.image),
        ),
    ),
    "2B": _published(_SMALL_VIT, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                     num_key_value_heads=8, tie_word_embeddings=True),
    "4B": _published(_SMALL_VIT, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, tie_word_embeddings=True),
    "8B": _published(_LARGE_VIT, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8),
    "32B": _published(_LARGE_VIT, hidden_size=5120, intermediate_size=25600, num_hidden_layers=64, num_attention_heads=64,
                      num_key_value_heads=8),
}
_FLAGSHIP = FLAVORS["8B"]
"""Fills what a ``config.json`` leaves out."""


def flavor(name: str) -> Qwen3VLConfig:
    """A fresh copy of a named flavor: debug, 2B, 4B, 8B or 32B."""
    if name not in FLAVORS:
        raise ValueError(f"unknown flavor {name!r}; choose from {', '.join(FLAVORS)}")
    return from_hf_config(to_hf_config(FLAVORS[name]))


def from_hf_config(source) -> Qwen3VLConfig:
    """Build from an HF ``config.json`` (dir, file or dict) of ``model_type`` qwen3_vl (dense)."""
    raw = load_hf_config(source)
    if raw.get("model_type", "qwen3_vl") != "qwen3_vl":
        raise ValueError(f"model_type {raw.get('model_type')!r} is not qwen3_vl (the MoE flavor is not supported)")
    text_raw, vis_raw = dict(raw.get("text_config") or {}), dict(raw.get("vision_config") or {})
    if not text_raw:
        raise ValueError("a Qwen3-VL config.json has a text_config")
    rope = rope_dict(text_raw)
    if not rope.get("mrope_interleaved", True):
        raise ValueError("only interleaved mRoPE (mrope_interleaved: true, as published) is supported")
    if text_raw.get("attention_bias", False):
        raise ValueError("attention_bias is not supported (no published Qwen3-VL has QKV bias)")
    if text_raw.get("hidden_act", "silu") != "silu" or vis_raw.get("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise ValueError("only hidden_act silu (LLM) and gelu_pytorch_tanh (ViT) are supported, as published")
    max_pos = int(text_raw.get("max_position_embeddings", _FLAGSHIP.text.max_position_embeddings))  # YaRN's default original context
    text = TextConfig.from_hf(
        raw, text_raw, _FLAGSHIP.text, rope_scaling=rope_scaling_from_hf(rope, max_pos),
        head_dim=int(text_raw.get("head_dim") or int(text_raw["hidden_size"]) // int(text_raw["num_attention_heads"])),
    )
    d = _FLAGSHIP.vision
    vision = VisionConfig.from_hf(
        vis_raw, d, text.hidden_size,
        num_position_embeddings=int(vis_raw.get("num_position_embeddings", d.num_position_embeddings)),
        deepstack_visual_indexes=list(vis_raw.get("deepstack_visual_indexes", d.deepstack_visual_indexes)),
    )
    if vision.position_grid_side**2 != vision.num_position_embeddings:
        raise ValueError(f"num_position_embeddings {vision.num_position_embeddings} is not a square grid")
    if len(vision.deepstack_visual_indexes) > text.num_hidden_layers:
        raise ValueError("more DeepStack taps than LLM layers to add them to")
    return Qwen3VLConfig.from_hf(raw, text, vision, FAMILY.tokens)


def to_hf_config(cfg: Qwen3VLConfig) -> dict:
    """The ``config.json`` dict in the published layout (text_config / vision_config)."""
    t, v = cfg.text, cfg.vision
    rope = {**rope_scaling_to_hf(t.rope_scaling), "mrope_interleaved": True, "mrope_section": list(t.mrope_section),
            "rope_theta": t.rope_theta}
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        **cfg.hf_fields(),
        "tie_word_embeddings": t.tie_word_embeddings,
        "text_config": {
            "model_type": "qwen3_vl_text",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "hidden_act": "silu",
            **t.hf_fields(),
            "head_dim": t.head_dim,
            "rope_scaling": rope,
        },
        "vision_config": {
            "model_type": "qwen3_vl",
            "hidden_act": "gelu_pytorch_tanh",
            **v.hf_fields(),
            "num_position_embeddings": v.num_position_embeddings,
            "deepstack_visual_indexes": list(v.deepstack_visual_indexes),
        },
    }
