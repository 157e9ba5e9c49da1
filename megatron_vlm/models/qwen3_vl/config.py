"""Qwen3-VL model shapes as dataclasses, named flavors, and the bridge to/from HF ``config.json``.

    from megatron_vlm.models.qwen3_vl.config import flavor, from_hf_config
    cfg = flavor("8B")                      # published Qwen3-VL-8B-Instruct shapes
    cfg = from_hf_config("HF_DIR")          # or a config.json path, or its dict

Only shapes and numerics live here; parallel layout and precision are the trainer's business.
The flavors mirror the published configs of Qwen/Qwen3-VL-{2B,4B,8B,32B}-Instruct as numbers (a
user's install has no reference files); tests/unit/test_qwen3_config.py checks each against
``../shared/reference/qwen3_vl/``. ``debug`` is a tiny model for CPU tests. ``to_hf_config``
writes the dict transformers' ``Qwen3VLConfig`` takes (text_config / vision_config, as published).

Differences from Qwen2.5-VL that the fields carry: the LLM has an explicit ``head_dim`` (4B and
32B have hidden / heads = 80 but head_dim 128), QK-norm and no QKV bias; its mRoPE is interleaved
(frequency j takes h for j % 3 == 1, w for j % 3 == 2, t otherwise, within the sections); the ViT
has learned position embeddings (``num_position_embeddings``, a square grid) and DeepStack taps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from megatron_vlm.models.common.hf_config import load_hf_config
from megatron_vlm.models.common.rope_scaling import RopeScaling, rope_dict, rope_scaling_from_hf, rope_scaling_to_hf
from megatron_vlm.models.qwen3_vl.family import FAMILY

_TOKENS, _IMAGE = FAMILY.tokens, FAMILY.image


@dataclass
class VisionConfig:
    """The ViT: patch embedding + learned position grid, full-attention blocks, merger, DeepStack mergers."""

    depth: int = 27
    """Number of ViT blocks."""
    hidden_size: int = 1152
    """ViT width."""
    intermediate_size: int = 4304
    """MLP width (fc1 -> GELU-tanh -> fc2, with bias)."""
    num_heads: int = 16
    """Attention heads (no GQA in the ViT)."""
    in_channels: int = _IMAGE.in_channels
    """Image channels."""
    patch_size: int = _IMAGE.patch_size
    """Spatial patch size in pixels."""
    temporal_patch_size: int = _IMAGE.temporal_patch_size
    """Frames per patch (a still image is repeated to fill it)."""
    spatial_merge_size: int = _IMAGE.merge_size
    """The merger joins merge x merge patches into one LLM token."""
    out_hidden_size: int = 4096
    """Merger output width; equals the LLM hidden size."""
    num_position_embeddings: int = 2304
    """Learned position embeddings: a square grid (48 x 48), bilinearly resampled to each image's grid."""
    deepstack_visual_indexes: list[int] = field(default_factory=lambda: [8, 16, 24])
    """ViT blocks (0-based) whose outputs go through their own merger and are added to the hidden
    states of LLM layers 0, 1, ... (in this order) at the visual positions."""
    rope_theta: float = 10000.0
    """Base of the ViT's 2D rotary embedding."""
    layer_norm_eps: float = 1e-6
    """Epsilon of the ViT's LayerNorms and the mergers' (fixed in HF)."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch: channels x temporal patch x patch x patch (1536)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

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


@dataclass
class TextConfig:
    """The Qwen3 decoder: GQA without QKV bias, QK-norm (RMSNorm per head), SwiGLU, interleaved mRoPE."""

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 12288
    num_hidden_layers: int = 36
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    """Per-head width; not hidden / heads in every flavor."""
    rms_norm_eps: float = 1e-6
    rope_theta: float = 5_000_000.0
    """mRoPE base (native window 256K; kept for 128K training, see the 8B recipe)."""
    mrope_section: list[int] = field(default_factory=lambda: [24, 20, 20])
    """Frequency pairs of the t, h, w axes (sums to head_dim / 2), interleaved (see the module doc)."""
    mrope_interleaved: bool = True
    """Every published Qwen3-VL interleaves; False is refused (it is Qwen2.5-VL's layout)."""
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    """Optional YaRN scaling on top of rope_theta."""
    max_position_embeddings: int = 262144
    tie_word_embeddings: bool = False
    """2B and 4B tie the output layer to the input embedding; 8B and 32B do not."""

    qkv_bias = False
    """No bias on Q, K, V (``attention_bias`` false in every published config)."""
    qk_norm = True
    """RMSNorm over each head's q and k before rope."""


@dataclass
class Qwen3VLConfig:
    """The whole model plus the special token ids the model (not only the tokenizer) relies on."""

    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    image_token_id: int = _TOKENS.image_pad
    video_token_id: int = _TOKENS.video_pad
    vision_start_token_id: int = _TOKENS.vision_start
    vision_end_token_id: int = _TOKENS.vision_end

    def replace(self, **text_or_vision) -> Qwen3VLConfig:
        """A copy with ``text=dict(...)`` / ``vision=dict(...)`` fields changed."""
        text = replace(self.text, **text_or_vision.pop("text", {}))
        vision = replace(self.vision, **text_or_vision.pop("vision", {}))
        return replace(self, text=text, vision=vision, **text_or_vision)


_SMALL_VIT = dict(depth=24, hidden_size=1024, intermediate_size=4096, deepstack_visual_indexes=[5, 11, 17])

FLAVORS: dict[str, Qwen3VLConfig] = {
    "debug": Qwen3VLConfig(
        text=TextConfig(
            vocab_size=151936, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=24, mrope_section=[4, 4, 4],
        ),
        vision=VisionConfig(
            depth=3, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
            num_position_embeddings=16, deepstack_visual_indexes=[0, 1, 2],
        ),
    ),
    "2B": Qwen3VLConfig(
        text=TextConfig(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                        num_key_value_heads=8, tie_word_embeddings=True),
        vision=VisionConfig(**_SMALL_VIT, out_hidden_size=2048),
    ),
    "4B": Qwen3VLConfig(
        text=TextConfig(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                        num_key_value_heads=8, tie_word_embeddings=True),
        vision=VisionConfig(**_SMALL_VIT, out_hidden_size=2560),
    ),
    "8B": Qwen3VLConfig(
        text=TextConfig(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                        num_key_value_heads=8),
        vision=VisionConfig(out_hidden_size=4096),
    ),
    "32B": Qwen3VLConfig(
        text=TextConfig(hidden_size=5120, intermediate_size=25600, num_hidden_layers=64, num_attention_heads=64,
                        num_key_value_heads=8),
        vision=VisionConfig(out_hidden_size=5120),
    ),
}


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
    if "rope_theta" not in rope and "rope_theta" in text_raw:
        rope["rope_theta"] = text_raw["rope_theta"]
    if not rope.get("mrope_interleaved", True):
        raise ValueError("only interleaved mRoPE (mrope_interleaved: true, as published) is supported")
    if text_raw.get("attention_bias", False):
        raise ValueError("attention_bias is not supported (no published Qwen3-VL has QKV bias)")
    if text_raw.get("hidden_act", "silu") != "silu" or vis_raw.get("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise ValueError("only hidden_act silu (LLM) and gelu_pytorch_tanh (ViT) are supported, as published")
    n_heads = int(text_raw["num_attention_heads"])
    d = TextConfig()
    max_pos = int(text_raw.get("max_position_embeddings", d.max_position_embeddings))
    text = TextConfig(
        vocab_size=int(text_raw["vocab_size"]),
        hidden_size=int(text_raw["hidden_size"]),
        intermediate_size=int(text_raw["intermediate_size"]),
        num_hidden_layers=int(text_raw["num_hidden_layers"]),
        num_attention_heads=n_heads,
        num_key_value_heads=int(text_raw.get("num_key_value_heads") or n_heads),
        head_dim=int(text_raw.get("head_dim") or int(text_raw["hidden_size"]) // n_heads),
        rms_norm_eps=float(text_raw.get("rms_norm_eps", d.rms_norm_eps)),
        rope_theta=float(rope.get("rope_theta", d.rope_theta)),
        mrope_section=list(rope.get("mrope_section", d.mrope_section)),
        rope_scaling=rope_scaling_from_hf(rope, max_pos),
        max_position_embeddings=max_pos,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", text_raw.get("tie_word_embeddings", False))),
    )
    v = VisionConfig()
    vision = VisionConfig(
        depth=int(vis_raw.get("depth", v.depth)),
        hidden_size=int(vis_raw.get("hidden_size", v.hidden_size)),
        intermediate_size=int(vis_raw.get("intermediate_size", v.intermediate_size)),
        num_heads=int(vis_raw.get("num_heads", v.num_heads)),
        in_channels=int(vis_raw.get("in_channels", v.in_channels)),
        patch_size=int(vis_raw.get("patch_size", v.patch_size)),
        temporal_patch_size=int(vis_raw.get("temporal_patch_size", v.temporal_patch_size)),
        spatial_merge_size=int(vis_raw.get("spatial_merge_size", v.spatial_merge_size)),
        out_hidden_size=int(vis_raw.get("out_hidden_size", text.hidden_size)),
        num_position_embeddings=int(vis_raw.get("num_position_embeddings", v.num_position_embeddings)),
        deepstack_visual_indexes=list(vis_raw.get("deepstack_visual_indexes", v.deepstack_visual_indexes)),
    )
    if vision.position_grid_side**2 != vision.num_position_embeddings:
        raise ValueError(f"num_position_embeddings {vision.num_position_embeddings} is not a square grid")
    if len(vision.deepstack_visual_indexes) > text.num_hidden_layers:
        raise ValueError("more DeepStack taps than LLM layers to add them to")
    return Qwen3VLConfig(
        text=text,
        vision=vision,
        image_token_id=int(raw.get("image_token_id", _TOKENS.image_pad)),
        video_token_id=int(raw.get("video_token_id", _TOKENS.video_pad)),
        vision_start_token_id=int(raw.get("vision_start_token_id", _TOKENS.vision_start)),
        vision_end_token_id=int(raw.get("vision_end_token_id", _TOKENS.vision_end)),
    )


def to_hf_config(cfg: Qwen3VLConfig) -> dict:
    """The ``config.json`` dict in the published layout (text_config / vision_config)."""
    t, v = cfg.text, cfg.vision
    rope = {**rope_scaling_to_hf(t.rope_scaling), "mrope_interleaved": True, "mrope_section": list(t.mrope_section),
            "rope_theta": t.rope_theta}
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "image_token_id": cfg.image_token_id,
        "video_token_id": cfg.video_token_id,
        "vision_start_token_id": cfg.vision_start_token_id,
        "vision_end_token_id": cfg.vision_end_token_id,
        "tie_word_embeddings": t.tie_word_embeddings,
        "text_config": {
            "model_type": "qwen3_vl_text",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "hidden_act": "silu",
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "head_dim": t.head_dim,
            "rms_norm_eps": t.rms_norm_eps,
            "rope_theta": t.rope_theta,
            "rope_scaling": rope,
            "max_position_embeddings": t.max_position_embeddings,
            "tie_word_embeddings": t.tie_word_embeddings,
        },
        "vision_config": {
            "model_type": "qwen3_vl",
            "hidden_act": "gelu_pytorch_tanh",
            "depth": v.depth, "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
            "num_heads": v.num_heads, "in_channels": v.in_channels, "patch_size": v.patch_size,
            "temporal_patch_size": v.temporal_patch_size, "spatial_merge_size": v.spatial_merge_size,
            "out_hidden_size": v.out_hidden_size, "num_position_embeddings": v.num_position_embeddings,
            "deepstack_visual_indexes": list(v.deepstack_visual_indexes),
        },
    }


def as_dict(cfg: Qwen3VLConfig) -> dict:
    """Plain nested dict (for logs and checkpoints' metadata)."""
    return asdict(cfg)
