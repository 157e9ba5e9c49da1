"""What every family's model config shares: the ViT and LLM shape fields, the whole-model config
with its special token ids, and the parts of the HF ``config.json`` bridge that read and write them.

A family's ``config.py`` subclasses :class:`VisionShape`, :class:`TextShape` and :class:`VLConfig`,
adds the fields and architecture facts that are its own, and gives defaults to the fields every
flavor of it shares. Each class reads its fields from an HF ``config.json`` (``from_hf``, passing the
family's own fields through) and writes them back (``hf_fields``); the family's ``from_hf_config``
and ``to_hf_config`` read and write the rest and place the parts in its layout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from megatron_vlm.data.image_rule import ImageRule
from megatron_vlm.models.common.rope_scaling import RopeScaling, rope_dict
from megatron_vlm.models.family import SpecialTokens


@dataclass(kw_only=True)
class VisionShape:
    """A ViT: patch embedding, blocks, and the merger of merge x merge patches into the LLM width."""

    depth: int
    """Number of ViT blocks."""
    hidden_size: int
    """ViT width."""
    intermediate_size: int
    """MLP width (of gate and of up each where the family's MLP is gated), with bias."""
    num_heads: int
    """Attention heads (no GQA in the ViT)."""
    in_channels: int
    """Image channels."""
    patch_size: int
    """Spatial patch size in pixels."""
    temporal_patch_size: int
    """Frames per patch (a still image is repeated to fill it)."""
    spatial_merge_size: int
    """The merger joins merge x merge patches into one LLM token."""
    out_hidden_size: int
    """Merger output width; equals the LLM hidden size."""
    rope_theta: float = 10000.0
    """Base of the ViT's 2D rotary embedding."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch: channels x temporal patch x patch x patch (1176 for patch 14)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @classmethod
    def from_hf(cls, vis_raw: dict, default: VisionShape, text_hidden: int, **own) -> VisionShape:
        """This class from a ``vision_config``: the fields above read here (``default`` fills what it
        leaves out, the merger's width defaults to the LLM's ``text_hidden``; ``rope_theta`` is fixed
        in HF), the family's own passed in ``own``."""
        return cls(
            depth=int(vis_raw.get("depth", default.depth)),
            hidden_size=int(vis_raw.get("hidden_size", default.hidden_size)),
            intermediate_size=int(vis_raw.get("intermediate_size", default.intermediate_size)),
            num_heads=int(vis_raw.get("num_heads", default.num_heads)),
            in_channels=int(vis_raw.get("in_channels", vis_raw.get("in_chans", default.in_channels))),
            patch_size=int(vis_raw.get("patch_size", default.patch_size)),
            temporal_patch_size=int(vis_raw.get("temporal_patch_size", default.temporal_patch_size)),
            spatial_merge_size=int(vis_raw.get("spatial_merge_size", default.spatial_merge_size)),
            out_hidden_size=int(vis_raw.get("out_hidden_size", text_hidden)),
            **own,
        )

    def hf_fields(self) -> dict:
        """The fields above but ``rope_theta`` under their ``vision_config`` names."""
        return {
            "depth": self.depth, "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
            "num_heads": self.num_heads, "in_channels": self.in_channels, "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size, "spatial_merge_size": self.spatial_merge_size,
            "out_hidden_size": self.out_hidden_size,
        }


@dataclass(kw_only=True)
class TextShape:
    """A decoder-only LLM with GQA, RMSNorm, a SwiGLU MLP and mRoPE."""

    vocab_size: int
    """Rows of the input embedding (and of the output layer)."""
    hidden_size: int
    """LLM width."""
    intermediate_size: int
    """SwiGLU MLP width (gate and up each)."""
    num_hidden_layers: int
    """Number of decoder layers."""
    num_attention_heads: int
    """Query heads."""
    num_key_value_heads: int
    """Key/value heads (GQA groups)."""
    rms_norm_eps: float = 1e-6
    """Epsilon of every RMSNorm of the LLM."""
    rope_theta: float
    """mRoPE base."""
    mrope_section: list[int]
    """Rotary frequency pairs given to the t, h, w axes (sums to head_dim / 2)."""
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    """Optional YaRN scaling on top of rope_theta."""
    max_position_embeddings: int
    """Context length the family publishes (HF's ``max_position_embeddings``)."""
    tie_word_embeddings: bool = False
    """The output layer is the input embedding (small flavors); False: a weight of its own."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, raw: dict, text_raw: dict, default: TextShape, **own) -> TextShape:
        """This class from a ``config.json`` ``raw`` and its text part ``text_raw``: the fields above
        but ``rope_scaling`` read here (``default`` fills what it leaves out), the family's own and
        ``rope_scaling`` passed in ``own``."""
        rope = rope_dict(text_raw)
        n_heads = int(text_raw["num_attention_heads"])
        return cls(
            vocab_size=int(text_raw["vocab_size"]),
            hidden_size=int(text_raw["hidden_size"]),
            intermediate_size=int(text_raw["intermediate_size"]),
            num_hidden_layers=int(text_raw["num_hidden_layers"]),
            num_attention_heads=n_heads,
            num_key_value_heads=int(text_raw.get("num_key_value_heads") or n_heads),
            rms_norm_eps=float(text_raw.get("rms_norm_eps", default.rms_norm_eps)),
            rope_theta=float(rope.get("rope_theta", text_raw.get("rope_theta", default.rope_theta))),
            mrope_section=list(rope.get("mrope_section", default.mrope_section)),
            max_position_embeddings=int(text_raw.get("max_position_embeddings", default.max_position_embeddings)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", text_raw.get("tie_word_embeddings", False))),
            **own,
        )

    def hf_fields(self) -> dict:
        """The fields above but ``rope_scaling`` under their HF names."""
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
        }


@dataclass(kw_only=True)
class VLConfig:
    """The whole model plus the special token ids the model (not only the tokenizer) relies on."""

    text: TextShape
    """The LLM (the family's TextConfig)."""
    vision: VisionShape
    """The ViT (the family's VisionConfig)."""
    image_token_id: int
    """``<|image_pad|>``: the LLM positions the merged image embeddings replace."""
    video_token_id: int
    """``<|video_pad|>``: the same for video frame groups."""
    vision_start_token_id: int
    """``<|vision_start|>`` before each image or video."""
    vision_end_token_id: int
    """``<|vision_end|>`` after each image or video."""

    def replace(self, **text_or_vision) -> VLConfig:
        """A copy (of the same class) with ``text=dict(...)`` / ``vision=dict(...)`` fields changed."""
        text = replace(self.text, **text_or_vision.pop("text", {}))
        vision = replace(self.vision, **text_or_vision.pop("vision", {}))
        return replace(self, text=text, vision=vision, **text_or_vision)

    @classmethod
    def from_hf(cls, raw: dict, text: TextShape, vision: VisionShape, tokens: SpecialTokens) -> VLConfig:
        """This class from its parts and the token ids of a ``config.json`` (the family's ``tokens``
        where it has none)."""
        return cls(
            text=text,
            vision=vision,
            image_token_id=int(raw.get("image_token_id", tokens.image_pad)),
            video_token_id=int(raw.get("video_token_id", tokens.video_pad)),
            vision_start_token_id=int(raw.get("vision_start_token_id", tokens.vision_start)),
            vision_end_token_id=int(raw.get("vision_end_token_id", tokens.vision_end)),
        )

    def hf_fields(self) -> dict:
        """The token ids under their HF names (the family's ``to_hf_config`` adds its parts')."""
        return {"image_token_id": self.image_token_id, "video_token_id": self.video_token_id,
                "vision_start_token_id": self.vision_start_token_id, "vision_end_token_id": self.vision_end_token_id}


def as_dict(cfg: VLConfig) -> dict:
    """Plain nested dict (for logs and checkpoints' metadata)."""
    return asdict(cfg)


def patch_fields(image: ImageRule) -> dict:
    """The ViT fields a family's image rule fixes, as keywords of its VisionConfig."""
    return dict(in_channels=image.in_channels, patch_size=image.patch_size,
                temporal_patch_size=image.temporal_patch_size, spatial_merge_size=image.merge_size)


