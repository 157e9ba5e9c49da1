"""Page images as plain 8-bit PNGs, byte for byte the same on every run and in every process.

`png_bytes(pixels)` is the pool's one PNG writer (docs/formats.md section 1); `is_grey(rgb)` says
whether an RGB render can be stored as 8-bit grey without changing a pixel. Only numpy and zlib
are imported here (no pymupdf), so a fresh process loads this module quickly.

Deflate is the standard library's zlib at level 1: its output is a function of the input, the
level and the zlib version alone (its window and hash tables start cleared). ISA-L (the `isal`
package), used before, is ~9x faster (2 vs 19 ms for a 144-DPI page) but does not promise equal
output for equal input; with it, pool runs with --workers 2 gave different PNG bytes for the same
pixels in about 1 process in 30 (issue 18; the cause inside it was not pinned down). Next to the
layout model (~0.5 s a page) the cost of zlib is small.
"""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache

_GREY_STEP = 3 << 16  # bytes of RGB samples checked at a time (a multiple of 3)
DEFLATE_LEVEL = 1


@lru_cache(maxsize=1)
def _grey_mask():
    import numpy as np

    return np.tile(np.array([255, 255, 0], np.uint8), _GREY_STEP // 3)


def is_grey(rgb_HWC) -> bool:
    """True when R == G == B at every pixel of a C-contiguous uint8 [H, W, 3] array.

    Byte i of the samples XOR byte i+1 is R^G, G^B, then B^R of the next pixel (masked out);
    contiguous XOR/AND/any run at memory speed, about twice as fast as comparing channel views.
    Stops at the first block with colour.
    """
    import numpy as np

    flat = rgb_HWC.reshape(-1)
    last, mask = flat.size - 1, _grey_mask()
    for start in range(0, last, _GREY_STEP):
        stop = min(start + _GREY_STEP, last)
        diff = np.bitwise_xor(flat[start:stop], flat[start + 1 : stop + 1])
        np.bitwise_and(diff, mask[: stop - start], out=diff)
        if diff.any():
            return False
    return True


def png_bytes(pixels) -> bytes:
    """A PNG of a uint8 [H, W] (grey) or [H, W, 3] (RGB) array: filter 0 on every row, one IDAT.

    Rendered pages are mostly flat background, which deflate compresses well without PNG's
    per-row filters; choosing a filter per row (as Pillow does) costs more than the deflate.
    """
    import numpy as np

    h, w = pixels.shape[:2]
    c = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = np.empty((h, 1 + w * c), np.uint8)
    rows[:, 0] = 0  # filter type None
    rows[:, 1:] = pixels.reshape(h, w * c)

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(tag)) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)  # 8 bits, grey or RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, DEFLATE_LEVEL)) + chunk(b"IEND", b"")
