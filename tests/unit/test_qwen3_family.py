"""The Qwen3-VL family (models/qwen3_vl/family.py, tokenizer.py) against the published files and HF.

Every constant is checked against ``../shared/reference/qwen3_vl`` (the preprocessor config, the
tokenizer config, the 8B config.json) or transformers' Qwen3-VL processor built from them.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from megatron_vlm.data import tokens
from megatron_vlm.data.image_processing import process_images
from megatron_vlm.models.qwen3_vl.family import FAMILY
from megatron_vlm.models.qwen3_vl.tokenizer import build_tokenizer


def _ref(reference_dir, name):
    return json.loads((reference_dir / "qwen3_vl" / name).read_text())


def test_image_rule_is_the_published_preprocessor(reference_dir):
    cfg = _ref(reference_dir, "preprocessor_config.json")
    rule = FAMILY.image
    assert (rule.patch_size, rule.merge_size, rule.temporal_patch_size) == (
        cfg["patch_size"], cfg["merge_size"], cfg["temporal_patch_size"])
    assert (rule.min_pixels, rule.max_pixels) == (cfg["size"]["shortest_edge"], cfg["size"]["longest_edge"])
    assert list(rule.image_mean) == cfg["image_mean"] and list(rule.image_std) == cfg["image_std"]
    assert rule.factor == 32  # one LLM token per 32x32 pixels (Qwen2.5-VL: 28)


@pytest.mark.parametrize("h,w", [(1584, 1224), (300, 200), (64, 5000), (5000, 4000), (32, 32), (1000, 1001)])
def test_token_count_equals_hf_smart_resize(h, w):
    """Below min_pixels (300x200, 32x32), above max_pixels (5000x4000), extreme aspect, a page."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    rule = FAMILY.image
    rh, rw = smart_resize(h, w, factor=32, min_pixels=rule.min_pixels, max_pixels=rule.max_pixels)
    assert rule.resize(h, w) == (rh, rw)
    assert rule.token_count(h, w) == (rh // 32) * (rw // 32)
    assert rule.grid_thw(h, w) == (1, rh // 16, rw // 16)


def _encoded(h, w, mode, fmt, seed):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(h, w, 3 if mode == "RGB" else 1), dtype=np.uint8)
    arr[: h // 2] //= 2
    buf = io.BytesIO()
    Image.fromarray(arr.squeeze(-1) if mode == "L" else arr, mode).save(buf, format=fmt)
    return buf.getvalue()


def test_pixels_and_grids_equal_hf_processor(qwen3_processor_dir):
    """The loader's preprocessing with the family's rule gives HF's pixel values and grids: exactly
    those of HF's PIL processor built from the published config; within two 8-bit levels of the
    published (torchvision) processor, whose bicubic resize rounds differently (measured: 0.4% of
    values differ on these images, by at most 2/255/std)."""
    from transformers import AutoImageProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    data = [_encoded(1584, 1224, "L", "PNG", 0), _encoded(300, 200, "RGB", "JPEG", 1), _encoded(96, 700, "RGB", "PNG", 2)]
    images = [Image.open(io.BytesIO(d)) for d in data]
    pixels, grids = process_images(data, FAMILY.image)
    assert pixels.shape[1] == FAMILY.image.patch_dim == 3 * 2 * 16 * 16
    pil = Qwen2VLImageProcessorPil.from_pretrained(qwen3_processor_dir)(images=images, return_tensors="pt")
    assert torch.equal(grids, pil["image_grid_thw"].to(torch.int64))
    torch.testing.assert_close(pixels, pil["pixel_values"].float(), rtol=1e-6, atol=1e-6)
    published = AutoImageProcessor.from_pretrained(qwen3_processor_dir)(images=images, return_tensors="pt")
    assert torch.equal(grids, published["image_grid_thw"].to(torch.int64))
    two_levels = 2 / 255 / FAMILY.image.image_std[0]
    assert float((pixels - published["pixel_values"].float()).abs().max()) <= two_levels + 1e-6


def test_special_tokens_are_the_tokenizer_and_model_configs(reference_dir):
    added = {t["content"]: int(i) for i, t in _ref(reference_dir, "tokenizer_config.json")["added_tokens_decoder"].items()}
    t = FAMILY.tokens
    assert (t.image_pad, t.video_pad, t.vision_start, t.vision_end) == (
        added["<|image_pad|>"], added["<|video_pad|>"], added["<|vision_start|>"], added["<|vision_end|>"])
    assert t.pad == added[_ref(reference_dir, "tokenizer_config.json")["pad_token"]]
    model = _ref(reference_dir, "Qwen3-VL-8B-Instruct/config.json")
    assert (t.image_pad, t.video_pad, t.vision_start, t.vision_end) == (
        model["image_token_id"], model["video_token_id"], model["vision_start_token_id"], model["vision_end_token_id"])
    assert FAMILY.hf_model_type == model["model_type"]


def test_built_tokenizer(reference_dir, qwen3_tokenizer_dir):
    """Qwen2.5-VL's vocabulary and merges (same encodings on text), plus the four added tokens."""
    ours = tokens.load_tokenizer(qwen3_tokenizer_dir)
    qwen25 = tokens.load_tokenizer(reference_dir / "qwen2_5_vl_tokenizer")
    texts = ["Total revenue in 2021 was $4,512.7M (see Table 3).", "  leading spaces\n\ttabs\r\nand lines  ",
             "Ünïcödé, 中文文本, emoji 🙂, ℃ ≤ ≥", "<|im_start|>user\nhi<|im_end|>\n", "x" * 300 + " 0123456789"]
    for text in texts:
        assert ours.encode(text, add_special_tokens=False).ids == qwen25.encode(text, add_special_tokens=False).ids
    added = _ref(reference_dir, "tokenizer_config.json")["added_tokens_decoder"]
    new = {int(i): t["content"] for i, t in added.items() if int(i) > 151664}
    assert new == {151665: "<tool_response>", 151666: "</tool_response>", 151667: "<think>", 151668: "</think>"}
    for i, content in new.items():
        assert ours.encode(f"a{content}b", add_special_tokens=False).ids == [64, i, 65]  # 'a', the token, 'b'
        assert qwen25.token_to_id(content) is None
    assert ours.get_vocab_size() == max(int(i) for i in added) + 1


def test_build_tokenizer_refuses_bad_paths(reference_dir, qwen3_tokenizer_dir, tmp_path):
    with pytest.raises(FileExistsError):
        build_tokenizer(reference_dir, qwen3_tokenizer_dir)
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        build_tokenizer(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("num_images", [0, 1, 3])
def test_chat_text_equals_the_chat_template(qwen3_processor_dir, num_images):
    """tokens.render_text in this family's format is HF's chat template output: no system turn."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(qwen3_processor_dir)
    question, answer = "What is the total on page 3?", " 4,512 dollars."
    content = [{"type": "image"}] * num_images + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    ref = processor.apply_chat_template(messages, tokenize=False)
    text, a0, a1 = tokens.render_text(FAMILY, question, answer, num_images)
    assert text == ref
    assert not text.startswith("<|im_start|>system")
    assert text[a0:a1] == answer + "<|im_end|>"
