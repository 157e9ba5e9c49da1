"""Qwen2.5-VL model shapes as dataclasses, named flavors, and the bridge to/from HF ``config.json``.

    from megatron_vlm.models.qwen2_5_vl.config import flavor, from_hf_config
    cfg = flavor("7B")                      # published Qwen2.5-VL-7B shapes
    cfg = from_hf_config("HF_DIR")          # or a config.json path, or its dict

Only shapes and numerics live here; parallel layout and precision are the trainer's business.
The flavors copy the published configs of Qwen/Qwen2.5-VL-{3B,7B,32B,72B}-Instruct; ``debug`` is a
tiny model for CPU tests. ``to_hf_config`` writes the dict transformers' ``Qwen2_5_VLConfig`` takes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from megatron_vlm.models.common.hf_config import load_hf_config
from megatron_vlm.models.common.rope_scaling import RopeScaling, rope_dict, rope_scaling_from_hf, rope_scaling_to_hf
from megatron_vlm.models.qwen2_5_vl.family import FAMILY

_TOKENS, _IMAGE = FAMILY.tokens, FAMILY.image


@dataclass
class VisionConfig:
    """The ViT: patch embedding, window/full-attention blocks, patch merger into the LLM width."""

    depth: int = 32
    """Number of ViT blocks."""
    hidden_size: int = 1280
    """ViT width."""
    intermediate_size: int = 3420
    """SwiGLU MLP width (gate and up each), with bias."""
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
    window_size: int = 112
    """Window-attention side in pixels (112 px = 4x4 merged tokens)."""
    fullatt_block_indexes: list[int] = field(default_factory=lambda: [7, 15, 23, 31])
    """Blocks (0-based) that attend over the whole image instead of windows."""
    out_hidden_size: int = 3584
    """Merger output width; equals the LLM hidden size."""
    tokens_per_second: int = 2
    """Video: temporal mRoPE ids advance by this many per second of video."""
    rope_theta: float = 10000.0
    """Base of the ViT's 2D rotary embedding."""
    rms_norm_eps: float = 1e-6
    """Epsilon of the ViT norms and the merger's norm (fixed in HF)."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch: channels x temporal patch x patch x patch (1176)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

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


@dataclass
class TextConfig:
    """The Qwen2 decoder: GQA with QKV bias, RMSNorm, SwiGLU without bias, mRoPE."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    """mRoPE base. LongPT raises it to 4e6 (Dynamic-NTK rule, see rope.ntk_scaled_theta)."""
    mrope_section: list[int] = field(default_factory=lambda: [16, 24, 24])
    """Rotary frequency pairs given to the t, h, w axes (sums to head_dim / 2)."""
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    """Optional YaRN scaling on top of rope_theta."""
    max_position_embeddings: int = 128000
    tie_word_embeddings: bool = False
    """3B ties the output layer to the input embedding; 7B and larger do not."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # Architecture facts the model, the planner and the FLOPs model read (Qwen3-VL's differ).
    qkv_bias = True
    """Q, K and V projections have a bias."""
    qk_norm = False
    """No RMSNorm on each head's q and k."""


@dataclass
class Qwen2_5_VLConfig:
    """The whole model plus the special token ids the model (not only the tokenizer) relies on."""

    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    image_token_id: int = _TOKENS.image_pad
    video_token_id: int = _TOKENS.video_pad
    vision_start_token_id: int = _TOKENS.vision_start
    vision_end_token_id: int = _TOKENS.vision_end

    def replace(self, **text_or_vision) -> Qwen2_5_VLConfig:
        """A copy with ``text=dict(...)`` / ``vision=dict(...)`` fields changed."""
        text = replace(self.text, **text_or_vision.pop("text", {}))
        vision = replace(self.vision, **text_or_vision.pop("vision", {}))
        return replace(self, text=text, vision=vision, **text_or_vision)


def _vision(out: int) -> VisionConfig:
    return VisionConfig(out_hidden_size=out)


FLAVORS: dict[str, Qwen2_5_VLConfig] = {
    "debug": Qwen2_5_VLConfig(
        text=TextConfig(
            vocab_size=152064, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, mrope_section=[2, 3, 3],
            tie_word_embeddings=False,
        ),
        vision=VisionConfig(
            depth=2, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
            fullatt_block_indexes=[1],
        ),
    ),
    "3B": Qwen2_5_VLConfig(
        text=TextConfig(
            vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
            num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True,
        ),
        vision=_vision(2048),
    ),
    "7B": Qwen2_5_VLConfig(
        text=TextConfig(
            vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
            num_attention_heads=28, num_key_value_heads=4,
        ),
        vision=_vision(3584),
    ),
    "32B": Qwen2_5_VLConfig(
        text=TextConfig(
            vocab_size=152064, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
            num_attention_heads=40, num_key_value_heads=8,
        ),
        vision=_vision(5120),
    ),
    "72B": Qwen2_5_VLConfig(
        text=TextConfig(
            vocab_size=152064, hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
            num_attention_heads=64, num_key_value_heads=8,
        ),
        vision=_vision(8192),
    ),
}


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
    rope = rope_dict(text_raw)
    scaling = rope_scaling_from_hf(rope, 32768)
    n_heads = int(text_raw["num_attention_heads"])
    text = TextConfig(
        vocab_size=int(text_raw["vocab_size"]),
        hidden_size=int(text_raw["hidden_size"]),
        intermediate_size=int(text_raw["intermediate_size"]),
        num_hidden_layers=int(text_raw["num_hidden_layers"]),
        num_attention_heads=n_heads,
        num_key_value_heads=int(text_raw.get("num_key_value_heads") or n_heads),
        rms_norm_eps=float(text_raw.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope.get("rope_theta", text_raw.get("rope_theta", 1_000_000.0))),
        mrope_section=list(rope.get("mrope_section", [16, 24, 24])),
        rope_scaling=scaling,
        max_position_embeddings=int(text_raw.get("max_position_embeddings", 128000)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", text_raw.get("tie_word_embeddings", False))),
    )
    vision = VisionConfig(
        depth=int(vis_raw.get("depth", 32)),
        hidden_size=int(vis_raw.get("hidden_size", 1280)),
        intermediate_size=int(vis_raw.get("intermediate_size", 3420)),
        num_heads=int(vis_raw.get("num_heads", 16)),
        in_channels=int(vis_raw.get("in_channels", vis_raw.get("in_chans", _IMAGE.in_channels))),
        patch_size=int(vis_raw.get("patch_size", _IMAGE.patch_size)),
        temporal_patch_size=int(vis_raw.get("temporal_patch_size", _IMAGE.temporal_patch_size)),
        spatial_merge_size=int(vis_raw.get("spatial_merge_size", _IMAGE.merge_size)),
        window_size=int(vis_raw.get("window_size", 112)),
        fullatt_block_indexes=list(vis_raw.get("fullatt_block_indexes", [7, 15, 23, 31])),
        out_hidden_size=int(vis_raw.get("out_hidden_size", text.hidden_size)),
        tokens_per_second=int(vis_raw.get("tokens_per_second", 2)),
    )
    if vis_raw.get("hidden_act", "silu") != "silu" or text_raw.get("hidden_act", "silu") != "silu":
        raise ValueError("only hidden_act='silu' is supported (as in every published Qwen2.5-VL)")
    return Qwen2_5_VLConfig(
        text=text,
        vision=vision,
        image_token_id=int(raw.get("image_token_id", _TOKENS.image_pad)),
        video_token_id=int(raw.get("video_token_id", _TOKENS.video_pad)),
        vision_start_token_id=int(raw.get("vision_start_token_id", _TOKENS.vision_start)),
        vision_end_token_id=int(raw.get("vision_end_token_id", _TOKENS.vision_end)),
    )


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
        "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads,
        "num_key_value_heads": t.num_key_value_heads,
        "rms_norm_eps": t.rms_norm_eps,
        "rope_theta": t.rope_theta,
        "rope_scaling": rope,
        "max_position_embeddings": t.max_position_embeddings,
        "tie_word_embeddings": t.tie_word_embeddings,
        "use_sliding_window": False,
        "attention_dropout": 0.0,
        "image_token_id": cfg.image_token_id,
        "video_token_id": cfg.video_token_id,
        "vision_start_token_id": cfg.vision_start_token_id,
        "vision_end_token_id": cfg.vision_end_token_id,
        "vision_config": {
            "depth": v.depth, "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
            "num_heads": v.num_heads, "in_chans": v.in_channels, "in_channels": v.in_channels,
            "patch_size": v.patch_size, "temporal_patch_size": v.temporal_patch_size,
            "spatial_merge_size": v.spatial_merge_size, "window_size": v.window_size,
            "fullatt_block_indexes": list(v.fullatt_block_indexes), "out_hidden_size": v.out_hidden_size,
            "tokens_per_second": v.tokens_per_second, "hidden_act": "silu",
        },
    }


def as_dict(cfg: Qwen2_5_VLConfig) -> dict:
    """Plain nested dict (for logs and checkpoints' metadata)."""
    return asdict(cfg)
