"""The eval for Qwen3-VL: the in-process HF backend reads the family from config.json and feeds a
Qwen3-VL checkpoint what HF's Qwen3-VL processor would (ids, image marks, pixels), so the logits
are the processor's; the prompt has no system turn (the 8B chat template)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from megatron_vlm.models.qwen3_vl.family import FAMILY


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory, qwen3_processor_dir):
    """A random tiny Qwen3-VL (DeepStack on) saved with save_pretrained, beside the processor files."""
    import shutil

    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    config = Qwen3VLConfig(
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
                       "patch_size": FAMILY.image.patch_size, "spatial_merge_size": FAMILY.image.merge_size,
                       "temporal_patch_size": FAMILY.image.temporal_patch_size, "num_position_embeddings": 16,
                       "deepstack_visual_indexes": [0], "initializer_range": 0.5},
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 151936, "initializer_range": 0.5,
                     "rope_scaling": {"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True}},
        image_token_id=FAMILY.tokens.image_pad, video_token_id=FAMILY.tokens.video_pad,
        vision_start_token_id=FAMILY.tokens.vision_start, vision_end_token_id=FAMILY.tokens.vision_end,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("q3eval") / "tiny"
    Qwen3VLForConditionalGeneration(config).save_pretrained(path)
    for f in qwen3_processor_dir.iterdir():
        shutil.copyfile(f, path / f.name)
    return path


def test_hf_backend_feeds_qwen3_what_its_processor_does(tiny_qwen3):
    from transformers import AutoProcessor

    from megatron_vlm.eval import prompts
    from megatron_vlm.eval.backends import HFBackend

    backend = HFBackend(tiny_qwen3, device="cpu", max_new_tokens=3)
    assert backend.inputs.family is FAMILY
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((300, 232), (128, 420))]
    prompt = prompts.default_prompt("What is on the second page?", len(images))
    ours = backend.inputs.encode(prompt, images)
    processor = AutoProcessor.from_pretrained(tiny_qwen3)
    text = processor.apply_chat_template(prompts.chat_messages(prompt, lambda i: {"type": "image"}), tokenize=False,
                                         add_generation_prompt=True)
    assert not text.startswith("<|im_start|>system")
    ref = processor(text=[text], images=images, return_tensors="pt")
    assert torch.equal(ours["input_ids"], ref["input_ids"])
    assert torch.equal(ours["mm_token_type_ids"], ref["mm_token_type_ids"])
    assert torch.equal(ours["image_grid_thw"], ref["image_grid_thw"])
    assert torch.equal(ours["pixel_values"], ref["pixel_values"])  # the same image processor class
    with torch.no_grad():
        torch.testing.assert_close(backend.model(**ours).logits, backend.model(**ref).logits, rtol=1e-5, atol=1e-5)
    assert isinstance(backend.generate(prompt, images), str)
