"""The Qwen2.5-VL image-size rule: how an image is resized and how many LLM tokens it costs.

An image is resized so both sides are multiples of ``factor`` (28 = patch 14 x spatial merge 2)
with its area inside [min_pixels, max_pixels], keeping the aspect ratio as closely as rounding
allows. The ViT then sees (h/14) x (w/14) patches and the LLM sees one token per 28x28 pixels.
Every part of the pipeline (pool token counts, build, loader, eval contexts) uses these
functions, so all of them agree to the token.
"""

from __future__ import annotations

import math

PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
FACTOR = PATCH_SIZE * MERGE_SIZE  # 28
MIN_PIXELS = 56 * 56  # 3136, Qwen2.5-VL preprocessor_config.json
MAX_PIXELS = 28 * 28 * 16384  # 12,845,056, Qwen2.5-VL preprocessor_config.json
MAX_ASPECT_RATIO = 200


def smart_resize(
    height: int,
    width: int,
    factor: int = FACTOR,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> tuple[int, int]:
    """Return (height, width) after Qwen2.5-VL's resize: multiples of ``factor``, area in range.

    Raises ValueError for an aspect ratio above 200 (as Qwen's processor does).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got {max(height, width) / min(height, width):.1f}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def image_grid_thw(
    height: int, width: int, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> tuple[int, int, int]:
    """The ViT patch grid (t, h, w) of a still image of this size: t is 1, h and w in 14-px patches."""
    rh, rw = smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
    return 1, rh // PATCH_SIZE, rw // PATCH_SIZE


def image_token_count(
    height: int, width: int, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> int:
    """LLM tokens (``<|image_pad|>`` count) for a still image: one per 28x28 pixels after resize."""
    rh, rw = smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
    return (rh // FACTOR) * (rw // FACTOR)


def page_pixels(width_pt: float, height_pt: float, dpi: float) -> tuple[int, int]:
    """Pixel size (height, width) of a PDF page of width_pt x height_pt points rendered at ``dpi``.

    Matches pymupdf's ``page.get_pixmap(dpi=dpi)``, which rounds the scaled page rectangle.
    """
    scale = dpi / 72.0
    return round(height_pt * scale), round(width_pt * scale)
