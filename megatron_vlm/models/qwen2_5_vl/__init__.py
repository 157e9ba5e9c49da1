"""Qwen2.5-VL on Megatron-Core.

Modules: config (shapes, flavors, HF config.json), position_ids (mRoPE ids), rope, vision, specs,
model, weights. ``Qwen2_5_VLModel`` is importable from here; it is loaded lazily so that data code
importing ``position_ids`` does not pay for importing Megatron-Core.
"""


def __getattr__(name):
    if name in ("Qwen2_5_VLModel", "forward_batch"):
        from megatron_vlm.models.qwen2_5_vl import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
