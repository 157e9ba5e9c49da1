"""Qwen3-VL on Megatron-Core, the second family (beside models/qwen2_5_vl/, sharing models/common/).

Modules: config (shapes, flavors, HF config.json), family (image rule, tokens, chat format),
position_ids (mRoPE ids), vision (ViT with DeepStack taps), model. ``Qwen3VLModel`` is importable
from here; it is loaded lazily so that data code importing ``config`` or ``position_ids`` does not
pay for importing Megatron-Core.
"""


def __getattr__(name):
    if name in ("Qwen3VLModel", "forward_batch"):
        from megatron_vlm.models.qwen3_vl import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
