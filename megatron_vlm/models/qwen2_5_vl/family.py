"""The Qwen2.5-VL family: image rule, special tokens and chat format (see models/family.py).

Values from the published ``preprocessor_config.json`` (patch 14, merge 2, temporal 2, 3,136 ..
12,845,056 pixels, OpenAI-CLIP mean/std), the tokenizer's added tokens, and the chat template,
which adds the system turn "You are a helpful assistant." when none is given.
"""

from megatron_vlm.data.image_rule import ImageRule
from megatron_vlm.models.family import ChatFormat, ModelFamily, SpecialTokens

FAMILY = ModelFamily(
    name="qwen2_5_vl",
    hf_model_type="qwen2_5_vl",
    image=ImageRule(
        patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=3136, max_pixels=12_845_056,
        image_mean=(0.48145466, 0.4578275, 0.40821073), image_std=(0.26862954, 0.26130258, 0.27577711),
    ),
    tokens=SpecialTokens(image_pad=151655, video_pad=151656, vision_start=151652, vision_end=151653, pad=151643),
    chat=ChatFormat(version="qwen2.5-vl-chat-v1", system="You are a helpful assistant."),
)
