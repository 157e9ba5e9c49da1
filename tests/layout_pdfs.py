"""PDFs with the layouts real documents have, made with pymupdf, each with the text put into it.

Used by tests/unit/test_layout.py; every builder returns what it drew (the reference the tests
check the pool against), and writes nothing but the PDF bytes it returns.
"""

from __future__ import annotations

import pymupdf

LETTER = (612.0, 792.0)
WORDS = ("the committee reviewed each measurement twice before the results were released to every "
         "partner and the numbers below summarise what was found during the spring campaign").split()


def _paragraph(page: pymupdf.Page, y: float, n_words: int, seed: int, size: float = 10.5, width: float = 470.0, x: float = 72.0) -> float:
    """Write a paragraph of filler words at (x, y); return the y below it."""
    words = [WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(n_words)]
    line = ""
    for word in words:
        trial = f"{line} {word}".strip()
        if pymupdf.get_text_length(trial, fontname="helv", fontsize=size) > width:
            page.insert_text((x, y), line, fontsize=size, fontname="helv")
            y, line = y + size * 1.3, word
        else:
            line = trial
    page.insert_text((x, y), line, fontsize=size, fontname="helv")
    return y + size * 1.3 + 10


def running_headers(pages: int = 4, first_number: int = 11) -> tuple[bytes, dict]:
    """A header line at the top of every page, a printed page number at the bottom (first_number,
    first_number + 1, ...), and a heading and paragraphs in between."""
    doc = pymupdf.open()
    header = "Journal of Layout Studies, Volume 7"
    for i in range(pages):
        page = doc.new_page(width=LETTER[0], height=LETTER[1])
        page.insert_text((72, 40), header, fontsize=9, fontname="helv")
        page.draw_line((72, 46), (540, 46), width=0.4)
        page.insert_text((72, 100), f"Findings of part {i + 1}", fontsize=15, fontname="hebo")
        y = _paragraph(page, 130, 80, i)
        _paragraph(page, y, 60, i + 5)
        number = str(first_number + i)
        page.insert_text((306 - pymupdf.get_text_length(number, fontsize=10) / 2, 760), number, fontsize=10, fontname="helv")
    return doc.tobytes(), {"header": header, "labels": [str(first_number + i) for i in range(pages)]}


def _rule_table(page: pymupdf.Page, top: float, header: list[str] | None, rows: list[list[str]], xs: list[float],
                row_h: float = 16.0, bottom_rule: bool = True) -> float:
    """A booktabs-style table: horizontal rules only (above, under the header, at the end), columns
    aligned by whitespace; returns the y below it."""
    y = top
    page.draw_line((xs[0] - 4, y), (540, y), width=1.0)
    if header:
        for x, cell in zip(xs, header):
            page.insert_text((x, y + 12), cell, fontsize=10, fontname="hebo")
        y += row_h + 2
        page.draw_line((xs[0] - 4, y), (540, y), width=0.5)
    for row in rows:
        for x, cell in zip(xs, row):
            page.insert_text((x, y + 12), cell, fontsize=10, fontname="helv")
        y += row_h
    if bottom_rule:
        page.draw_line((xs[0] - 4, y + 2), (540, y + 2), width=1.0)
    return y + 14


TABLE_HEADER = ["Method", "Accuracy", "Recall", "Time (s)"]


def description_list() -> tuple[bytes, dict]:
    """A manual's description list (biblatex's German manual, page 4): package names in the left
    margin, each beside a paragraph, and numbered section headings between the entries.
    ref["entries"]: the top y of each entry; ref["term_right"]: where the names end."""
    doc = pymupdf.open()
    page = doc.new_page(width=LETTER[0], height=LETTER[1])
    headings, terms, entries = ["1.5.2 Recommended packages", "1.5.3 Compatible classes"], ["babel", "csquotes", "xpatch", "hyperref"], []
    y = _paragraph(page, 80, 45, 1, width=370, x=113)
    for i, term in enumerate(terms):
        if i in (0, 2):
            page.insert_text((113, y + 6), headings[i // 2], fontsize=13, fontname="hebo")
            y = _paragraph(page, y + 30, 30, 9 + i, width=370, x=113)
        page.insert_text((105 - pymupdf.get_text_length(term, fontsize=10.5), y), term, fontsize=10.5, fontname="helv")
        entries.append(y - 10)
        y = _paragraph(page, y, 55 + 7 * i, 3 + i, width=370, x=113)
    return doc.tobytes(), {"headings": headings, "terms": terms, "entries": entries, "term_right": 105.0, "bottom": y}


def table_rows(n: int, start: int = 0) -> list[list[str]]:
    names = ["Baseline", "Ridge", "Lasso", "Forest", "Boosting", "Network", "Ensemble", "Nearest", "Kernel", "Bayes",
             "Stacked", "Linear", "Logistic", "Pruned", "Sparse", "Dense", "Shallow", "Deep", "Wide", "Narrow"]
    return [[names[(start + i) % len(names)] + (f" {(start + i) // len(names) + 1}" if start + i >= len(names) else ""),
             f"{70 + (start + i) * 1.3:.1f}", f"{0.5 + (start + i) * 0.02:.2f}", str(12 + 7 * (start + i))] for i in range(n)]


def rule_only_table() -> tuple[bytes, dict]:
    """One page: a paragraph, a caption, a rule-only table with a header row, a paragraph."""
    doc = pymupdf.open()
    page = doc.new_page(width=LETTER[0], height=LETTER[1])
    y = _paragraph(page, 90, 70, 1)
    caption = "Table 1: Scores of each method"
    page.insert_text((72, y + 6), caption, fontsize=9.5, fontname="helv")
    rows = table_rows(5)
    y = _rule_table(page, y + 16, TABLE_HEADER, rows, [80, 220, 330, 440])
    _paragraph(page, y + 10, 60, 2)
    return doc.tobytes(), {"caption": caption, "cells": [TABLE_HEADER, *rows]}


def continued_table(first_rows: int = 14, second_rows: int = 6) -> tuple[bytes, dict]:
    """A rule-only table that starts low on page 1 and goes on at the top of page 2 without its header."""
    doc = pymupdf.open()
    xs = [80, 220, 330, 440]
    page = doc.new_page(width=LETTER[0], height=LETTER[1])
    y = _paragraph(page, 90, 160, 3)
    first = table_rows(first_rows)
    _rule_table(page, max(y, 792 - 60 - 18 * (first_rows + 1)), TABLE_HEADER, first, xs, bottom_rule=False)
    page = doc.new_page(width=LETTER[0], height=LETTER[1])
    second = table_rows(second_rows, start=first_rows)
    y = _rule_table(page, 72, None, second, xs)
    _paragraph(page, y + 10, 80, 4)
    return doc.tobytes(), {"first": [TABLE_HEADER, *first], "second": second}


def footnotes() -> tuple[bytes, dict]:
    """Body lines with raised footnote marks ("...compatability" + raised 6; a Dingbats mark
    after Chinese text), raised exponents that are not marks ("10" + raised 6, "m" + raised 2,
    with no footnote 2), a ruled table whose header "Windows" carries footnote 3, and at the foot of
    the page the footnotes, each opening with its mark in a smaller size or another font, or in
    small type. The reference: each body line and the table's cells as a reader reads them."""
    doc = pymupdf.open()
    page = doc.new_page(width=LETTER[0], height=LETTER[1])
    y = _paragraph(page, 90, 40, 6)
    lines = []

    def raised(y: float, before: str, mark: str, after: str, font: str = "helv", mark_font: str = "helv") -> None:
        page.insert_text((72, y), before, fontsize=10.5, fontname=font)
        x = 72 + pymupdf.get_text_length(before, fontname=font, fontsize=10.5)
        page.insert_text((x, y - 4), mark, fontsize=7, fontname=mark_font)
        x += pymupdf.get_text_length(mark, fontname=mark_font, fontsize=7)
        page.insert_text((x, y), after, fontsize=10.5, fontname=font)

    raised(y, "with better compatability", "6", " seemed to like all the rules")
    lines.append("with better compatability seemed to like all the rules")
    raised(y + 16, "the sample held 2.5 x 10", "6", " cells in each well")
    lines.append("the sample held 2.5 x 106 cells in each well")
    raised(y + 32, "each plate covered 4 m", "2", " of the bench")
    lines.append("each plate covered 4 m2 of the bench")
    raised(y + 48, "版式见页面", "z", "，以及页眉", font="china-s", mark_font="zadb")
    lines.append("版式见页面，以及页眉")
    cells = [["System", "Windows"], ["Font", "SimSun"], ["Size", "12"]]
    top, xs = y + 80, (72, 200, 330)
    for r, row in enumerate(cells):  # a ruled grid; the header "Windows" carries footnote 3
        for c, text in enumerate(row):
            page.insert_text((xs[c] + 4, top + 16 * r + 12), text, fontsize=10.5, fontname="helv")
        if r == 0:
            page.insert_text((xs[1] + 4 + pymupdf.get_text_length("Windows", fontname="helv", fontsize=10.5), top + 8), "3",
                             fontsize=7, fontname="helv")
    for r in range(len(cells) + 1):
        page.draw_line((xs[0], top + 16 * r), (xs[-1], top + 16 * r), width=0.5)
    for x in xs:
        page.draw_line((x, top), (x, top + 16 * len(cells)), width=0.5)
    listing = ["\\setlength{\\parindent}{0pt}", "\\newcommand{\\Note}{x}"]
    for i, code in enumerate(listing):  # a listing with small line numbers: they open lines, but no text refers to them
        page.insert_text((72, top + 80 + 11 * i), str(5 + i), fontsize=6, fontname="helv")
        page.insert_text((78, top + 80 + 11 * i), code, fontsize=8, fontname="cour")
    page.insert_text((72, 688), "3", fontsize=8, fontname="helv")  # same size and font as its note, which is small
    page.insert_text((78, 688), "Windows 10 and later.", fontsize=8, fontname="helv")
    page.insert_text((72, 700), "6", fontsize=6, fontname="helv")
    page.insert_text((78, 703), "An earlier version broke with the colour package.", fontsize=8, fontname="helv")
    page.insert_text((72, 718), "z", fontsize=8, fontname="zadb")
    page.insert_text((72 + pymupdf.get_text_length("z", fontname="zadb", fontsize=8), 718), "页眉页脚需要调整", fontsize=8, fontname="china-s")
    return doc.tobytes(), {"lines": lines, "cells": cells, "listing_top": top + 70}


def without_tounicode(text: str = "Results of the spring campaign show that every partner reported on time") -> tuple[bytes, dict]:
    """A page whose text is in an embedded TrueType font whose ToUnicode map was removed: the glyph
    ids come out as characters (what real PDFs with such fonts give)."""
    doc = pymupdf.open()
    page = doc.new_page(width=LETTER[0], height=LETTER[1])
    page.insert_font(fontname="F0", fontbuffer=pymupdf.Font("cour").buffer)
    lines = [text, "The second line says the same thing in other words for the reader", "A third line closes the paragraph here"]
    for i, line in enumerate(lines):
        page.insert_text((72, 120 + 22 * i), line, fontname="F0", fontsize=12)
    broken = pymupdf.open("pdf", doc.tobytes())
    for xref in range(1, broken.xref_length()):
        if broken.xref_get_key(xref, "ToUnicode")[0] != "null":
            broken.xref_set_key(xref, "ToUnicode", "null")
    return broken.tobytes(garbage=1), {"lines": lines}


CHINESE = ("本报告介绍了春季测量活动的主要结果。所有合作单位都按时提交了数据，"
           "委员会对每一项测量进行了两次核对。结果表明，新方法的准确率明显高于原有方法，"
           "而且所需的时间更短。下一阶段将扩大测量范围，并公开全部原始数据。")


def chinese_scan(text: str = CHINESE, dpi: int = 200) -> tuple[bytes, dict]:
    """An image-only page (no text layer) showing Chinese text, as a scanner would give it."""
    return scan(text, "cjk", dpi)


def scan(text: str, font: str = "helv", dpi: int = 200) -> tuple[bytes, dict]:
    """An image-only page (no text layer) showing `text` in one of pymupdf's built-in fonts."""
    draft = pymupdf.open()
    page = draft.new_page(width=LETTER[0], height=LETTER[1])
    page.insert_font(fontname="f", fontbuffer=pymupdf.Font(font).buffer)
    page.insert_textbox(pymupdf.Rect(72, 90, 540, 400), text, fontname="f", fontsize=14, lineheight=1.6)
    pix = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY)
    image_only = pymupdf.open()
    image_only.new_page(width=LETTER[0], height=LETTER[1]).insert_image(pymupdf.Rect(0, 0, *LETTER), stream=pix.tobytes("png"))
    return image_only.tobytes(), {"text": text}


def details() -> tuple[bytes, dict]:
    """Page 0: a paragraph with a word hyphenated at a line end, a bold number on its own line;
    page 1: a schematic drawn with a grid of many lines and a few labels (not a table)."""
    doc = pymupdf.open()
    page = doc.new_page(width=LETTER[0], height=LETTER[1])
    page.insert_text((72, 90), "Measured values", fontsize=15, fontname="hebo")
    page.insert_text((72, 130), "The committee checked every measure-", fontsize=10.5, fontname="helv")
    page.insert_text((72, 144), "ment twice before releasing the final numbers to all partners.", fontsize=10.5, fontname="helv")
    page.insert_text((72, 180), "12.5", fontsize=10.5, fontname="hebo")
    _paragraph(page, 210, 60, 6)
    page = doc.new_page(width=LETTER[0], height=LETTER[1])
    for k in range(25):
        page.draw_line((72 + 18 * k, 150), (72 + 18 * k, 600), width=0.4)
        page.draw_line((72, 150 + 18 * k), (504, 150 + 18 * k), width=0.4)
    for label, (x, y) in {"valve": (100, 200), "pump": (300, 380), "tank": (420, 520)}.items():
        page.insert_text((x, y), label, fontsize=9, fontname="helv")
    page.insert_text((72, 640), "Figure 3: Layout of the test rig", fontsize=9.5, fontname="helv")
    return doc.tobytes(), {"joined": "measurement", "number": "12.5", "labels": ["valve", "pump", "tank"]}
