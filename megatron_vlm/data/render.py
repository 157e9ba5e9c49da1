"""Drawing a PDF page once: what it paints (a probe over its display list), its pixels at a DPI,
and the stored image bytes (PNG through `png.png_bytes`, or JPEG).

A page is interpreted once into a display list; `probe_paints` walks it for two facts (is every
paint grey-safe; is any vector path painted), `render` draws it, straight in grey when the probe
proved that gives the RGB render's pixels, and `encode` stores it as 8-bit grey whenever the
render has no colour (exactly R == G == B), else RGB.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import pymupdf

from megatron_vlm.data.png import is_grey, png_bytes


@lru_cache(maxsize=1)
def _paint_probe():
    """The class of a MuPDF device that only listens to painting, or None when this pymupdf lacks
    the low-level device API. It records two things about a page:

    - paths: whether any vector path is painted (without one there is no ruled table to look for);
    - grey: whether every paint is grey-safe, i.e. black or white in a grey or RGB colour space, or
      an image in a grey colour space. Those give the same bytes in a grey and in an RGB render.
      Mid greys do not (anti-aliased edges of 0.4 grey text differ by one level; see
      tests/unit/test_pdf.py), so they, other colours, shadings, images in other colour spaces and
      Type3 glyphs (whose procedures may paint in colour) all leave the page unproven.

    Clips, groups and masks paint nothing of their own. MuPDF prints and swallows exceptions raised
    in callbacks, so each callback catches its own and answers "not grey".
    """
    m = pymupdf.mupdf
    if not all(hasattr(m, name) for name in ("FzDevice2", "floats_getitem", "ll_fz_font_t3_procs")):
        return None

    class PaintProbe(m.FzDevice2):
        def __init__(self):
            super().__init__()
            self.grey, self.paths = True, False
            for name in ("fill_path", "stroke_path", "fill_text", "stroke_text", "fill_shade", "fill_image", "fill_image_mask"):
                getattr(self, "use_virtual_" + name)()

        def _colour(self, colorspace, color):
            try:
                if self.grey:
                    v = m.floats_getitem(color, 0)
                    if m.ll_fz_colorspace_is_gray(colorspace):
                        self.grey = v in (0.0, 1.0)
                    else:
                        self.grey = (bool(m.ll_fz_colorspace_is_rgb(colorspace)) and v in (0.0, 1.0)
                                     and m.floats_getitem(color, 1) == v == m.floats_getitem(color, 2))
            except Exception:
                self.grey = False

        def _text(self, text, colorspace, color):
            try:
                span = text.head if self.grey else None
                while span is not None and self.grey:
                    self.grey = m.ll_fz_font_t3_procs(span.font) is None
                    span = span.next
            except Exception:
                self.grey = False
            self._colour(colorspace, color)

        def fill_path(self, ctx, path, even_odd, ctm, colorspace, color, alpha, color_params):
            self.paths = True
            self._colour(colorspace, color)

        def stroke_path(self, ctx, path, stroke, ctm, colorspace, color, alpha, color_params):
            self.paths = True
            self._colour(colorspace, color)

        def fill_text(self, ctx, text, ctm, colorspace, color, alpha, color_params):
            self._text(text, colorspace, color)

        def stroke_text(self, ctx, text, stroke, ctm, colorspace, color, alpha, color_params):
            self._text(text, colorspace, color)

        def fill_shade(self, ctx, shade, ctm, alpha, color_params):
            self.grey = False

        def fill_image(self, ctx, image, ctm, alpha, color_params):
            try:
                self.grey = self.grey and bool(m.ll_fz_colorspace_is_gray(image.colorspace))
            except Exception:
                self.grey = False

        def fill_image_mask(self, ctx, image, ctm, colorspace, color, alpha, color_params):
            self._colour(colorspace, color)

    return PaintProbe


@dataclass(frozen=True)
class Paints:
    grey: bool  # every paint is grey-safe: the RGB render has R == G == B, and a grey render gives those values
    paths: bool  # some vector path is painted (True when unknown)


def probe_paints(display_list: pymupdf.DisplayList) -> Paints:
    """What a page paints (see _paint_probe), from its display list; the safe answer whenever unsure."""
    m, probe_class = pymupdf.mupdf, _paint_probe()
    if probe_class is None:
        return Paints(grey=False, paths=True)
    try:
        probe = probe_class()
        m.fz_run_display_list(display_list.this, probe, m.FzMatrix(), m.FzRect(m.FzRect.Fixed_INFINITE), m.FzCookie())
        m.fz_close_device(probe)
    except Exception:
        return Paints(grey=False, paths=True)
    return Paints(grey=probe.grey, paths=probe.paths)


def render(display_list: pymupdf.DisplayList, dpi: int, grey: bool) -> pymupdf.Pixmap:
    """The page at `dpi` with the pixels of page.get_pixmap(dpi=dpi); drawn straight in grey when
    `grey` (Paints.grey: a third of the memory to fill, no colour check afterwards), else in RGB."""
    zoom = pymupdf.Matrix(dpi / 72, dpi / 72)  # what page.get_pixmap(dpi=...) uses
    return display_list.get_pixmap(matrix=zoom, colorspace=pymupdf.csGRAY if grey else pymupdf.csRGB, alpha=False)


def encode(pix: pymupdf.Pixmap, image_format: str = "png", jpg_quality: int = 90) -> bytes:
    """PNG (see png_bytes) or JPEG (Pillow); a page with no colour is stored as 8-bit grey.

    Grey is exact (only when R == G == B everywhere), a third of the bytes to compress and about
    half the size. Readers convert to RGB, so pixels are unchanged.
    """
    import numpy as np

    a = np.frombuffer(pix.samples_mv, np.uint8).reshape(pix.height, pix.width, pix.n)  # no copy of the samples
    pixels = a[..., 0] if pix.n == 1 or (pix.n == 3 and is_grey(a)) else a[..., :3]
    if image_format == "png":
        return png_bytes(pixels)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, "JPEG", quality=jpg_quality)
    return buf.getvalue()
