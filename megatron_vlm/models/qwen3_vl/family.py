"""The Qwen3-VL family: image rule, special tokens and chat format (see models/family.py).

Values from the published ``preprocessor_config.json`` (patch 16, merge 2, temporal 2, so one LLM
token per 32x32 pixels; 65,536 .. 16,777,216 pixels; mean/std 0.5), the tokenizer's added tokens
(the Qwen2.5-VL ids, plus four text tokens the data never uses), and the 8B chat template, which,
unlike Qwen2.5-VL's, adds no system turn when none is given. Video frames carry text timestamps
(``<1.0 seconds>`` before each frame's vision block); ``position_ids`` splits a video into frames.
"""

from megatron_vlm.data.image_rule import ImageRule
from megatron_vlm.models.family import ChatFormat, ModelFamily, SpecialTokens

FAMILY = ModelFamily(
    name="qwen3_vl",
    hf_model_type="qwen3_vl",
    image=ImageRule(
        patch_size=16, merge_size=2, temporal_patch_size=2, min_pixels=65_536, max_pixels=16_777_216,
        image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
    ),
    tokens=SpecialTokens(image_pad=151655, video_pad=151656, vision_start=151652, vision_end=151653, pad=151643),
    chat=ChatFormat(version="qwen3-vl-chat-v1", system=None),
)
