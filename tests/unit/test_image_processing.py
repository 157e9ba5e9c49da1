"""Our image preprocessing against transformers' Qwen2VLImageProcessor on the same images."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from megatron_vlm.data.image_processing import process_images
from megatron_vlm.models.family import get_family

QWEN = get_family("qwen2_5_vl").image


def _encoded(h: int, w: int, mode: str, fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    # Smooth structure plus noise, so resampling is exercised on both edges and flat areas.
    arr[: h // 2] //= 2
    if mode == "RGBA":
        arr[: h // 3, :, 3] = 0  # fully transparent band: HF composites it onto white
    img = Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "h,w,mode,fmt,max_pixels",
    [
        (1584, 1224, "RGB", "PNG", 12_845_056),  # US-Letter at 144 DPI -> 1596x1232
        (300, 500, "RGB", "JPEG", 12_845_056),
        (57, 31, "L", "PNG", 12_845_056),  # below min_pixels: upscaled
        (900, 700, "RGB", "PNG", 200_000),  # above max_pixels: downscaled
        (56, 84, "RGB", "PNG", 12_845_056),  # already multiples of 28: no resize
        (1584, 1224, "L", "PNG", 12_845_056),  # a grey page, as the pool writes colourless pages
        (120, 90, "RGBA", "PNG", 12_845_056),  # transparency
    ],
)
def test_pixels_and_grid_equal_hf(h, w, mode, fmt, max_pixels):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    data = [_encoded(h, w, mode, fmt, seed=h + w), _encoded(w, h, mode, fmt, seed=h * w)]
    hf = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=max_pixels)
    ref = hf(images=[Image.open(io.BytesIO(d)) for d in data], return_tensors="pt")

    rule = QWEN.with_pixels(56 * 56, max_pixels)
    pixels, grids = process_images(data, rule)

    assert torch.equal(grids, ref["image_grid_thw"].to(torch.int64))
    assert pixels.shape == ref["pixel_values"].shape and pixels.shape[1] == rule.patch_dim
    torch.testing.assert_close(pixels, ref["pixel_values"].float(), rtol=1e-6, atol=1e-6)
    # One LLM token per 2x2 patches, as the family's image rule counts them.
    tokens = [int(g.prod()) // 4 for g in grids]
    assert tokens == [rule.token_count(h, w), rule.token_count(w, h)]


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown image backend"):
        process_images([_encoded(28, 28, "RGB", "PNG", 0)], QWEN, backend="cv2")


def test_default_rule_is_qwen2_5_vl_published_config(reference_dir):
    """An image of 11.2M pixels (above the old 10,035,200 cap, below Qwen2.5-VL's 12,845,056) keeps
    its size: the family's rule, and the pool's and the recipe's defaults (the family's), give what
    HF's Qwen2VLImageProcessor built from the published preprocessor_config.json gives."""
    import json

    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from megatron_vlm.data.pdf import PdfSettings
    from megatron_vlm.data.recipe import DataRecipe

    config = json.loads((reference_dir / "hf_configs/Qwen2.5-VL-7B-Instruct/preprocessor_config.json").read_text())
    hf = Qwen2VLImageProcessorPil(min_pixels=config["min_pixels"], max_pixels=config["max_pixels"])
    h, w = 3584, 3136  # 11,239,424 pixels, multiples of 28
    image = Image.new("L", (w, h), 200)
    ref_grid = [int(x) for x in hf(images=[image], return_tensors="pt")["image_grid_thw"][0]]
    assert ref_grid == [1, h // 14, w // 14]  # HF does not shrink it
    assert QWEN.token_count(h, w) == (h // 28) * (w // 28) == ref_grid[1] * ref_grid[2] // 4
    family = get_family("qwen2_5_vl")
    for rule in (QWEN, PdfSettings().image_rule(), DataRecipe().image_rule(family)):
        assert (rule.min_pixels, rule.max_pixels) == (config["min_pixels"], config["max_pixels"])
