"""Page furniture across a document: running headers, footers, page numbers, printed page labels.

A running header is text in a page's top margin that recurs on other pages ("Chapter 3. Results",
"Trovato and Tobin, et al."), a footer the same in the bottom margin, a page number a margin
block that is only a number ("12", "- 12 -", "Page 12 of 40", "xiv", "第 12 页"). A margin text
recurs when it is on MIN_REPEATS pages as is, or on MIN_MASKED_REPEATS pages and MASKED_SHARE of
the document with every digit and roman numeral replaced by "#" ("Vol. 3, p. 12"); headings at the
top of two pages ("Section 2: Markets", "Section 5: Markets") are not running headers.
`mark_furniture` relabels such blocks `header` / `footer` / `page_number` (a block the layout model
already called a page footer keeps that label, or becomes `page_number`; one it called a page
header that no other page repeats is a title, as on slides, and becomes a `heading` unless a page
number runs in it), and sets each page's `page_label`: the page number printed on it, as printed
("23", "iv"), or None.

Which printed number is the page's label: every number standing alone in a page-number block, or
at the start or end of a header or footer, is a candidate. The printed number of a page minus its
PDF index is the same across a run of pages (front matter in roman numerals has its own offset),
so the candidate whose offset most pages share wins, when at least two pages and MIN_RUN_SHARE
of the pages with numbers share it (numbers printed on more than two pages are dates, years or
totals, not page numbers, and are left out); an arabic number that is the whole of a
page-number block is kept even when its offset is unique (e.g. a one-page document). A margin
line that does not repeat (a header naming the current section) becomes a header or footer when
the number at its start or end runs with the pages on at least three of them (two in a two-page
document) and it starts at the same height on that many pages (a numbered section heading that
opens pages 1 and 2 near the top is not one).
"""

from __future__ import annotations

import math
import re
from collections import Counter

TOP_BAND = 0.12  # a block ending above this share of the page height is in the top margin
BOTTOM_BAND = 0.88  # a block starting below this share is in the bottom margin
MAX_FURNITURE_CHARS = 160
MIN_REPEATS = 2  # pages a margin text must appear on, exactly, to be a running header or footer
MIN_MASKED_REPEATS = 3  # ... or with its numbers masked, on this many pages and MASKED_SHARE of the document
MASKED_SHARE = 0.3
MAX_PAGES_PER_NUMBER = 2  # a page number is printed on at most this many pages (more: a year, a total, a date)
SAME_PLACE_PT = 4.0  # a numbered margin line is a running header when it starts within this of its place on other pages
MIN_RUN_SHARE = 0.25  # the pages whose numbers share an offset with a page's label, as a share of pages with numbers
_ROMAN_RE = re.compile(r"^(?=[mdclxvi])m{0,3}(?:cm|cd|d?c{0,3})(?:xc|xl|l?x{0,3})(?:ix|iv|v?i{0,3})$", re.IGNORECASE)
_NUMBER = r"(\d{1,4}|[ivxlcdm]{1,8})"
PAGE_NUMBER_RE = re.compile(
    rf"^[\W_]{{0,3}}(?:(?:page|seite|p\.|pag\.|página|pagina|страница|стр\.|第)\s*)?{_NUMBER}"
    rf"(?:\s*(?:/|of|von|de|sur|из)\s*\d{{1,4}})?\s*(?:页|頁|ページ)?[\W_]{{0,3}}$",
    re.IGNORECASE,
)
# a number at the start or end of a margin line; "4 / 17" and "4 of 17" at the end give the 4
_EDGE_NUMBER_RE = re.compile(rf"^{_NUMBER}\b|\b{_NUMBER}(?:\s*(?:/|of|von|de|sur|из)\s*\d{{1,4}})?$", re.IGNORECASE)
_DIGITS_RE = re.compile(r"\d+")


def roman_value(token: str) -> int | None:
    """The value of a roman numeral ("xiv" -> 14), None when the token is not one."""
    if not _ROMAN_RE.match(token):
        return None
    values = {"i": 1, "v": 5, "x": 10, "l": 50, "c": 100, "d": 500, "m": 1000}
    digits = [values[ch] for ch in token.lower()]
    return sum(-d if i + 1 < len(digits) and d < digits[i + 1] else d for i, d in enumerate(digits))


def _number(token: str) -> tuple[bool, int] | None:
    """(is roman, value) of a page-number token."""
    if token.isdigit():
        return False, int(token)
    value = roman_value(token)
    return (True, value) if value else None


def _key(text: str) -> str:
    """The text with digits and roman-numeral words as "#", lower case, spaces collapsed."""
    words = [("#" if roman_value(w) else w) for w in _DIGITS_RE.sub("#", text.lower()).split()]
    return " ".join(words)


def _band(block: dict, height: float) -> str | None:
    y0, y1 = block["bbox"][1], block["bbox"][3]
    if y1 <= TOP_BAND * height:
        return "top"
    if y0 >= BOTTOM_BAND * height:
        return "bottom"
    return None


def mark_furniture(pages: list[dict]) -> None:
    """Relabel running headers / footers / page numbers and set page["page_label"] on every page."""
    exact: dict[tuple[str, str], set[int]] = {}
    masked: dict[tuple[str, str], set[int]] = {}
    margin: list[tuple[dict, dict, str | None]] = []
    for page in pages:
        for block in page.get("blocks", []):
            band = _band(block, page["height_pt"])
            if block["kind"] in ("header", "footer") or (band and block["kind"] != "table" and len(block["text"]) <= MAX_FURNITURE_CHARS):
                margin.append((page, block, band))
                if band:
                    exact.setdefault((band, " ".join(block["text"].lower().split())), set()).add(page["index"])
                    masked.setdefault((band, _key(block["text"])), set()).add(page["index"])
    masked_needed = max(MIN_MASKED_REPEATS, MASKED_SHARE * len(pages))
    candidates: dict[int, list[tuple[str, bool, int, bool, dict | None]]] = {}  # page -> (token, roman, value, alone, unmarked block)
    for page, block, band in margin:
        text = " ".join(block["text"].split())
        alone = PAGE_NUMBER_RE.match(text)
        repeated = band is not None and (len(exact[(band, " ".join(block["text"].lower().split()))]) >= MIN_REPEATS
                                         or len(masked[(band, _key(block["text"]))]) >= masked_needed)
        unmarked = None
        if alone:
            block["kind"] = "page_number"
        elif block["kind"] == "header" and not repeated and band != "bottom" and any(ch.isalpha() for ch in text):
            block["kind"] = "heading"  # a page header the model saw that no other page repeats: a title (slides)
            unmarked = block
        elif block["kind"] in ("header", "footer") or repeated:
            block["kind"] = "header" if block["kind"] == "header" or (block["kind"] != "footer" and band == "top") else "footer"
        else:
            unmarked = block  # a margin line that changes from page to page; furniture if its number runs with the pages
        if alone:
            tokens = [(alone.group(1), True)]
        else:
            tokens = [(t, False) for m in _EDGE_NUMBER_RE.finditer(text) for t in m.groups() if t]
        for token, is_alone in tokens:
            number = _number(token)
            if number:
                candidates.setdefault(page["index"], []).append((token, number[0], number[1], is_alone, unmarked))
    # A number printed on many pages (a year, a total "of 17", a date) is not a page number.
    spread = Counter(number for found in candidates.values() for number in {(c[1], c[2]) for c in found})
    candidates = {i: [c for c in found if spread[(c[1], c[2])] <= MAX_PAGES_PER_NUMBER] for i, found in candidates.items()}
    offsets = Counter(
        (roman, value - index) for index, found in candidates.items() for roman, value in {(c[1], c[2]) for c in found}
    )
    strong_needed = max(2, math.ceil(MIN_RUN_SHARE * sum(1 for found in candidates.values() if found)))
    weak_needed = max(strong_needed, min(3, len(pages)))
    numbered_lines: list[tuple[dict, dict]] = []  # (page, margin line whose number is the page's label)
    for page in pages:
        found = candidates.get(page["index"], [])
        best = max(found, key=lambda c: (offsets[(c[1], c[2] - page["index"])], c[3], c[4] is None), default=None)
        runs = offsets[(best[1], best[2] - page["index"])] if best is not None else 0
        needed = strong_needed if best is None or best[4] is None else weak_needed
        if best is not None and (runs >= needed or (best[3] and not best[1] and best[4] is None)):
            page["page_label"] = best[0]
            numbered_lines += [(page, c[4]) for c in found
                               if c[4] is not None and (c[1], c[2]) == (best[1], best[2]) and runs >= weak_needed]
        else:
            page["page_label"] = None
    # Such a line is furniture (a header naming the section, then the page number) when it sits where
    # it sits on other pages: a running header keeps its place, a section heading "2 Methods" that
    # happens to open page 2 near the top margin does not repeat its position on enough pages.
    for page, block in numbered_lines:
        band = _band(block, page["height_pt"])
        same_place = len({other_page["index"] for other_page, other in numbered_lines  # pages, not lines
                          if _band(other, other_page["height_pt"]) == band and abs(other["bbox"][1] - block["bbox"][1]) <= SAME_PLACE_PT})
        if same_place >= weak_needed:
            block["kind"] = "header" if band == "top" else "footer"
