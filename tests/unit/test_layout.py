"""Layout, text quality and OCR on PDFs with the layouts of real documents (tests/layout_pdfs.py):
running headers and printed page numbers, a rule-only table, a table continued over a page, a font
without ToUnicode, a scanned Chinese page. Checked against the text put into each PDF and against
pymupdf read independently."""

from __future__ import annotations

import re
import shutil
import types
from collections import Counter

import pymupdf
import pytest

from megatron_vlm.data import furniture, layout, layout_model, ocr, textlines
from megatron_vlm.data.pdf import PdfSettings, process_pdf
from tests import layout_pdfs

NO_OCR = PdfSettings(ocr=False)
needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract not installed (apt-get install tesseract-ocr)")


def _words(text: str) -> Counter:
    return Counter(re.findall(r"\w+(?:[.]\d+)?", text))


def _body(page: dict) -> list[dict]:
    return [b for b in page["blocks"] if b["kind"] not in ("header", "footer", "page_number")]


def test_running_headers_and_printed_page_numbers():
    data, ref = layout_pdfs.running_headers(pages=4, first_number=11)
    pages, _ = process_pdf(data, NO_OCR)
    reference = pymupdf.open(stream=data)
    for page, ref_page, label in zip(pages, reference, ref["labels"]):
        headers = [b["text"] for b in page["blocks"] if b["kind"] == "header"]
        numbers = [b["text"] for b in page["blocks"] if b["kind"] == "page_number"]
        assert headers == [ref["header"]] and numbers == [label], page["blocks"]
        assert page["page_label"] == label != str(page["index"])
        assert not any(ref["header"] in b["text"] or b["text"] == label for b in _body(page))
        assert _words(page["text"]) == _words(ref_page.get_text()), page["index"]  # nothing lost, nothing added
        assert [b["kind"] for b in _body(page)][0] == "heading"


def test_headings_at_the_top_of_two_pages_are_not_running_headers():
    def page(i: int, heading: str) -> dict:
        return {"index": i, "height_pt": 800.0, "blocks": [
            {"kind": "heading", "bbox": [60, 60, 300, 80], "text": heading},
            {"kind": "paragraph", "bbox": [60, 100, 500, 300], "text": f"Body text {i}."}]}

    pages = [page(0, "Section 1: Markets"), page(1, "Section 2: Operations"), page(2, "Section 3: Markets"), page(3, "Section 4: Staff")]
    furniture.mark_furniture(pages)
    assert [p["blocks"][0]["kind"] for p in pages] == ["heading"] * 4
    assert [p["page_label"] for p in pages] == [None] * 4


def test_numbered_headings_that_match_the_page_numbers_stay_headings():
    """"1 Introduction" opening page 1 and "2 Methods" page 2 near the top margin, footers "- 1 / 6":
    the heading numbers run with the pages, but a heading is not where a running header sits on
    every page (it was relabelled a header, and the sections vanished from the QA facts)."""
    def page(i: int, heading: str | None) -> dict:
        blocks = [{"kind": "header", "bbox": [60, 30, 300, 42], "text": "Harlow Annual Review 2023"},
                  {"kind": "paragraph", "bbox": [60, 100, 500, 300], "text": f"Body text {i}."},
                  {"kind": "footer", "bbox": [60, 760, 400, 772], "text": f"Prepared by the survey team - {i + 1} / 6"}]
        if heading:
            blocks.insert(1, {"kind": "heading", "bbox": [60, 79, 200, 93], "text": heading})
        return {"index": i, "height_pt": 792.0, "blocks": blocks}

    pages = [page(0, "1 Introduction"), page(1, "2 Methods"), page(2, "2.1 Sampling"), page(3, None), page(4, "3 Results"), page(5, "4 Discussion")]
    furniture.mark_furniture(pages)
    assert [b["text"] for p in pages for b in p["blocks"] if b["kind"] == "heading"] == [
        "1 Introduction", "2 Methods", "2.1 Sampling", "3 Results", "4 Discussion"]
    assert [p["page_label"] for p in pages] == ["1", "2", "3", "4", "5", "6"]
    # Two such lines on one page (a heading and a margin note at its height) are one page where a
    # numbered line sits there, not two (counted twice, they made three with page 1 and turned
    # both headings into running headers).
    pages = [page(0, "1 Introduction"), page(1, "2 Methods"), page(2, "2.1 Sampling"), page(3, None), page(4, "3 Results"), page(5, "4 Discussion")]
    pages[1]["blocks"].insert(2, {"kind": "paragraph", "bbox": [320, 79, 500, 93], "text": "2 Reading notes"})
    furniture.mark_furniture(pages)
    assert [b["text"] for p in pages for b in p["blocks"] if b["kind"] == "heading"] == [
        "1 Introduction", "2 Methods", "2.1 Sampling", "3 Results", "4 Discussion"]
    assert pages[1]["blocks"][2]["kind"] == "paragraph"


def test_page_labels_follow_the_printed_numbers_roman_then_arabic():
    def page(i: int, footer: str, top: str) -> dict:
        return {"index": i, "height_pt": 800.0, "blocks": [
            {"kind": "paragraph", "bbox": [60, 40, 500, 60], "text": top},
            {"kind": "paragraph", "bbox": [60, 100, 500, 300], "text": "Body."},
            {"kind": "paragraph", "bbox": [290, 760, 310, 775], "text": footer}]}

    # front matter i-iii, then 1, 2, 3 whose header names the chapter and ends with the page number
    pages = [page(0, "i", "Preface"), page(1, "ii", "Contents"), page(2, "iii", "Acknowledgements"),
             page(3, "- 1 -", "Chapter one: Methods 1"), page(4, "- 2 -", "Chapter one: Results 2"), page(5, "- 3 -", "Chapter two: Data 3")]
    furniture.mark_furniture(pages)
    assert [p["page_label"] for p in pages] == ["i", "ii", "iii", "1", "2", "3"]
    assert [p["blocks"][2]["kind"] for p in pages] == ["page_number"] * 6
    assert [p["blocks"][0]["kind"] for p in pages] == ["paragraph", "paragraph", "paragraph", "header", "header", "header"]
    assert furniture.roman_value("xiv") == 14 and furniture.roman_value("mcmxc") == 1990 and furniture.roman_value("iiii") is None


def test_dates_and_totals_in_a_footer_are_not_page_labels():
    pages = [{"index": i, "height_pt": 600.0, "blocks": [
        {"kind": "footer", "bbox": [300, 570, 500, 585], "text": f"2015/12/23 {i + 1} / 6"},
        {"kind": "paragraph", "bbox": [60, 100, 500, 300], "text": f"Slide {i}."}]} for i in range(6)]
    pages[4]["blocks"][0]["text"] = "2015/12/23"  # a slide whose number was not printed
    furniture.mark_furniture(pages)
    assert [p["page_label"] for p in pages] == ["1", "2", "3", "4", None, "6"]


def test_rule_only_table_is_one_table_with_its_header():
    data, ref = layout_pdfs.rule_only_table()
    (page,), _ = process_pdf(data, NO_OCR)
    tables = [b for b in page["blocks"] if b["kind"] == "table"]
    assert len(tables) == 1
    table = tables[0]
    assert table["cells"] == ref["cells"] and table["header_rows"] == 1 and table["continued_from"] is None
    kinds = [b["kind"] for b in page["blocks"]]
    assert kinds.index("caption") + 1 == kinds.index("table")
    assert [b["text"] for b in page["blocks"] if b["kind"] == "caption"] == [ref["caption"]]
    cell_words = {w for row in ref["cells"] for cell in row for w in cell.split()}
    for b in page["blocks"]:  # the cells did not shatter into other blocks, and numbers are not headings
        if b["kind"] != "table":
            assert b["kind"] != "heading" and not (set(b["text"].split()) & cell_words - set(layout_pdfs.WORDS)), b
    # pymupdf's own reading of the page holds every cell (the reference for the words)
    assert _words(page["text"]) == _words(pymupdf.open(stream=data)[0].get_text())


def test_table_continued_over_a_page_keeps_its_header_rows():
    data, ref = layout_pdfs.continued_table()
    pages, _ = process_pdf(data, NO_OCR)
    first = [b for b in pages[0]["blocks"] if b["kind"] == "table"]
    second = [b for b in pages[1]["blocks"] if b["kind"] == "table"]
    assert len(first) == len(second) == 1
    assert first[0]["cells"] == ref["first"] and first[0]["continued_from"] is None
    table = second[0]
    assert table["continued_from"] == 0 and table["header_copied"] is True and table["header_rows"] == 1
    assert table["cells"] == [layout_pdfs.TABLE_HEADER, *ref["second"]]
    assert table["text"] == "\n".join(" | ".join(row) for row in ref["second"])  # what page 2 prints
    assert all(b["text"] for p in pages for b in p["blocks"]) and all(len(t["cells"]) >= 2 for t in first + second)


def test_font_without_tounicode_is_a_broken_text_layer():
    data, ref = layout_pdfs.without_tounicode()
    independent = pymupdf.open(stream=data)[0].get_text()
    assert "Results" not in independent and "\x01" in independent  # the reference reader gets glyph ids, not words
    (page,), _ = process_pdf(data, NO_OCR)
    assert page["text_quality"] == "broken" and page["ocr"] == "missing" and "Unicode map" in page["text_quality_reason"]
    assert page["has_text_layer"] is True


@needs_tesseract
def test_font_without_tounicode_is_ocred():
    data, ref = layout_pdfs.without_tounicode()
    (page,), _ = process_pdf(data, PdfSettings())
    assert page["text_quality"] == "ocr" and page["ocr"] == "tesseract" and page["script"] == "Latin"
    expected = _words(" ".join(ref["lines"]))
    found = _words(page["text"])
    assert sum((found & expected).values()) / sum(expected.values()) > 0.9, page["text"]
    assert page["ocr_confidence"] > ocr.LOW_CONFIDENCE and all(b["confidence"] is not None for b in page["blocks"])


@pytest.mark.skipif(not {"chi_sim", "osd"} <= ocr.installed_languages(), reason="Tesseract chi_sim/osd data not installed (apt-get install tesseract-ocr-chi-sim)")
def test_scanned_chinese_page_is_ocred_with_chinese_language_data():
    data, ref = layout_pdfs.chinese_scan()
    assert pymupdf.open(stream=data)[0].get_text().strip() == ""  # image only: no text layer at all
    (page,), _ = process_pdf(data, PdfSettings())
    assert page["ocr"] == "tesseract" and page["text_quality"] == "ocr" and page["has_text_layer"] is False
    assert page["script"] == "Han" and page["ocr_languages"].startswith("chi_sim")
    expected = Counter(ch for ch in ref["text"] if textlines.is_cjk(ch))
    found = Counter(ch for ch in page["text"] if textlines.is_cjk(ch))
    assert sum((found & expected).values()) / sum(expected.values()) > 0.9, page["text"]
    assert " " not in page["text"].replace("\n", "")[:20]  # no spaces between Chinese characters
    assert page["ocr_confidence"] > ocr.LOW_CONFIDENCE


@pytest.mark.skipif(not {"eng", "rus"} <= ocr.installed_languages(), reason="Tesseract eng/rus data not installed (apt-get install tesseract-ocr-rus)")
def test_english_scan_detected_as_cyrillic_is_read_in_english(monkeypatch):
    """Script detection took page 2 of a real English scan (APS sample) for Cyrillic; rus+eng read
    it more confidently than eng (93.8 vs 93.2) with "REVTeX" as "ВЕУТЕХ", and was kept."""
    text = ("The REVTeX class requires version 8.31 of natbib. The argument of the citation command "
            "may be a single key or a list of keys separated by commas, and each key may contain letters.")
    data, _ = layout_pdfs.scan(text)
    monkeypatch.setattr(ocr, "detect_script", lambda png: "Cyrillic")
    result = ocr.ocr_page(pymupdf.open(stream=data)[0])
    read = " ".join(b["text"] for b in result.blocks)
    assert result.languages == "eng" and result.script == "Latin" and "rus+eng" in result.tried, result.tried
    assert not re.search(r"[\u0400-\u04ff]", read), read
    expected = _words(text)
    assert sum((_words(read) & expected).values()) / sum(expected.values()) > 0.9, read


def test_a_description_list_the_model_calls_a_table_keeps_its_headings(monkeypatch):
    """On biblatex's German manual (page 4) the layout model took a description list (package names
    beside paragraphs) for one 5x2 table from the first paragraph to the last entry, with the
    section headings between the entries inside it; the pool kept it as a table. That region, with
    its grid (a column line after the names, a row line at each entry), is given here in place of
    the model's answer: its cells are paragraphs, so it is no table, and its lines are read as text."""
    data, ref = layout_pdfs.description_list()
    page = pymupdf.open(stream=data)[0]
    box = (40.0, 60.0, 490.0, ref["bottom"])
    grid = types.SimpleNamespace(h_lines_norm=[(y - box[1]) / (box[3] - box[1]) for y in ref["entries"]],
                                 v_lines_norm=[(ref["term_right"] + 4 - box[0]) / (box[2] - box[0])])
    monkeypatch.setattr(layout_model, "page_regions", lambda p: [{"class_name": "table", "group_bbox": box, "table_grid": grid}])
    (result,), _ = process_pdf(data, NO_OCR)
    assert not [b for b in result["blocks"] if b["kind"] == "table"], result["blocks"]
    assert [b["text"] for b in result["blocks"] if b["kind"] == "heading"] == ref["headings"]
    assert _words(result["text"]) == _words(page.get_text())  # nothing lost, nothing added
    assert all(any(b["text"].startswith(term + " ") for b in result["blocks"]) for term in ref["terms"])


def test_hyphenation_bold_numbers_and_schematics():
    data, ref = layout_pdfs.details()
    pages, _ = process_pdf(data, NO_OCR)
    assert ref["joined"] in pages[0]["text"] and "measure-" not in pages[0]["text"]
    number = [b for b in pages[0]["blocks"] if b["text"] == ref["number"]]
    assert len(number) == 1 and number[0]["kind"] != "heading"
    assert not [b for b in pages[1]["blocks"] if b["kind"] == "table"]  # a grid drawing with three labels is no table
    ruled, _ = process_pdf(data, PdfSettings(ocr=False, layout="rules"))  # the rules see its lines as a ruled grid
    assert not [b for b in ruled[1]["blocks"] if b["kind"] == "table"] and all(label in ruled[1]["text"] for label in ref["labels"])
    assert all(label in pages[1]["text"] for label in ref["labels"])


def test_ocr_blocks_carry_character_weighted_confidence(monkeypatch):
    """Tesseract's TSV (canned here) -> blocks with the mean confidence of their characters."""
    tsv = "\n".join([
        "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext",
        "5\t1\t1\t1\t1\t1\t100\t100\t80\t30\t90.0\tRevenue",   # 7 chars at 90
        "5\t1\t1\t1\t1\t2\t200\t100\t40\t30\t30.0\t4,3l2",     # 5 chars at 30
        "5\t1\t2\t1\t1\t1\t100\t300\t60\t30\t96.0\tTotal",     # 5 chars at 96
        "5\t1\t2\t1\t1\t2\t170\t300\t10\t30\t-1.0\t",          # no text: skipped
    ])
    monkeypatch.setattr(ocr, "_tesseract", lambda png, args: tsv)
    blocks, conf = ocr._read(b"", "eng", 72 / 300, pymupdf.Identity)
    assert [b["text"] for b in blocks] == ["Revenue 4,3l2", "Total"]
    assert blocks[0]["confidence"] == round((7 * 90 + 5 * 30) / 12, 1) and blocks[0]["low_confidence"] is True
    assert blocks[1]["confidence"] == 96.0 and blocks[1]["low_confidence"] is False
    assert conf == round((7 * 90 + 5 * 30 + 5 * 96) / 17, 1)
    assert blocks[0]["bbox"] == [24.0, 24.0, 57.6, 31.2]  # pixels at 300 DPI -> points


def test_words_are_read_in_lines_whatever_their_script():
    # A cell "收入 2023年 4,312" whose CJK glyph boxes are taller and start higher than the Latin
    # ones: sorting words by (bottom, x) reads "2023年 4,312 收入"; grouping by vertical overlap
    # keeps one line, read left to right.
    words = [(100, 99, 120, 112.5, "收入"), (125, 101, 160, 111, "2023年"), (170, 101.5, 200, 111.2, "4,312")]
    assert sorted(words, key=lambda w: (round(w[3]), w[0]))[0][4] == "2023年"  # the old order
    assert textlines.words_text(words) == "收入 2023年 4,312"
    two_lines = words + [(100, 120, 120, 131, "合计"), (125, 121, 150, 130, "9,999")]
    assert textlines.words_text(two_lines) == "收入 2023年 4,312 合计 9,999"
    assert textlines.join_lines(["The measure-", "ment was repeated"]) == "The measurement was repeated"
    assert textlines.join_lines(["state-", "Of the art"]) == "state- Of the art"  # a capital: not a split word
    assert textlines.join_lines(["soft\u00ad", "ware"]) == "software" and textlines.join_lines(["第一", "部分"]) == "第一部分"


def test_header_rows_end_at_the_full_width_rule():
    from megatron_vlm.data import tables

    # rows at y 0-10 ("Item" over columns 0-1), 10-20 (column names), 20-30 and 30-40 (data);
    # a \cmidrule under "Item" over columns 0-1 only, a \midrule across the table under the names
    ys, xs = [0, 10, 20, 30, 40], [0, 50, 100, 150]
    words = [(60, 2, 80, 8, "Item"), (5, 12, 40, 18, "Animal"), (55, 12, 95, 18, "Kind"), (105, 12, 145, 18, "Price"),
             (5, 22, 40, 28, "Gnu"), (55, 22, 95, 28, "wild"), (105, 22, 145, 28, "92.50"),
             (5, 32, 40, 38, "Emu"), (55, 32, 95, 38, "tame"), (105, 32, 145, 38, "33.33")]
    cmid, mid = (10.0, 2.0, 98.0), (20.0, 0.0, 150.0)
    block = tables.table_block(ys, xs, words, [cmid, mid])
    assert block["header_rows"] == 2 and block["cells"][:2] == [["", "Item", ""], ["Animal", "Kind", "Price"]]
    assert tables.table_block(ys, xs, words, [cmid])["header_rows"] == 1  # only the partial rule: above it
    assert tables.table_block(ys, xs, words, [])["header_rows"] == 1
    assert tables.table_block(ys, xs, words[:2], []) is None  # two words in a 4x3 grid: not a table


def test_an_index_set_in_columns_is_not_a_table():
    """ctex's index (entries, dot leaders, page lists over two columns) came out as a table whose
    column "A" held "4252,"; a table of numbers with thousands separators stays a table."""
    from megatron_vlm.data import tables

    ys, xs = [0, 10, 20, 30, 40], [0, 100, 200]

    def grid(rows):
        return [(5 + 100 * c, 2 + 10 * r, 95 + 100 * c, 8 + 10 * r, text) for r, row in enumerate(rows) for c, text in enumerate(row)]

    index = [["\\abovedisplayskip . . . .", "4251, 4254,"], ["4259, 4266, 4270,", "4290,"],
             ["\\abstractname . . . . . .", "2550"], ["\\addtocontents", "4252,"]]
    assert tables.table_block(ys, xs, grid(index)) is None
    revenue = [["Region", "2023"], ["North", "4,312"], ["South", "3,905"], ["East", "12,040"]]
    assert tables.table_block(ys, xs, grid(revenue))["cells"] == revenue


def test_two_close_columns_under_one_grid_column_are_split():
    """zh_texproposal's 表2: the layout model drew "热度" (a number) and "备注" (a remark that starts
    just right of the number) as one column, so cells read "5 维护良好，..."."""
    from megatron_vlm.data import tables

    ys, xs = [0, 12, 24, 36, 48], [0, 90, 320]
    words = [(5, 2, 60, 10, "School"), (100, 2, 118, 10, "Heat"), (200, 2, 236, 10, "Remark"),
             (5, 14, 60, 22, "Tsinghua"), (105, 14, 110, 22, "5"), (121, 14, 150, 22, "well"), (152, 14, 190, 22, "kept"),
             (5, 26, 60, 34, "Nanjing"), (105, 26, 110, 34, "4"),
             (5, 38, 60, 46, "Fudan"), (105, 38, 110, 46, "2"), (121, 38, 160, 46, "dual")]
    assert tables.table_block(ys, xs, words)["cells"] == [
        ["School", "Heat", "Remark"], ["Tsinghua", "5", "well kept"], ["Nanjing", "4", ""], ["Fudan", "2", "dual"]]
    # a header of two words a space apart ("Item Description") is one column's name
    close = [words[0], (100, 2, 118, 10, "Item"), (121, 2, 170, 10, "Description"), *words[3:]]
    assert tables.table_block(ys, xs, close)["cells"][0] == ["School", "Item Description"]


def test_footnote_marks_are_left_out_of_the_text_and_exponents_stay():
    data, ref = layout_pdfs.footnotes()
    (page,), _ = process_pdf(data, NO_OCR)
    text = " ".join(page["text"].split())
    for line in ref["lines"]:  # "compatability6 seemed" and "页面z，" would fail here; "10" + raised 6 stays "106"
        assert line in text, line
    assert "An earlier version broke" in text  # the footnote itself is kept
    for kind in ("rules", "model"):  # the table's words come from another reader than the lines
        (page,), _ = process_pdf(data, PdfSettings(ocr=False, layout=kind))
        assert [b["cells"] for b in page["blocks"] if b["kind"] == "table"] == [ref["cells"]], kind


def test_a_text_region_that_opens_with_a_footnote_mark_is_a_footnote():
    """zh_texproposal p12: the model called the first of three footnotes under a table text, so the
    table no longer closed the page and its continuation on the next page was not linked."""
    data, ref = layout_pdfs.footnotes()
    page = pymupdf.open(stream=data)[0]
    text_dict = page.get_text("dict")
    note = next(ln["bbox"] for b in text_dict["blocks"] for ln in b["lines"] if "An earlier version" in "".join(s["text"] for s in ln["spans"]))
    body = (60, 80, 560, 200)
    listing = (60, ref["listing_top"], 560, ref["listing_top"] + 30)  # small line numbers open its lines: no footnote
    regions = [{"class_name": "text", "group_bbox": [*box, 0.9]} for box in (body, listing, (60, note[1] - 2, 560, note[3] + 2))]
    blocks, _ = layout.model_layout(text_dict, page.get_textpage(), page, regions)
    assert [b["kind"] for b in blocks] == ["paragraph", "paragraph", "footnote"], blocks
    assert blocks[1]["text"].startswith("5 \\setlength") and blocks[2]["text"].startswith("6 An earlier version")
