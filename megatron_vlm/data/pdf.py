"""One PDF -> validated pages: a rendered image, Qwen2.5-VL token count, text and layout per page.

`process_pdf(data, settings)` is the whole job for one document; it raises `PdfError` with a
one-line reason for anything the pool should record as an error row (empty, not a PDF, truncated,
corrupt, encrypted, zero pages, a page too large to render, a page that fails to render).

Per page, in one pass (each page's content is interpreted once into a display list):
1. render.py draws it and stores the image (PNG, grey when it has no colour);
2. its text layer is read and judged (text_quality.py): good, broken (fonts without a Unicode
   map, unmappable characters) or none;
3. a scanned page (under MIN_TEXT_CHARS characters and images over MIN_IMAGE_COVER of the page)
   or a broken one is OCRed (ocr.py: script detected, matching Tesseract language data, word
   confidences) when Tesseract is installed, and marked `ocr: "missing"` otherwise;
4. other pages get layout blocks (layout.py: pymupdf's layout model, or the cheaper rules).
Then, across the document: running headers, footers and page numbers and each page's printed
page label (furniture.py), tables continued from the previous page (tables.py).
The page dict is docs/formats.md section 1.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import pymupdf

from megatron_vlm.data import furniture, image_rule, layout, layout_model, ocr, tables, text_quality
from megatron_vlm.data.render import encode, probe_paints, render
from megatron_vlm.models.family import DEFAULT_FAMILY, get_family

TEXT_FLAGS = pymupdf.TEXTFLAGS_DICT & ~pymupdf.TEXT_PRESERVE_IMAGES
MIN_TEXT_CHARS = 16  # fewer characters than this and large images: a scanned page
MIN_IMAGE_COVER = 0.3  # share of the page covered by images for a page to count as scanned
BODY_SAMPLE = 64  # pages whose fonts decide the body size
LAYOUTS = ("model", "rules")
_OBJECT_RE = re.compile(rb"\d+\s+\d+\s+obj\b")  # "12 0 obj": every PDF body holds objects


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
    ocr: bool = True  # OCR scanned pages and broken text layers when tesseract is installed
    ocr_language: str = "auto"  # "auto": by the page's script (ocr.py); else Tesseract languages, e.g. "deu+eng"
    ocr_dpi: int = 300
    layout: str = "model"  # "model": pymupdf's layout model; "rules": font sizes and ruled grids only (layout.py)

    def image_rule(self) -> image_rule.ImageRule:
        """The family's image rule with these pixel limits."""
        return get_family(self.family).image.with_pixels(self.min_pixels, self.max_pixels)


def check_bytes(data: bytes) -> None:
    """Cheap checks before parsing: empty, not a PDF (no %PDF- header, or a header but no PDF
    object, as in a text file that begins with "%PDF-"), truncated (no %%EOF near the end)."""
    if not data:
        raise PdfError("empty file (0 bytes)")
    if b"%PDF-" not in data[:1024]:
        raise PdfError(f"not a PDF: no %PDF- header (starts with {data[:8]!r})")
    if b"%%EOF" not in data[-1024:]:
        if not _OBJECT_RE.search(data, 0, 1 << 20):  # text that mentions "%PDF-", not a cut-off PDF
            raise PdfError("not a PDF: a %PDF- header but no PDF objects (a text file named .pdf?)")
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


def _image_cover(page: pymupdf.Page) -> float:
    area = page.rect.get_area() or 1.0
    covered = sum((pymupdf.Rect(i["bbox"]) & page.rect).get_area() for i in page.get_image_info())
    return min(1.0, covered / area)


def _text_page(page: pymupdf.Page, display_list: pymupdf.DisplayList):
    """(TextPage, its text dict) from the display list the page was rendered from, so the content
    stream is interpreted once (same result as page.get_textpage; rotated pages use that, whose
    coordinates are unrotated)."""
    if page.rotation == 0:
        tp = pymupdf.TextPage(display_list.get_textpage(TEXT_FLAGS))
        tp.parent = page
    else:
        tp = page.get_textpage(flags=TEXT_FLAGS)
    return tp, tp.extractDICT()


def _ocr_fields(page_dict: dict, result: ocr.OcrResult | None) -> None:
    page_dict["ocr_confidence"] = result.confidence if result else None
    page_dict["ocr_languages"] = result.languages if result else None


def _page_content(doc: pymupdf.Document, page: pymupdf.Page, display_list, paints, settings: PdfSettings, page_dict: dict,
                  hint: str | None):
    """Text, verdict and layout of one page: fills page_dict's text fields and returns
    (chars by font size, content), content being the final blocks (OCR) or what layout.py makes
    them from once the document's body font size is known. `hint`: the document's main script."""
    tp, td = _text_page(page, display_list)
    by_size = layout.chars_by_size(td)
    chars = sum(by_size.values())
    bad_fonts = text_quality.unmapped_fonts(doc, page.number) if chars else set()
    verdict = text_quality.judge(td, bad_fonts)
    scanned = chars < MIN_TEXT_CHARS and _image_cover(page) >= MIN_IMAGE_COVER
    page_dict.update(has_text_layer=chars > 0, ocr="none", text_quality=verdict.quality, text_quality_reason=verdict.reason)
    _ocr_fields(page_dict, None)
    if scanned or verdict.quality == "broken":
        page_dict["ocr"] = "missing"
        if settings.ocr and ocr.available():
            try:
                result = ocr.ocr_page(page, settings.ocr_language, settings.ocr_dpi, hint)
            except ocr.OcrError as e:
                page_dict["text_quality_reason"] = f"OCR failed: {e}"
            else:
                page_dict.update(ocr="tesseract", text_quality="ocr" if result.blocks else "none")
                _ocr_fields(page_dict, result)
                page_dict["script"] = result.script or text_quality.page_script(" ".join(b["text"] for b in result.blocks))
                return by_size, result.blocks
        if scanned:
            page_dict["text_quality"] = "none"
            page_dict["script"] = None
            return by_size, []
    page_dict["script"] = text_quality.page_script("".join(s["text"] for b in td["blocks"] for ln in b.get("lines", ()) for s in ln["spans"]))
    if settings.layout == "model":
        try:
            regions = layout_model.page_regions(page)
        except Exception:  # a model failure on one page falls back to the rules for that page
            regions = None
        if regions is not None:
            return by_size, ("model", *layout.model_layout(td, tp, page, regions))
    return by_size, ("rules", *layout.rules_layout(td, tp, page, paints.paths))


def _finish_blocks(pages: list[dict], pending: list, body: float) -> None:
    """Blocks of every page once the body font size is known; then furniture and continued tables."""
    for page_dict, item in zip(pages, pending):
        if isinstance(item, list):
            blocks = item
        elif item[0] == "model":
            blocks = layout.model_blocks(item[1], item[2], body, page_dict["width_pt"])
        else:
            blocks = layout.rules_blocks(item[1], item[2], body, page_dict["width_pt"])
        for block in blocks:
            block.setdefault("confidence", None)
            block.setdefault("low_confidence", False)
        page_dict["blocks"] = blocks
    furniture.mark_furniture(pages)
    tables.link_continued_tables(pages)
    for page_dict in pages:
        for i, block in enumerate(page_dict["blocks"]):
            block["order"] = i
        page_dict["text"] = "\n\n".join(b["text"] for b in page_dict["blocks"])


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

    One pass over the pages (see the module docstring); blocks the rules classify wait until the
    body font size (from the first BODY_SAMPLE pages) is known, then the document-wide passes run.
    """
    pymupdf.TOOLS.mupdf_display_errors(False)
    doc = open_pdf(data, settings)
    try:
        _check_sizes(doc, settings)
        rule = settings.image_rule()
        sizes: Counter = Counter()
        pages, pending, images, scripts = [], [], [], Counter()
        for i, page in enumerate(doc):
            try:
                display_list = page.get_displaylist()
                paints = probe_paints(display_list)
                pix = render(display_list, settings.dpi, paints.grey)
                image = encode(pix, settings.image_format, settings.jpg_quality)
            except Exception as e:
                raise PdfError(f"page {i}: cannot render ({type(e).__name__}: {e})") from None
            h, w = pix.height, pix.width
            del pix
            page_dict = {
                "index": i,
                "width_pt": _r(page.rect.width),
                "height_pt": _r(page.rect.height),
                "height_px": h,
                "width_px": w,
                "grid_thw": list(rule.grid_thw(h, w)),
                "tokens": rule.token_count(h, w),
            }
            hint = scripts.most_common(1)[0][0] if scripts else None
            by_size, content = _page_content(doc, page, display_list, paints, settings, page_dict, hint)
            del display_list
            if page_dict["script"]:
                scripts[page_dict["script"]] += 1
            if i < BODY_SAMPLE:
                layout.count_font_sizes(by_size, sizes)
            pages.append(page_dict)
            pending.append(content)
            if sink is None:
                images.append(image)
            else:
                sink(i, image)
        _finish_blocks(pages, pending, layout.body_font_size(sizes))
        return pages, images
    finally:
        doc.close()
