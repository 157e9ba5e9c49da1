"""HF <-> Megatron checkpoints: the name/layout map (hf_names) and, later, on-disk conversion."""

from megatron_vlm.checkpoint.hf_names import detect_layout, hf_to_mcore, mcore_to_hf

__all__ = ["detect_layout", "hf_to_mcore", "mcore_to_hf"]
