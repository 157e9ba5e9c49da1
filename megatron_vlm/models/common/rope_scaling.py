"""Long-context scaling of an LLM's rotary embedding (YaRN) and its HF ``config.json`` form.

Shared by the families (Qwen2.5-VL, Qwen3-VL): the dataclass in their text configs, and the one
reader and writer of HF's ``rope_scaling`` / ``rope_parameters`` dict. The math on it lives with
the rope (``models/qwen2_5_vl/rope.py:yarn_inv_freq``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RopeScaling:
    """Optional long-context scaling of the LLM's mRoPE (the ViT's rope is never scaled)."""

    type: str = "none"
    """'none' or 'yarn' (Qwen's documented YaRN: factor 4 over 32768 original positions)."""
    factor: float = 1.0
    """Context extension factor s."""
    original_max_position_embeddings: int = 32768
    """Context the base model was trained for (YaRN's L)."""
    beta_fast: float = 32.0
    """YaRN: rotations per wavelength above which dims are kept (extrapolated)."""
    beta_slow: float = 1.0
    """YaRN: rotations per wavelength below which dims are interpolated by 1/s."""
    attention_factor: float | None = None
    """YaRN: cos/sin scale; None means HF's default 0.1 * ln(s) + 1."""


def rope_dict(text_raw: dict) -> dict:
    """The rope dict of an HF text config: ``rope_parameters`` (transformers 5) or ``rope_scaling``."""
    return dict(text_raw.get("rope_parameters") or text_raw.get("rope_scaling") or {})


def rope_scaling_from_hf(rope: dict, original_max_position_embeddings: int) -> RopeScaling:
    """RopeScaling from an HF rope dict; ValueError for a rope type we do not implement."""
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind in ("default", "mrope"):
        return RopeScaling()
    if kind != "yarn":
        raise ValueError(f"unsupported rope type {kind!r} (supported: default/mrope, yarn)")
    return RopeScaling(
        type="yarn",
        factor=float(rope["factor"]),
        original_max_position_embeddings=int(rope.get("original_max_position_embeddings", original_max_position_embeddings)),
        beta_fast=float(rope.get("beta_fast", 32.0)),
        beta_slow=float(rope.get("beta_slow", 1.0)),
        attention_factor=rope.get("attention_factor"),
    )


def rope_scaling_to_hf(scaling: RopeScaling) -> dict:
    """The scaling's entries of HF's rope dict ({'rope_type': 'default'} without scaling)."""
    if scaling.type != "yarn":
        return {"rope_type": "default"}
    out = {
        "type": "yarn", "rope_type": "yarn", "factor": scaling.factor,
        "original_max_position_embeddings": scaling.original_max_position_embeddings,
        "beta_fast": scaling.beta_fast, "beta_slow": scaling.beta_slow,
    }
    if scaling.attention_factor is not None:
        out["attention_factor"] = scaling.attention_factor
    return out
