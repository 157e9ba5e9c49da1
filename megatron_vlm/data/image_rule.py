"""The Qwen image-size rule: how an image is resized and how many LLM tokens it costs.

    rule = get_family("qwen2_5_vl").image          # each model family owns its rule (models/family.py)
    rule.resize(1584, 1224)                        # -> (1596, 1232): multiples of rule.factor
    rule.grid_thw(1584, 1224), rule.token_count(1584, 1224)

An image is resized so both sides are multiples of ``factor`` (patch x spatial merge: 28 for
Qwen2.5-VL, 32 for Qwen3-VL) with its area inside [min_pixels, max_pixels], keeping the aspect
ratio as closely as rounding allows (transformers' ``smart_resize``). The ViT then sees
(h/patch) x (w/patch) patches and the LLM one token per factor x factor pixels. Every part of the
pipeline (pool token counts, build, loader, eval contexts) uses the family's rule, so all of
them agree to the token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

MAX_ASPECT_RATIO = 200


@dataclass(frozen=True)
class ImageRule:
    """A family's image preprocessing constants (its ``preprocessor_config.json``) and the math on them."""

    patch_size: int
    """ViT patch side in pixels."""
    merge_size: int
    """Spatial merge: merge x merge patches become one LLM token."""
    temporal_patch_size: int
    """Frames per patch (a still image is repeated to fill it)."""
    min_pixels: int
    """Smallest resized area."""
    max_pixels: int
    """Largest resized area."""
    image_mean: tuple[float, float, float]
    """Per-channel mean subtracted after scaling to [0, 1]."""
    image_std: tuple[float, float, float]
    """Per-channel std divided by after the mean."""
    in_channels: int = 3
    """Image channels."""

    @property
    def factor(self) -> int:
        """Resized sides are multiples of this (one LLM token per factor x factor pixels)."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch row: channels x temporal patch x patch x patch."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    def with_pixels(self, min_pixels: int | None = None, max_pixels: int | None = None) -> ImageRule:
        """This rule with other area limits (None keeps the family's)."""
        return replace(
            self,
            min_pixels=self.min_pixels if min_pixels is None else int(min_pixels),
            max_pixels=self.max_pixels if max_pixels is None else int(max_pixels),
        )

    def resize(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize: multiples of ``factor``, area in [min_pixels, max_pixels].

        Raises ValueError for an aspect ratio above 200 (as Qwen's processor does).
        """
        factor = self.factor
        if height <= 0 or width <= 0:
            raise ValueError(f"image size must be positive, got {height}x{width}")
        if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
            raise ValueError(
                f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got {max(height, width) / min(height, width):.1f}"
            )
        h_bar = round(height / factor) * factor
        w_bar = round(width / factor) * factor
        if h_bar * w_bar > self.max_pixels:
            beta = math.sqrt((height * width) / self.max_pixels)
            h_bar = max(factor, math.floor(height / beta / factor) * factor)
            w_bar = max(factor, math.floor(width / beta / factor) * factor)
        elif h_bar * w_bar < self.min_pixels:
            beta = math.sqrt(self.min_pixels / (height * width))
            h_bar = math.ceil(height * beta / factor) * factor
            w_bar = math.ceil(width * beta / factor) * factor
        return h_bar, w_bar

    def grid_thw(self, height: int, width: int) -> tuple[int, int, int]:
        """The ViT patch grid (t, h, w) of a still image of this size: t is 1, h and w in patches."""
        rh, rw = self.resize(height, width)
        return 1, rh // self.patch_size, rw // self.patch_size

    def token_count(self, height: int, width: int) -> int:
        """LLM tokens (``<|image_pad|>`` count) of a still image: one per factor x factor pixels after resize."""
        rh, rw = self.resize(height, width)
        return (rh // self.factor) * (rw // self.factor)

    def grid_tokens(self, grid_thw) -> int:
        """LLM tokens of a ViT grid (t, h, w): t * h * w / merge^2."""
        t, h, w = (int(x) for x in grid_thw)
        return t * h * w // self.merge_size**2


def page_pixels(width_pt: float, height_pt: float, dpi: float) -> tuple[int, int]:
    """Pixel size (height, width) of a PDF page of width_pt x height_pt points rendered at ``dpi``.

    Matches pymupdf's ``page.get_pixmap(dpi=dpi)``, which rounds the scaled page rectangle.
    """
    scale = dpi / 72.0
    return round(height_pt * scale), round(width_pt * scale)
