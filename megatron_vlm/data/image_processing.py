"""Qwen image preprocessing: decode, resize, normalise, patchify to rows of ``rule.patch_dim`` values.

The steps are those of transformers' ``Qwen2VLImageProcessor`` (PIL path), with the constants of
a model family's :class:`~megatron_vlm.data.image_rule.ImageRule`: convert to RGB, resize with
bicubic filtering to the size ``rule.resize`` gives (multiples of ``rule.factor`` with the area
inside [min_pixels, max_pixels]), scale to [0, 1], normalise with the family's mean/std, and cut
into patch x patch squares ordered so each merge x merge group of patches (one LLM token) is
contiguous, each patch repeated over the temporal patch size. For Qwen2.5-VL a row holds
3 * 2 * 14 * 14 = 1176 values, for Qwen3-VL 3 * 2 * 16 * 16 = 1536.

Two decode/resize backends sit behind ``backend=``: ``"pil"`` (CPU, default, everywhere) and
``"dali"`` (NVIDIA DALI: GPU JPEG/PNG decode and resize on the rank's GPU, ``image_dali``), imported
only when asked for. Both hand uint8 HWC pixels to the same normalise/patchify step. A failure of
the backend itself raises ``ImageBackendError`` (fatal in the loader); any other exception is
about the image (a bad sample).
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
import torch

from megatron_vlm.data.image_rule import ImageRule

BACKENDS = ("pil", "dali")


class ImageBackendError(RuntimeError):
    """The image backend itself failed (not installed, no GPU, a pipeline that cannot build or run),
    as opposed to one bad image. The loader stops on it with this message; every other exception
    from decoding is a bad sample, counted and skipped."""


class RowCountMismatch(ValueError):
    """The images give a different number of patch rows than the ``out`` buffer was sized for."""


@lru_cache(maxsize=8)
def _normalise_lut(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """[3, 256] float32: the normalised value of each uint8 level per channel.

    Computed as the HF processor does (rescale in float64 then cast, then (x - mean) / std), so a
    table lookup gives its values without per-pixel float math.
    """
    levels = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(mean, dtype=np.float32)[:, None]
    std = np.asarray(std, dtype=np.float32)[:, None]
    return ((levels[None, :] - mean) / std).astype(np.float32)


def decode_resize_pil(data: bytes, rule: ImageRule) -> np.ndarray:
    """Decode image bytes and resize them as Qwen does; returns uint8 [H, W, 3] (H, W multiples of rule.factor).

    Transparency is composited onto white, as transformers' ``convert_to_rgb`` does. A grey
    page is resized in one channel and then copied to three, which gives the same bytes as
    resizing its RGB copy (PIL resizes channels independently) at a third of the cost.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if "A" in img.getbands() or img.info.get("transparency") is not None:
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        elif img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        h, w = rule.resize(img.height, img.width)
        if (h, w) != (img.height, img.width):
            img = img.resize((w, h), resample=Image.Resampling.BICUBIC)
        if img.mode == "L":
            return np.repeat(np.array(img, dtype=np.uint8)[:, :, None], 3, axis=2)
        return np.array(img, dtype=np.uint8)  # writable: torch refuses read-only views


def decode_resize_dali(datas: list[bytes], rule: ImageRule, device_id: int | None = None) -> list[np.ndarray]:
    """Decode and resize on the GPU with NVIDIA DALI; returns uint8 [H, W, 3] arrays like the PIL path.

    Sizes come from each image's header, so the output size is exactly the PIL path's; pixel values
    agree with PIL's bicubic to within the resize's rounding. ``device_id``: this rank's GPU
    (default ``image_dali.rank_device()``). Pipelines, devices and failures: ``image_dali``.
    """
    from megatron_vlm.data.image_dali import decode_resize_to

    sizes = [rule.resize(*_header_size(d)) for d in datas]
    return decode_resize_to(datas, sizes, device_id)


def _header_size(data: bytes) -> tuple[int, int]:
    """(height, width) from an image's header without decoding its pixels."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.height, img.width


def patchify(
    pixels_HWC: np.ndarray | torch.Tensor, rule: ImageRule, dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Normalise and patchify one resized uint8 image; returns (pixel rows [gh*gw, patch_dim], [1, gh, gw]).

    ``out`` (float32, contiguous, [gh*gw, rule.patch_dim]) receives the rows without an extra copy.
    """
    x = pixels_HWC.numpy() if isinstance(pixels_HWC, torch.Tensor) else np.asarray(pixels_HWC)
    h, w, c = x.shape
    if c != rule.in_channels or h % rule.factor or w % rule.factor:
        raise ValueError(f"patchify needs RGB with sides multiple of {rule.factor}, got {tuple(x.shape)}")
    gh, gw = h // rule.patch_size, w // rule.patch_size
    m, p, tp, dim = rule.merge_size, rule.patch_size, rule.temporal_patch_size, rule.patch_dim
    # [gh/m, m, p, gw/m, m, p, C] -> [gh/m, gw/m, m, m, C, p, p]: each merged 2x2 group contiguous.
    x = np.ascontiguousarray(x.reshape(gh // m, m, p, gw // m, m, p, c).transpose(0, 3, 1, 4, 6, 2, 5))
    x = x.reshape(gh * gw, c, p * p)
    if out is None:
        buf = np.empty((gh * gw, c, tp, p * p), dtype=np.float32)
    else:
        if out.shape != (gh * gw, dim) or out.dtype != torch.float32 or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous float32 [{gh * gw}, {dim}] tensor")
        buf = out.numpy().reshape(gh * gw, c, tp, p * p)
    lut = _normalise_lut(tuple(rule.image_mean), tuple(rule.image_std))
    for ch in range(c):  # table lookup per channel on uint8, then the temporal copies
        buf[:, ch, :] = lut[ch][x[:, ch]][:, None, :]
    rows = out if out is not None else torch.from_numpy(buf.reshape(gh * gw, dim))
    return (rows if dtype == torch.float32 else rows.to(dtype)), [1, gh, gw]


def process_images(
    datas: list[bytes],
    rule: ImageRule,
    backend: str = "pil",
    dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
    device_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoded images -> (pixel_values [P, patch_dim], image_grid_thw [n, 3] int64), as Qwen's processor
    gives with ``rule`` (a family's image rule, min/max pixels included).

    With ``out`` (float32 [P, patch_dim], P known in advance) the rows are written into it and it is returned.
    ``device_id``: the GPU of the ``dali`` backend. A broken backend raises ``ImageBackendError``;
    anything else raised is about the images.
    """
    if backend == "pil":
        arrays = [decode_resize_pil(d, rule) for d in datas]
    elif backend == "dali":
        arrays = decode_resize_dali(datas, rule, device_id) if datas else []
    else:
        raise ValueError(f"unknown image backend {backend!r}; choose from {BACKENDS}")
    rows, grids, at = [], [], 0
    for a in arrays:
        n = (a.shape[0] // rule.patch_size) * (a.shape[1] // rule.patch_size)
        if out is not None and at + n > out.shape[0]:
            raise RowCountMismatch(f"out has {out.shape[0]} rows, the images need more")
        r, g = patchify(a, rule, dtype if out is None else torch.float32, None if out is None else out[at : at + n])
        rows.append(r)
        grids.append(g)
        at += n
    grid_thw = torch.tensor(grids, dtype=torch.int64).reshape(-1, 3)
    if out is not None:
        if at != out.shape[0]:
            raise RowCountMismatch(f"out has {out.shape[0]} rows, the images give {at}")
        return out, grid_thw
    pixel_values = torch.cat(rows) if len(rows) > 1 else rows[0] if rows else torch.zeros(0, rule.patch_dim, dtype=dtype)
    return pixel_values, grid_thw
