"""megatron_vlm.data.pdf against pymupdf read independently and against the known content of the
generated sample PDFs: page counts, text, blocks, tables, token counts, bad inputs, OCR."""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import replace

import pymupdf
import pytest

from megatron_vlm.data.layout import reading_order
from megatron_vlm.data.pdf import PdfError, PdfSettings, process_pdf
from megatron_vlm.data.sample_pdfs import make_bad_inputs, make_corpus

NO_OCR = PdfSettings(ocr=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("pdfs")
    specs = make_corpus(out, n_docs=2, pages=(4, 5), seed=3)
    return [(spec, process_pdf(spec.path.read_bytes(), NO_OCR)) for spec in specs]


def _words(text: str) -> Counter:
    return Counter(w for w in text.split() if w != "|")


def test_page_count_and_text_agree_with_pymupdf(corpus):
    for spec, (pages, images) in corpus:
        ref = pymupdf.open(spec.path)
        assert len(pages) == len(images) == ref.page_count == len(spec.pages)
        for page, ref_page, page_spec in zip(pages, ref, spec.pages):
            assert page["index"] == ref_page.number
            assert _words(page["text"]) == _words(ref_page.get_text("text")), f"{spec.path.name} page {page['index']}"
            if page_spec.kind == "text":
                assert _words(page["text"]) == Counter(page_spec.words())
                for prefix, value in page_spec.facts:
                    assert f"{prefix} {value}" in " ".join(page["text"].split())


def test_blocks_match_the_known_layout(corpus):
    for spec, (pages, _) in corpus:
        for page, page_spec in zip(pages, spec.pages):
            if page_spec.kind != "text":
                continue
            kinds = [b["kind"] for b in page["blocks"]]
            assert [b["order"] for b in page["blocks"]] == list(range(len(kinds)))
            assert [b["text"] for b in page["blocks"] if b["kind"] == "heading"] == page_spec.headings
            lists = [b["text"].split("\n") for b in page["blocks"] if b["kind"] == "list"]
            assert lists == [page_spec.list_items]
            tables = [b for b in page["blocks"] if b["kind"] == "table"]
            if page_spec.table is None:
                assert not tables and "caption" not in kinds
            else:
                assert len(tables) == 1
                assert tables[0]["cells"] == [page_spec.table.header, *page_spec.table.rows]
                captions = [b for b in page["blocks"] if b["kind"] == "caption"]
                assert [c["text"] for c in captions] == [page_spec.table.caption]
                assert kinds.index("caption") + 1 == kinds.index("table")  # caption read just before its table
            for b in page["blocks"]:
                x0, y0, x1, y1 = b["bbox"]
                assert 0 <= x0 < x1 <= page["width_pt"] and 0 <= y0 < y1 <= page["height_pt"]


def test_token_counts_by_hand(corpus):
    # US-Letter 612x792 pt at 144 DPI = 1224x1584 px -> 1232x1596 (multiples of 28) -> 44x57 = 2508 tokens.
    # A4 595x842 pt -> 1190x1684 px -> round(42.5)=42, round(60.1)=60 -> 1176x1680 -> 42x60 = 2520 tokens.
    hand = {(612.0, 792.0): (1584, 1224, [1, 114, 88], 2508), (595.0, 842.0): (1684, 1190, [1, 120, 84], 2520)}
    seen = set()
    for _, (pages, _) in corpus:
        for page in pages:
            h, w, grid, tokens = hand[(page["width_pt"], page["height_pt"])]
            seen.add((page["width_pt"], page["height_pt"]))
            assert (page["height_px"], page["width_px"], page["grid_thw"], page["tokens"]) == (h, w, grid, tokens)
    assert len(seen) == 2
    # Above max_pixels (28*28*1000): beta = sqrt(1224*1584/784000) = 1.5726,
    # h = floor(1584/1.5726/28)*28 = 35*28, w = floor(1224/1.5726/28)*28 = 27*28 -> 945 tokens.
    spec = next(s for s, _ in corpus if s.width_pt == 612.0)
    pages, _ = process_pdf(spec.path.read_bytes(), replace(NO_OCR, max_pixels=28 * 28 * 1000))
    assert pages[0]["tokens"] == 35 * 27 and pages[0]["grid_thw"] == [1, 70, 54]


def test_images_are_the_pages_at_dpi(corpus):
    from io import BytesIO

    from PIL import Image

    spec, (pages, images) = corpus[1]
    ref = pymupdf.open(spec.path)
    modes = set()
    for page, image, ref_page in zip(pages, images, ref):
        pix = ref_page.get_pixmap(dpi=144)
        with Image.open(BytesIO(image)) as im:
            assert im.format == "PNG" and im.size == (pix.width, pix.height) == (page["width_px"], page["height_px"])
            modes.add(im.mode)
            assert im.mode == ("RGB" if spec.pages[page["index"]].table else "L")  # grey unless the coloured table header
            assert im.convert("RGB").tobytes() == pix.samples  # lossless: the very pixels pymupdf renders
    assert modes == {"L", "RGB"}


def test_every_bad_input_raises_with_its_reason(tmp_path):
    expected = make_bad_inputs(tmp_path)
    assert {"corrupt.pdf", "truncated.pdf", "encrypted.pdf", "zero-page.pdf", "giant-page.pdf", "not-a-pdf.pdf"} <= set(expected)
    for name, word in expected.items():
        with pytest.raises(PdfError, match=word):
            process_pdf((tmp_path / name).read_bytes(), NO_OCR)


def test_scanned_page_is_detected_and_marked(corpus):
    spec, (pages, _) = corpus[0]
    assert spec.pages[2].kind == "scan"
    scan = pages[2]
    assert scan["has_text_layer"] is False and scan["ocr"] == "missing" and scan["text"] == "" and scan["blocks"] == []
    assert all(p["has_text_layer"] and p["ocr"] == "none" for i, p in enumerate(pages) if i != 2)


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract not installed (apt-get install tesseract-ocr)")
def test_scanned_page_is_ocred_with_tesseract(corpus):
    spec, _ = corpus[0]
    pages, _ = process_pdf(spec.path.read_bytes(), PdfSettings(ocr=True))
    scan, truth = pages[2], spec.pages[2]
    assert scan["ocr"] == "tesseract" and scan["has_text_layer"] is False
    found = _words(scan["text"])
    expected = Counter(truth.words())
    recall = sum((found & expected).values()) / sum(expected.values())
    assert recall > 0.9, recall
    assert scan["blocks"][0]["kind"] == "heading" and scan["blocks"][0]["text"] == truth.headings[0]
    assert all(value in scan["text"] for _, value in truth.facts)


def test_reading_order_two_columns(tmp_path):
    doc = pymupdf.open()
    page = doc.new_page(width=612, height=792)
    page.insert_text((72, 72), "Full width title over both columns of this page", fontsize=18, fontname="hebo")
    for x, name in ((72, "left"), (330, "right")):
        for k, y in enumerate((150, 400)):
            page.insert_textbox(pymupdf.Rect(x, y, x + 220, y + 100), f"{name} column block {k} " + "word " * 30, fontsize=10)
    page.insert_text((72, 700), "Full width footer sentence that spans both columns of the page.", fontsize=10)
    pages, _ = process_pdf(doc.tobytes(), NO_OCR)
    firsts = [" ".join(b["text"].split()[:4]) for b in pages[0]["blocks"]]
    assert firsts == [
        "Full width title over",
        "left column block 0",
        "left column block 1",
        "right column block 0",
        "right column block 1",
        "Full width footer sentence",
    ]
    # the ordering function alone: a full-width block splits the bands
    blocks = [{"bbox": [300, 10, 500, 20]}, {"bbox": [10, 50, 500, 60]}, {"bbox": [10, 10, 200, 20]}]
    assert [b["bbox"][1] for b in reading_order(blocks, 600)] == [10, 10, 50]


def test_grey_check_finds_any_colour_pixel():
    import numpy as np

    from megatron_vlm.data.png import is_grey

    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 256, (300, 229, 1), dtype=np.uint8), 3, axis=2)  # odd width, > one block
    assert is_grey(grey)
    for y, x, c in [(0, 0, 0), (0, 0, 2), (299, 228, 2), (299, 228, 0), (150, 100, 1), *zip(rng.integers(0, 300, 20), rng.integers(0, 229, 20), rng.integers(0, 3, 20))]:
        tinted = grey.copy()
        tinted[y, x, c] ^= 1
        assert not is_grey(tinted), (y, x, c)


def test_png_writer_round_trips_through_pillow():
    import struct
    import zlib
    from io import BytesIO

    import numpy as np
    from PIL import Image

    from megatron_vlm.data.png import png_bytes

    def chunks(png: bytes):
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        at = 8
        while at < len(png):
            (n,) = struct.unpack(">I", png[at : at + 4])
            tag, body, (crc,) = png[at + 4 : at + 8], png[at + 8 : at + 8 + n], struct.unpack(">I", png[at + 8 + n : at + 12 + n])
            assert crc == zlib.crc32(tag + body), tag  # stdlib zlib as the reference for the CRCs
            yield tag
            at += 12 + n

    rng = np.random.default_rng(1)
    for shape, mode in [((37, 53), "L"), ((1, 1, 3), "RGB"), ((64, 33, 3), "RGB")]:
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        png = png_bytes(pixels)
        assert list(chunks(png)) == [b"IHDR", b"IDAT", b"IEND"]
        with Image.open(BytesIO(png)) as im:
            assert im.format == "PNG" and im.mode == mode and np.array_equal(np.asarray(im), pixels)
    strided = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)[..., 1]  # a channel view, as the pool passes
    with Image.open(BytesIO(png_bytes(strided))) as im:
        assert np.array_equal(np.asarray(im), strided)


def _paint_kinds_pdf() -> tuple[bytes, list[tuple[str, bool]]]:
    """One page per way of painting: (name, whether the grey probe can prove it grey)."""
    from io import BytesIO

    import numpy as np
    from PIL import Image

    def png(mode: str, pixels) -> bytes:
        buf = BytesIO()
        Image.fromarray(pixels, mode).save(buf, "PNG")
        return buf.getvalue()

    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))
    doc, kinds = pymupdf.open(), []

    def page(name: str, provable: bool):
        kinds.append((name, provable))
        p = doc.new_page(width=300, height=200)
        p.insert_text((20, 30), f"Page painted with {name}", fontsize=11, color=(0,))  # DeviceGray black
        return p

    p = page("DeviceGray black and white", True)
    p.insert_text((20, 80), "grey black text", fontsize=17, color=(0,))
    p.draw_rect(pymupdf.Rect(20.3, 100.3, 180.7, 150.7), color=(0,), fill=(1,), width=1.3)
    p = page("DeviceGray mid grey", False)
    p.insert_text((20, 80), "grey 0.4 text", fontsize=17, color=(0.4,))
    p.draw_rect(pymupdf.Rect(20.3, 100.3, 180.7, 150.7), color=(0.2,), fill=(0.75,), width=1.3)
    p = page("RGB black and white", True)
    p.insert_text((20, 80), "rgb black text", fontsize=17, color=(0, 0, 0))
    p.draw_rect(pymupdf.Rect(20.3, 100.3, 180.7, 150.7), color=(0, 0, 0), fill=(1, 1, 1), width=0.7)
    p = page("a grey image", True)
    p.insert_image(pymupdf.Rect(30.2, 60.1, 250.3, 170.9), stream=png("L", ramp))
    page("RGB mid grey", False).insert_text((20, 80), "rgb 0.4 grey", fontsize=17, color=(0.4, 0.4, 0.4))
    page("CMYK black", False).insert_text((20, 80), "cmyk black", fontsize=17, color=(0, 0, 0, 1))
    page("an RGB image of grey pixels", False).insert_image(pymupdf.Rect(30, 60, 250, 170), stream=png("RGB", np.repeat(ramp[..., None], 3, 2)))
    page("red text", False).insert_text((20, 80), "red", fontsize=17, color=(1, 0, 0))
    page("a highlight annotation", False).add_highlight_annot(pymupdf.Rect(18, 18, 200, 34))
    # a grey axial shading, painted with `sh`, and a Type3 font whose glyph (d0) paints itself red
    shading = doc.get_new_xref()
    doc.update_object(shading, "<< /ShadingType 2 /ColorSpace /DeviceGray /Coords [20 0 280 0] "
                               "/Function << /FunctionType 2 /Domain [0 1] /C0 [0] /C1 [1] /N 1 >> >>")
    glyph = doc.get_new_xref()
    doc.update_object(glyph, "<< >>")
    doc.update_stream(glyph, b"1000 0 d0 1 0 0 rg 0 0 800 800 re f")
    font = doc.get_new_xref()
    doc.update_object(font, f"<< /Type /Font /Subtype /Type3 /FontBBox [0 0 1000 1000] /FontMatrix [0.001 0 0 0.001 0 0] "
                            f"/CharProcs << /box {glyph} 0 R >> /Encoding << /Type /Encoding /Differences [97 /box] >> "
                            f"/FirstChar 97 /LastChar 97 /Widths [1000] /Resources << >> >>")
    for name, content, resources in [
        ("a grey shading", b"q 20 50 260 120 re W n /Sh1 sh Q", f"<< /Shading << /Sh1 {shading} 0 R >> >>"),
        ("a colour Type3 glyph", b"BT 0 g /T3 40 Tf 100 80 Td (aa) Tj ET", f"<< /Font << /T3 {font} 0 R >> >>"),
    ]:
        kinds.append((name, False))
        p = doc.new_page(width=300, height=200)
        doc.xref_set_key(p.xref, "Resources", resources)
        contents = doc.get_new_xref()
        doc.update_object(contents, "<< >>")
        doc.update_stream(contents, content)
        doc.xref_set_key(p.xref, "Contents", f"{contents} 0 R")
    return doc.tobytes(), kinds


def test_grey_pages_are_drawn_grey_only_when_proven_and_keep_their_pixels():
    """Pages that only paint grey-safe colours are rendered straight in grey; every other page goes
    through RGB. Either way the stored image is exactly pymupdf's own RGB render of the page, in
    grey (mode L) exactly when that render has R == G == B everywhere."""
    from io import BytesIO

    import numpy as np
    from PIL import Image

    from megatron_vlm.data.render import probe_paints

    data, kinds = _paint_kinds_pdf()
    pages, images = process_pdf(data, NO_OCR)
    ref = pymupdf.open(stream=data)
    assert len(images) == len(kinds) == ref.page_count
    modes = Counter()
    for (name, provable), image, ref_page in zip(kinds, images, ref):
        assert probe_paints(ref_page.get_displaylist()).grey is provable, name
        pix = ref_page.get_pixmap(dpi=144)
        rgb = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.width, 3)
        mode = "L" if (rgb == rgb[..., :1]).all() else "RGB"
        assert mode == "L" or not provable, name
        modes[mode, provable] += 1
        with Image.open(BytesIO(image)) as im:
            assert (im.mode, im.size) == (mode, (pix.width, pix.height)), name
            assert im.convert("RGB").tobytes() == pix.samples, name
    # grey pages proven by the probe, grey pages found by the pixel check, and colour pages
    assert modes == {("L", True): 3, ("L", False): 2, ("RGB", False): 6}, modes


def test_pages_said_to_paint_no_path_have_no_drawings(corpus):
    """Ruled tables are only looked for where the probe saw a path; pymupdf's get_cdrawings, read
    independently, must find nothing on every page the probe calls path-free."""
    from megatron_vlm.data.render import probe_paints

    data, _ = _paint_kinds_pdf()
    docs = [pymupdf.open(spec.path) for spec, _ in corpus] + [pymupdf.open(stream=data)]
    seen = Counter()
    for doc in docs:
        for page in doc:
            paths = probe_paints(page.get_displaylist()).paths
            seen[paths] += 1
            assert paths or not page.get_cdrawings(), (doc.name, page.number)
    assert seen[True] and seen[False], seen
    # and a table page keeps its table block
    spec, (pages, _) = next((s, r) for s, r in corpus if any(p.table for p in s.pages))
    assert any(b["kind"] == "table" for p in pages for b in p["blocks"])
