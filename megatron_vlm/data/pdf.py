"""One PDF -> validated pages: a rendered image, Qwen2.5-VL token count and layout blocks per page.

`process_pdf(data, settings)` is the whole job for one document; it raises `PdfError` with a
one-line reason for anything the pool should record as an error row (empty, not a PDF, truncated,
corrupt, encrypted, zero pages, a page too large to render, a page that fails to render).

Layout: pymupdf's text dict gives blocks/lines/spans with fonts. Each block is split where the
line style (size, bold) changes, then classified: heading (larger than the document's body size,
or bold and short), list (bullet or enumerator), caption ("Table 3:", "Figure 2."), paragraph.
Ruled tables are found from the page's vector lines (a grid of horizontal and vertical rules) and
become one `table` block with its cells; their words leave the text blocks. Reading order is
top-to-bottom, and where blocks sit side by side in two columns, the left column first. This is
deliberately cheaper than pymupdf's `find_tables` (~0.3 s/page): under half a millisecond, and
skipped on pages that paint no vector path. Pages with (almost) no text but large images are
OCRed with Tesseract through pymupdf when `tesseract` is installed and marked `ocr: "missing"`
otherwise.
"""

from __future__ import annotations

import io
import re
import shutil
import struct
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import pymupdf

from megatron_vlm.data import image_rule
from megatron_vlm.models.family import DEFAULT_FAMILY, get_family

TEXT_FLAGS = pymupdf.TEXTFLAGS_DICT & ~pymupdf.TEXT_PRESERVE_IMAGES
MIN_TEXT_CHARS = 16  # fewer characters than this and large images: a scanned page
MIN_IMAGE_COVER = 0.3  # share of the page covered by images for a page to count as scanned
BODY_SAMPLE = 64  # pages whose fonts decide the body size
LIST_RE = re.compile(r"^\s*(?:[\u2022\u00b7\u25aa\u25e6\u2013\u2014*-]|\(?\d{1,3}[.)]|\(?[a-z][.)])\s+")
CAPTION_RE = re.compile(r"^\s*(?:Table|Figure|Fig\.|Chart|Exhibit|Plate)\s+[\dA-Z]+[.:\s]", re.IGNORECASE)


class PdfError(Exception):
    """A document the pool cannot use; str(error) is the one-line reason for the manifest."""


@dataclass(frozen=True)
class PdfSettings:
    dpi: int = 144
    image_format: str = "png"  # "png" (lossless; on text pages also smaller and faster than jpg) or "jpg" (lossy)
    jpg_quality: int = 90
    family: str = DEFAULT_FAMILY  # whose image rule counts each page's tokens
    min_pixels: int | None = None  # None: the family's
    max_pixels: int | None = None  # None: the family's
    max_page_pixels: int = 64_000_000  # a page rendering to more pixels than this is an error
    max_pages: int = 5000
    ocr: bool = True  # OCR scanned pages when tesseract is installed
    ocr_language: str = "eng"
    ocr_dpi: int = 300

    def image_rule(self) -> image_rule.ImageRule:
        """The family's image rule with these pixel limits."""
        return get_family(self.family).image.with_pixels(self.min_pixels, self.max_pixels)


@lru_cache(maxsize=1)
def tesseract_data() -> str | None:
    """Tesseract's tessdata folder when the `tesseract` program is installed, else None."""
    if shutil.which("tesseract") is None:
        return None
    try:
        return pymupdf.get_tessdata()
    except Exception:
        return None


def check_bytes(data: bytes) -> None:
    """Cheap checks before parsing: empty, not a PDF, truncated (no %%EOF near the end)."""
    if not data:
        raise PdfError("empty file (0 bytes)")
    if b"%PDF-" not in data[:1024]:
        raise PdfError(f"not a PDF: no %PDF- header (starts with {data[:8]!r})")
    if b"%%EOF" not in data[-1024:]:
        raise PdfError("truncated: no %%EOF marker at the end of the file")


def open_pdf(data: bytes, settings: PdfSettings = PdfSettings()) -> pymupdf.Document:
    check_bytes(data)
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except Exception as e:
        raise PdfError(f"corrupt: cannot parse ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if doc.needs_pass:
        raise PdfError("encrypted: needs a password")
    if doc.page_count == 0:
        raise PdfError("no pages: the document has zero pages")
    if doc.page_count > settings.max_pages:
        raise PdfError(f"too many pages: {doc.page_count} > --max-pages {settings.max_pages}")
    return doc


def _r(x: float) -> float:
    return round(float(x), 2)


def _bbox(b) -> list[float]:
    return [_r(b[0]), _r(b[1]), _r(b[2]), _r(b[3])]


# ---- tables from ruling lines ---------------------------------------------------------------


def _rules(page: pymupdf.Page) -> tuple[list[tuple], list[tuple]]:
    """Horizontal (y, x0, x1) and vertical (x, y0, y1) rules drawn on the page."""
    horiz, vert = [], []
    for path in page.get_cdrawings():
        for item in path["items"]:
            if item[0] == "l":
                (x0, y0), (x1, y1) = item[1], item[2]
                edges = [(x0, y0, x1, y1)]
            elif item[0] == "re":
                x0, y0, x1, y1 = item[1]
                if y1 - y0 < 3 and x1 - x0 > 3:  # a filled hairline
                    edges = [(x0, (y0 + y1) / 2, x1, (y0 + y1) / 2)]
                elif x1 - x0 < 3 and y1 - y0 > 3:
                    edges = [((x0 + x1) / 2, y0, (x0 + x1) / 2, y1)]
                else:
                    edges = [(x0, y0, x1, y0), (x0, y1, x1, y1), (x0, y0, x0, y1), (x1, y0, x1, y1)]
            else:
                continue
            for x0, y0, x1, y1 in edges:
                if abs(y1 - y0) < 1 and abs(x1 - x0) > 5:
                    horiz.append((y0, min(x0, x1), max(x0, x1)))
                elif abs(x1 - x0) < 1 and abs(y1 - y0) > 5:
                    vert.append((x0, min(y0, y1), max(y0, y1)))
    return horiz, vert


def _merge_coords(values: list[float], tol: float = 2.0) -> list[float]:
    out: list[float] = []
    for v in sorted(values):
        if not out or v - out[-1] > tol:
            out.append(v)
    return out


def find_grid_tables(page: pymupdf.Page) -> list[tuple[list[float], list[float]]]:
    """Ruled tables as (row boundaries y, column boundaries x): connected grids of >= 2x2 rules."""
    horiz, vert = _rules(page)
    if len(horiz) < 2 or len(vert) < 2:
        return []
    tol = 2.0
    n = len(horiz) + len(vert)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, (y, hx0, hx1) in enumerate(horiz):
        for j, (x, vy0, vy1) in enumerate(vert):
            if hx0 - tol <= x <= hx1 + tol and vy0 - tol <= y <= vy1 + tol:
                parent[find(i)] = find(len(horiz) + j)
    groups: dict[int, tuple[list, list]] = {}
    for i, h in enumerate(horiz):
        groups.setdefault(find(i), ([], []))[0].append(h[0])
    for j, v in enumerate(vert):
        groups.setdefault(find(len(horiz) + j), ([], []))[1].append(v[0])
    tables = []
    for ys, xs in groups.values():
        ys, xs = _merge_coords(ys), _merge_coords(xs)
        if len(ys) >= 2 and len(xs) >= 2 and (len(ys) >= 3 or len(xs) >= 3):
            tables.append((ys, xs))
    return sorted(tables, key=lambda t: (t[0][0], t[1][0]))


# ---- blocks ----------------------------------------------------------------------------------


def _line_style(spans: list[dict]) -> tuple[float, bool]:
    spans = [s for s in spans if s["text"].strip()]
    size = max(spans, key=lambda s: len(s["text"]))["size"]
    bold = all(s["flags"] & 16 or "bold" in s["font"].lower() for s in spans)
    return round(size, 1), bold


def _same_style(a: tuple[float, bool], b: tuple[float, bool]) -> bool:
    return a[1] == b[1] and abs(a[0] - b[0]) <= 0.15 * max(a[0], b[0])


def _line_text(spans: list[dict]) -> str:
    return " ".join("".join(s["text"] for s in spans).split())


def _inside(bbox, rect) -> bool:
    """More than half of bbox's area lies in rect (both (x0, y0, x1, y1))."""
    w = min(bbox[2], rect[2]) - max(bbox[0], rect[0])
    h = min(bbox[3], rect[3]) - max(bbox[1], rect[1])
    area = (bbox[2] - bbox[0]) * (bbox[3] - bbox[1])
    return w > 0 and h > 0 and w * h > 0.5 * area


def _union(a: list[float], b) -> list[float]:
    return [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]


def _text_groups(text_dict: dict, table_rects: list[tuple]) -> list[dict]:
    """Style-homogeneous groups of lines (text, bbox, size, bold), table words removed."""
    groups = []
    for block in text_dict["blocks"]:
        if block.get("type", 0) != 0:
            continue
        current = None
        for line in block["lines"]:
            spans = line["spans"]
            if table_rects:
                spans = [s for s in spans if not any(_inside(s["bbox"], r) for r in table_rects)]
            text = _line_text(spans)
            if not text:
                continue
            style = _line_style(spans)
            starts_item = bool(LIST_RE.match(text))
            if current is None or not _same_style(current["style"], style) or (starts_item and not current["list"]):
                current = {"lines": [], "style": style, "bbox": list(line["bbox"]), "list": starts_item}
                groups.append(current)
            current["lines"].append(text)
            current["bbox"] = _union(current["bbox"], line["bbox"])
    return groups


def chars_by_size(text_dict: dict) -> dict[float, int]:
    """Non-blank characters of a page by exact font size (few distinct sizes: rounding comes later)."""
    out: dict[float, int] = {}
    for block in text_dict["blocks"]:
        for line in block.get("lines", ()):
            for s in line["spans"]:
                out[s["size"]] = out.get(s["size"], 0) + len(s["text"].strip())
    return out


def count_font_sizes(by_size: dict[float, int], sizes: Counter) -> None:
    """Add a page's chars_by_size to `sizes`, keyed by font size rounded to 0.1 pt."""
    for size, n in by_size.items():
        sizes[round(size, 1)] += n


def body_font_size(sizes: Counter) -> float:
    """The most common font size by character count (10 when there is no text)."""
    return sizes.most_common(1)[0][0] if sizes else 10.0


def _classify(text: str, size: float, bold: bool, is_list: bool, n_lines: int, body: float) -> str:
    if is_list:
        return "list"
    if CAPTION_RE.match(text):
        return "caption"
    short = len(text) <= 120 and n_lines <= 3
    if short and (size >= body * 1.15 or (bold and not text.rstrip().endswith("."))):
        return "heading"
    return "paragraph"


def _table_block(grid: tuple[list[float], list[float]], words: list[tuple]) -> dict:
    ys, xs = grid
    cells = [[[] for _ in range(len(xs) - 1)] for _ in range(len(ys) - 1)]
    for w in words:
        cx, cy = (w[0] + w[2]) / 2, (w[1] + w[3]) / 2
        if not (xs[0] <= cx <= xs[-1] and ys[0] <= cy <= ys[-1]):
            continue
        r = max(i for i in range(len(ys) - 1) if ys[i] <= cy)
        c = max(i for i in range(len(xs) - 1) if xs[i] <= cx)
        cells[r][c].append(w)
    rows = [[" ".join(w[4] for w in sorted(cell, key=lambda w: (round(w[3]), w[0]))) for cell in row] for row in cells]
    rows = [row for row in rows if any(row)]
    return {
        "kind": "table",
        "bbox": [_r(xs[0]), _r(ys[0]), _r(xs[-1]), _r(ys[-1])],
        "text": "\n".join(" | ".join(row) for row in rows),
        "cells": rows,
    }


def reading_order(blocks: list[dict], page_width: float) -> list[dict]:
    """Top to bottom; between full-width blocks, a two-column band is read left column first."""
    mid, tol = page_width / 2, page_width * 0.02
    ordered, band = [], []

    def flush():
        left = [b for b in band if b["bbox"][2] <= mid + tol]
        right = [b for b in band if b["bbox"][2] > mid + tol]
        ordered.extend(sorted(left, key=lambda b: (b["bbox"][1], b["bbox"][0])))
        ordered.extend(sorted(right, key=lambda b: (b["bbox"][1], b["bbox"][0])))
        band.clear()

    for b in sorted(blocks, key=lambda b: (b["bbox"][1], b["bbox"][0])):
        x0, x1 = b["bbox"][0], b["bbox"][2]
        if x0 < mid - tol and x1 > mid + tol:  # spans both columns
            flush()
            ordered.append(b)
        else:
            band.append(b)
    flush()
    for i, b in enumerate(ordered):
        b["order"] = i
    return ordered


def page_layout(text_dict: dict, textpage, tables: list) -> tuple[list[dict], list[dict]]:
    """(table blocks, unclassified text groups) of one page; `tables` from find_grid_tables."""
    rects = [(xs[0], ys[0], xs[-1], ys[-1]) for ys, xs in tables]
    table_blocks = []
    if tables:
        words = textpage.extractWORDS()
        table_blocks = [_table_block(t, words) for t in tables]
    return table_blocks, _text_groups(text_dict, rects)


def page_blocks(table_blocks: list[dict], groups: list[dict], body: float, page_width: float) -> list[dict]:
    """Layout blocks of one page in reading order (see the module docstring), given the body font size."""
    blocks = list(table_blocks)
    for g in groups:
        text = " ".join(g["lines"]) if not g["list"] else "\n".join(g["lines"])
        kind = _classify(text, g["style"][0], g["style"][1], g["list"], len(g["lines"]), body)
        blocks.append({"kind": kind, "bbox": _bbox(g["bbox"]), "text": text})
    return reading_order(blocks, page_width)


def _image_cover(page: pymupdf.Page) -> float:
    area = page.rect.get_area() or 1.0
    covered = sum((pymupdf.Rect(i["bbox"]) & page.rect).get_area() for i in page.get_image_info())
    return min(1.0, covered / area)


@lru_cache(maxsize=1)
def _zlib():
    """isal's zlib (ISA-L: ~10x zlib's speed at level 1 on page images, similar size) when installed, else zlib."""
    try:
        from isal import isal_zlib

        return isal_zlib
    except ImportError:
        import zlib

        return zlib


_GREY_STEP = 3 << 16  # bytes of RGB samples checked at a time (a multiple of 3)


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

    z = _zlib()
    h, w = pixels.shape[:2]
    c = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = np.empty((h, 1 + w * c), np.uint8)
    rows[:, 0] = 0  # filter type None
    rows[:, 1:] = pixels.reshape(h, w * c)

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", z.crc32(body, z.crc32(tag)) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)  # 8 bits, grey or RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", z.compress(rows, 1)) + chunk(b"IEND", b"")


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


def _encode(pix: pymupdf.Pixmap, settings: PdfSettings) -> bytes:
    """PNG (see png_bytes) or JPEG (Pillow); a page with no colour is stored as 8-bit grey.

    Grey is exact (only when R == G == B everywhere), a third of the bytes to compress and about
    half the size. Readers convert to RGB, so pixels are unchanged.
    """
    import numpy as np

    a = np.frombuffer(pix.samples_mv, np.uint8).reshape(pix.height, pix.width, pix.n)  # no copy of the samples
    pixels = a[..., 0] if pix.n == 1 or (pix.n == 3 and is_grey(a)) else a[..., :3]
    if settings.image_format == "png":
        return png_bytes(pixels)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, "JPEG", quality=settings.jpg_quality)
    return buf.getvalue()


def _page_text(page: pymupdf.Page, display_list: pymupdf.DisplayList, settings: PdfSettings):
    """(text dict, its TextPage, chars_by_size, has a text layer, ocr mark); a scanned page is OCRed here.

    The text comes from the display list the page was rendered from, so the content stream is
    interpreted once (same result as page.get_textpage; rotated pages use that, whose coordinates
    are unrotated).
    """
    flags = TEXT_FLAGS
    if page.rotation == 0:
        tp = pymupdf.TextPage(display_list.get_textpage(flags))
        tp.parent = page
    else:
        tp = page.get_textpage(flags=flags)
    td = tp.extractDICT()
    by_size = chars_by_size(td)
    chars = sum(by_size.values())
    mark = "none"
    if chars < MIN_TEXT_CHARS and _image_cover(page) >= MIN_IMAGE_COVER:
        mark = "missing"
        if settings.ocr and tesseract_data():
            try:
                tp = page.get_textpage_ocr(language=settings.ocr_language, dpi=settings.ocr_dpi, full=True, tessdata=tesseract_data())
                td = tp.extractDICT()
                by_size = chars_by_size(td)
                mark = "tesseract"
            except Exception:
                mark = "missing"
    return td, tp, by_size, chars > 0, mark


def _check_sizes(doc: pymupdf.Document, settings: PdfSettings) -> None:
    """PdfError for the first page too large (or too small) to render, before any work is done."""
    for i, page in enumerate(doc):
        w_pt, h_pt = page.rect.width, page.rect.height
        h_px, w_px = image_rule.page_pixels(w_pt, h_pt, settings.dpi)
        if h_px * w_px > settings.max_page_pixels or min(h_px, w_px) < 1:
            raise PdfError(
                f"page too large: page {i} is {w_pt:.0f}x{h_pt:.0f} pt = {w_px}x{h_px} px at {settings.dpi} DPI "
                f"(limit {settings.max_page_pixels} px)"
            )
        try:
            settings.image_rule().grid_thw(h_px, w_px)
        except ValueError as e:
            raise PdfError(f"page {i}: {e}") from None


def process_pdf(data: bytes, settings: PdfSettings = PdfSettings(), sink=None) -> tuple[list[dict], list[bytes]]:
    """Pages (formats.md section 1, page dicts) and their encoded images, or PdfError.

    With `sink`, each page's image is handed to sink(index, image) as soon as it is encoded and
    not kept (the returned image list is empty), so a long document never sits in memory.

    One pass over the pages: each page's content is interpreted once into a display list, which
    is rendered and read for text; the page's layout is kept unclassified until the body font
    size (from the first BODY_SAMPLE pages) is known, then blocks are classified and ordered.
    """
    pymupdf.TOOLS.mupdf_display_errors(False)
    doc = open_pdf(data, settings)
    try:
        _check_sizes(doc, settings)
        rule = settings.image_rule()
        sizes: Counter = Counter()
        pages, layouts, images = [], [], []
        for i, page in enumerate(doc):
            try:
                display_list = page.get_displaylist()
                paints = probe_paints(display_list)
                pix = render(display_list, settings.dpi, paints.grey)
                image = _encode(pix, settings)
            except Exception as e:
                raise PdfError(f"page {i}: cannot render ({type(e).__name__}: {e})") from None
            td, tp, by_size, has_text, mark = _page_text(page, display_list, settings)
            del display_list
            if i < BODY_SAMPLE:
                count_font_sizes(by_size, sizes)
            tables = find_grid_tables(page) if paints.paths else []
            layouts.append((*page_layout(td, tp, tables), page.rect.width))
            del td, tp
            h, w = pix.height, pix.width
            pages.append({
                "index": i,
                "width_pt": _r(page.rect.width),
                "height_pt": _r(page.rect.height),
                "height_px": h,
                "width_px": w,
                "grid_thw": list(rule.grid_thw(h, w)),
                "tokens": rule.token_count(h, w),
                "has_text_layer": has_text,
                "ocr": mark,
            })
            del pix
            if sink is None:
                images.append(image)
            else:
                sink(i, image)
        body = body_font_size(sizes)
        for page, (table_blocks, groups, width) in zip(pages, layouts):
            blocks = page_blocks(table_blocks, groups, body, width)
            page["text"] = "\n\n".join(b["text"] for b in blocks)
            page["blocks"] = blocks
        return pages, images
    finally:
        doc.close()
