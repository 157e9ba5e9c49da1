"""DALI (GPU decode + resize) against the PIL path: same grids, same pixels within resize rounding.

Skips cleanly without CUDA (tests/conftest.py) or without nvidia.dali installed.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from megatron_vlm.data.image_processing import decode_resize_dali, decode_resize_pil, process_images
from megatron_vlm.models.family import get_family

pytestmark = pytest.mark.gpu


def _page(h, w, fmt, seed):
    rng = np.random.default_rng(seed)
    arr = np.full((h, w, 3), 250, dtype=np.uint8)
    for _ in range(40):  # text-like dark bars on white, like a rendered page
        y, x = rng.integers(0, h - 8), rng.integers(0, w // 2)
        arr[y : y + 6, x : x + rng.integers(20, w // 2)] = rng.integers(0, 80)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.mark.parametrize("h,w,fmt", [(1596, 1232, "PNG"), (1584, 1224, "PNG"), (1584, 1224, "JPEG"), (700, 500, "JPEG")])
def test_dali_matches_pil_within_resize_rounding(h, w, fmt):
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    datas = [_page(h, w, fmt, s) for s in range(3)]
    rule = get_family("qwen2_5_vl").image
    pil = [decode_resize_pil(d, rule) for d in datas]
    dali = decode_resize_dali(datas, rule)
    for a, b in zip(pil, dali):
        assert a.shape == b.shape
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
        if (h, w) == (1596, 1232) and fmt == "PNG":
            assert diff.max() == 0  # no resize, lossless: identical decode
        else:
            # Different cubic kernels/rounding, and JPEG IDCT differences: a few levels at most.
            assert np.median(diff) <= 1 and np.percentile(diff, 99.9) <= 8
    p_pix, p_grid = process_images(datas, rule, backend="pil")
    d_pix, d_grid = process_images(datas, rule, backend="dali")
    assert torch.equal(p_grid, d_grid)
    assert (p_pix - d_pix).abs().mean() <= 2 / 255 / min(rule.image_std)


def test_dali_one_pipeline_on_this_rank_gpu():
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    from megatron_vlm.data import image_dali

    torch.cuda.init()
    datas = [_page(700, 500, "JPEG", s) for s in range(image_dali.MAX_BATCH + 3)]
    image_dali._DECODERS.clear()
    process_images(datas, get_family("qwen2_5_vl").image, backend="dali")
    key = (os.getpid(), torch.cuda.current_device())
    assert list(image_dali._DECODERS) == [key]
    first = image_dali._DECODERS[key]
    for _ in range(2):
        process_images(datas, get_family("qwen2_5_vl").image, backend="dali")
    assert list(image_dali._DECODERS) == [key] and image_dali._DECODERS[key] is first  # reused, not rebuilt
