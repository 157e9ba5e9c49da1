"""Layout blocks of one page from its text (pymupdf's text dict), in reading order.

Two ways to find the blocks (`PdfSettings.layout`):
- "model" (default): pymupdf's layout model (layout_model.py) labels regions; each of the
  page's text lines goes to the region that holds most of it, and the region's kind names the
  block: heading (title, section-header), paragraph (text), list (consecutive list items of one
  column, one item per line), caption, footnote, formula, figure (text inside a picture), header /
  footer (page-header / page-footer), table (cells filled from the page's words, tables.py).
  Lines no region holds, and those of a table region that holds no table (tables.table_block
  refuses it), are grouped and classified as in "rules". Blocks are put in reading order
  as the rules do (below): the model's own order was worse on real title pages and papers.
- "rules": cheap and blind to rule-only and whitespace tables: each block of the text dict is
  split where the line style (size, bold) changes, then classified: heading (larger than the
  document's body size, or bold and short), list (bullet or enumerator), caption ("Table 3:",
  "Figure 2."), paragraph. Ruled tables come from grids of vector rules.
Reading order (both): top to bottom, and where blocks sit side by side in two columns, the left
column first.

Either way a heading must contain a letter (a bold "12.5" is a paragraph), lines are joined with
hyphenation undone and no spaces between CJK characters (textlines.py), and the words of a table
leave the text blocks. Running headers, footers and page numbers are found across pages later
(furniture.py), as are tables continued from the previous page (tables.py).
"""

from __future__ import annotations

import re
from collections import Counter

import pymupdf

from megatron_vlm.data import tables
from megatron_vlm.data.textlines import join_lines

LIST_RE = re.compile(r"^\s*(?:[\u2022\u00b7\u25aa\u25e6\u2013\u2014*-]|\(?\d{1,3}[.)]|\(?[a-z][.)])\s+")
CAPTION_RE = re.compile(r"^\s*(?:Table|Figure|Fig\.|Chart|Exhibit|Plate|Tabelle|Abbildung|Abb\.|Tableau|表|图|圖)\s*[\dA-Z]+[.:\s]", re.IGNORECASE)
MODEL_KINDS = {
    "text": "paragraph", "title": "heading", "section-header": "heading", "list-item": "list", "caption": "caption",
    "footnote": "footnote", "formula": "formula", "picture": "figure", "page-header": "header", "page-footer": "footer",
}


def _r(x: float) -> float:
    return round(float(x), 2)


def _bbox(b) -> list[float]:
    return [_r(b[0]), _r(b[1]), _r(b[2]), _r(b[3])]


def _line_style(spans: list[dict]) -> tuple[float, bool]:
    spans = [s for s in spans if s["text"].strip()]
    size = max(spans, key=lambda s: len(s["text"]))["size"]
    bold = all(s["flags"] & 16 or "bold" in s["font"].lower() for s in spans)
    return round(size, 1), bold


def _same_style(a: tuple[float, bool], b: tuple[float, bool]) -> bool:
    return a[1] == b[1] and abs(a[0] - b[0]) <= 0.15 * max(a[0], b[0])


def _line_text(spans: list[dict]) -> str:
    return " ".join("".join(s["text"] for s in spans).split())


def _overlap_share(bbox, rect) -> float:
    """The share of bbox's area that lies in rect (both (x0, y0, x1, y1))."""
    w = min(bbox[2], rect[2]) - max(bbox[0], rect[0])
    h = min(bbox[3], rect[3]) - max(bbox[1], rect[1])
    area = (bbox[2] - bbox[0]) * (bbox[3] - bbox[1])
    if area <= 0:  # a zero-height or zero-width line: is its centre inside?
        cx, cy = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
        return float(rect[0] <= cx <= rect[2] and rect[1] <= cy <= rect[3])
    return w * h / area if w > 0 and h > 0 else 0.0


def _union(a: list[float], b) -> list[float]:
    return [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]


_SUPERSCRIPT = 1  # pymupdf span flag: the span sits above its line's baseline
_MARK_CHARS = 3
_MARK_SYMBOLS = set("0123456789*∗†‡§¶‖#")
_SYMBOL_FONTS = ("dingbat", "symbol")  # circled-digit marks come out as letters from these fonts
_EXPONENT_BEFORE = set("0123456789−-+×·=^")


def _is_mark(span: dict, text: str) -> bool:
    return 0 < len(text) <= _MARK_CHARS and (set(text) <= _MARK_SYMBOLS or any(f in span["font"].lower() for f in _SYMBOL_FONTS))


def footnote_marks(text_dict: dict) -> dict[str, float]:
    """Marks that open a footnote on this page -> the top of the footnote's line: a line whose first
    span is a short mark set apart from the text after it by a smaller size or another font ("1" at
    6 pt before an 8-pt note; a Dingbats circled digit before a Chinese note), or followed by text
    smaller than most of the page's (a 7.5-pt note under 10.5-pt text, the mark in the note's span
    or its own)."""
    sizes: Counter = Counter()
    for block in text_dict["blocks"]:
        for line in block.get("lines", ()):
            for span in line["spans"]:
                sizes[round(span["size"], 1)] += len(span["text"].strip())
    page_size = sizes.most_common(1)[0][0] if sizes else 0.0
    marks: dict[str, float] = {}
    for block in text_dict["blocks"]:
        for line in block.get("lines", ()):
            spans = [s for s in line["spans"] if s["text"].strip()]
            if not spans:
                continue
            first = spans[0]
            text, _, rest = first["text"].strip().partition(" ")
            if rest.strip():  # mark and note in one span: only small type tells a note from a numbered line
                set_apart = first["size"] < 0.9 * page_size
            elif len(spans) >= 2:
                after = spans[1]
                set_apart = first["size"] < 0.9 * after["size"] or first["font"] != after["font"] or after["size"] < 0.9 * page_size
            else:
                continue
            if _is_mark(first, text) and set_apart:
                marks[text] = max(marks.get(text, 0.0), line["bbox"][1])
    return marks


def _is_footnote_ref(spans: list[dict], i: int, line_top: float, marks: dict[str, float]) -> bool:
    """Whether spans[i] (i >= 1) is a raised mark in running text whose footnote starts further down
    the page: it is left out of the text ("compatability6 seemed" -> "compatability seemed").
    Raised text that no footnote line starts with (the A of the LaTeX logo) stays, and so does
    an exponent or index: raised text after a digit, an operator or other raised text, or followed
    by more raised text ("2.62 x 10^7 m^-1", "B^1,2", even with a footnote 1 below). MuPDF flags
    subscripts as superscript too; their lower baseline tells them apart."""
    span, before = spans[i], spans[i - 1]
    after = next((s for s in spans[i + 1:] if s["text"].strip()), None)
    text, prev = span["text"].strip(), before["text"].rstrip()
    raised = bool(span["flags"] & _SUPERSCRIPT) and span["origin"][1] < before["origin"][1]
    return (raised and text in marks and line_top < marks[text]
            and not before["flags"] & _SUPERSCRIPT and prev[-1:] not in _EXPONENT_BEFORE
            and not (after is not None and after["flags"] & _SUPERSCRIPT and after["origin"][1] < before["origin"][1]))


def _opens_footnote(line: dict, marks: dict[str, float]) -> bool:
    """Whether `line` is the first line of a footnote: it starts with a mark that footnote_marks
    found opening a footnote at this line's height."""
    return any(line["text"].startswith(mark) and abs(line["bbox"][1] - top) < 1 for mark, top in marks.items())


def footnote_refs(text_dict: dict, marks: dict[str, float]) -> list[tuple[tuple, str]]:
    """(bbox, mark) of every footnote mark in the page's running text (_is_footnote_ref)."""
    return [(span["bbox"], span["text"].strip()) for block in text_dict["blocks"] for line in block.get("lines", ())
            for i, span in enumerate(line["spans"]) if i and marks and _is_footnote_ref(line["spans"], i, line["bbox"][1], marks)]


def table_words(textpage, refs: list[tuple[tuple, str]]) -> list[tuple]:
    """The page's words (x0, y0, x1, y1, text, ...) for table cells, the footnote marks `refs`
    (footnote_refs) cut off the end of the word they were glued to (a header "Windows3" with
    footnote 3 reads "Windows")."""
    words = textpage.extractWORDS()
    if not refs:
        return words
    out = []
    for w in words:
        for (x0, y0, x1, y1), mark in refs:
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            if w[0] <= cx <= w[2] and w[1] <= cy <= w[3] and w[4].endswith(mark) and len(w[4]) > len(mark):
                w = (w[0], w[1], x0, w[3], w[4][: -len(mark)], *w[5:])
                break
        out.append(w)
    return out


def text_lines(text_dict: dict, marks: dict[str, float], exclude: list[tuple] = ()) -> list[dict]:
    """The page's non-empty lines: {"bbox", "text", "style": (size, bold), "block"}; spans mostly
    inside an `exclude` rectangle (tables) are left out, and so are the marks of the page's
    footnotes (`marks`: footnote_marks) in the text (see _is_footnote_ref)."""
    out = []
    for bi, block in enumerate(text_dict["blocks"]):
        if block.get("type", 0) != 0:
            continue
        for line in block["lines"]:
            spans = line["spans"]
            if marks:
                spans = [s for i, s in enumerate(spans) if i == 0 or not _is_footnote_ref(spans, i, line["bbox"][1], marks)]
            if exclude:
                spans = [s for s in spans if not any(_overlap_share(s["bbox"], r) > 0.5 for r in exclude)]
            text = _line_text(spans)
            if text:
                out.append({"bbox": list(line["bbox"]), "text": text, "style": _line_style(spans), "block": bi})
    return out


def style_groups(lines: list[dict]) -> list[dict]:
    """Consecutive lines of one text-dict block and one style, split before each list item:
    {"lines", "style", "bbox", "list"}."""
    groups, current = [], None
    for line in lines:
        starts_item = bool(LIST_RE.match(line["text"]))
        if (current is None or current["block"] != line["block"] or not _same_style(current["style"], line["style"])
                or (starts_item and not current["list"])):
            current = {"lines": [], "style": line["style"], "bbox": list(line["bbox"]), "list": starts_item, "block": line["block"]}
            groups.append(current)
        current["lines"].append(line["text"])
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


def has_letter(text: str) -> bool:
    return any(ch.isalpha() for ch in text)


def classify(text: str, size: float, bold: bool, is_list: bool, n_lines: int, body: float) -> str:
    """The rules' kind of a text group (see the module docstring)."""
    if is_list:
        return "list"
    if CAPTION_RE.match(text):
        return "caption"
    short = len(text) <= 120 and n_lines <= 3
    if short and has_letter(text) and (size >= body * 1.15 or (bold and not text.rstrip().endswith("."))):
        return "heading"
    return "paragraph"


def group_block(group: dict, body: float) -> dict:
    text = join_lines(group["lines"]) if not group["list"] else "\n".join(group["lines"])
    kind = classify(text, group["style"][0], group["style"][1], group["list"], len(group["lines"]), body)
    return {"kind": kind, "bbox": _bbox(group["bbox"]), "text": text}


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
    return ordered


# ---- rules ---------------------------------------------------------------------------------


def rules_layout(text_dict: dict, textpage, page: pymupdf.Page, paths: bool) -> tuple[list[dict], list[dict]]:
    """(table blocks, style groups) of one page by the rules; blocks are made once the body font
    size is known (rules_blocks). `paths`: whether the page paints vector paths at all."""
    table_blocks: list[dict] = []
    marks = footnote_marks(text_dict)
    if paths:
        horiz, vert = tables.rules(page)
        grids = tables.find_grid_tables(horiz, vert)
        if grids:
            words = table_words(textpage, footnote_refs(text_dict, marks))
            table_blocks = [b for b in (tables.table_block(ys, xs, words, horiz) for ys, xs in grids) if b]
    rects = [tuple(b["bbox"]) for b in table_blocks]
    return table_blocks, style_groups(text_lines(text_dict, marks, rects))


def rules_blocks(table_blocks: list[dict], groups: list[dict], body: float, page_width: float) -> list[dict]:
    """Blocks of one page in reading order, given the document's body font size."""
    return reading_order([*table_blocks, *(group_block(g, body) for g in groups)], page_width)


# ---- model ---------------------------------------------------------------------------------


def model_layout(text_dict: dict, textpage, page: pymupdf.Page, regions: list[dict]) -> tuple[list[dict], list[dict]]:
    """(blocks in reading order from the layout model's regions, style groups of the lines no
    region holds); model_blocks places those once the body font size is known. A text or list region
    whose first line opens a footnote (footnote_marks) that the text above refers to is a footnote,
    whatever the model says (a listing's small line numbers open lines too, but nothing refers to them)."""
    marks = footnote_marks(text_dict)
    refs = footnote_refs(text_dict, marks)
    lines = text_lines(text_dict, marks)
    referred = {mark for _, mark in refs}
    opening = {mark: top for mark, top in marks.items() if mark in referred}
    rects = [tuple(g["group_bbox"][:4]) for g in regions]
    owner = []
    for line in lines:
        shares = [_overlap_share(line["bbox"], r) for r in rects]
        best = max(range(len(rects)), key=lambda i: shares[i], default=-1)
        owner.append(best if best >= 0 and shares[best] >= 0.5 else -1)
    blocks: list[dict] = []
    words = horiz = None
    for ri, group in enumerate(regions):
        mine = [line for line, o in zip(lines, owner) if o == ri]
        cls = group.get("class_name", "text")
        if cls == "table":
            grid = tables.model_grid(group)
            block = None
            if grid:
                words = table_words(textpage, refs) if words is None else words
                horiz = tables.rules(page)[0] if horiz is None else horiz
                inside = [w for w in words if _overlap_share(w[:4], rects[ri]) >= 0.5]
                block = tables.table_block(*grid, inside, horiz)
            if block:
                blocks.append(block)
            else:  # no table in it after all: its lines are classified as the rules do (headings by style)
                owner = [-1 if o == ri else o for o in owner]
            continue
        if not mine:
            continue
        kind = MODEL_KINDS.get(cls, "paragraph")
        if kind in ("paragraph", "list") and _opens_footnote(mine[0], opening):
            kind = "footnote"
        text = join_lines([line["text"] for line in mine])
        if kind == "heading" and not has_letter(text):
            kind = "paragraph"
        bbox = mine[0]["bbox"]
        for line in mine[1:]:
            bbox = _union(bbox, line["bbox"])
        blocks.append({"kind": kind, "bbox": _bbox(bbox), "text": text})
    return blocks, style_groups([line for line, o in zip(lines, owner) if o == -1])


def model_blocks(blocks: list[dict], leftover: list[dict], body: float, page_width: float) -> list[dict]:
    """model_layout's blocks and its leftover groups (classified with the body font size), in
    reading order (reading_order: the model's own order reads title pages and two-column papers
    out of order, e.g. the first column's heading before the title)."""
    ordered: list[dict] = []
    for block in reading_order([*blocks, *(group_block(g, body) for g in leftover)], page_width):
        last = ordered[-1] if ordered else None
        if (block["kind"] == "list" and last is not None and last["kind"] == "list"
                and min(block["bbox"][2], last["bbox"][2]) > max(block["bbox"][0], last["bbox"][0])):
            last["text"] += "\n" + block["text"]  # the next item of the same list (same column)
            last["bbox"] = _bbox(_union(last["bbox"], block["bbox"]))
        else:
            ordered.append(block)
    return ordered
