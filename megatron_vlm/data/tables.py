"""Table blocks: a grid of row and column boundaries filled with the page's words.

Where the grid comes from:
- pymupdf's layout model (the default, `layout="model"`) finds table regions whether ruled,
  rule-only (booktabs) or aligned by whitespace, and predicts each one's row and column lines
  (`model_grid`);
- the rules-only layout (`layout="rules"`) takes connected grids of vector rules
  (`find_grid_tables`), which finds fully ruled tables only.
Either way `table_block` first splits a column that holds two (`split_merged_columns`), then
fills the cells with the page's words (each word goes to the cell that holds its centre; a cell's
words are read in lines, see textlines.py), drops empty rows and columns, and refuses grids that are not tables: fewer than 2 rows or columns or 4 filled cells,
under a third of the remaining cells filled, text in under a quarter of the grid's rows x
columns (a schematic drawn with many lines and a few labels is not a table), or more than a
quarter of the filled cells paragraphs (over MAX_CELL_CHARS characters: a description list, terms
in the margin beside paragraphs, which the layout model takes for a table with the section
headings between its entries), or more than a quarter of the filled cells index or contents entries
(dot leaders, or lists of page numbers such as "4252, 4260,": an index set in columns, which the
model also takes for a table). `header_rows` is the number
of rows above the first horizontal rule across the table inside it (booktabs' \\midrule; a
partial \\cmidrule counts only when no full rule does), at most MAX_HEADER_ROWS, else 1 (also
in a grid with rules between most rows).

`link_continued_tables` works across pages: a table that opens a page (nothing but running
headers above it) and has the column count of the table that closed the previous page continues
it; when its first rows are not that table's header rows, those header rows are put on top of its
`cells` (`header_copied`), so every page's table can be read alone. Its `text` stays what the
page prints.
"""

from __future__ import annotations

import re

import pymupdf

from megatron_vlm.data.textlines import LEADERS, words_text

MIN_FILL = 1 / 3  # share of non-empty cells below which a grid is not a table
MIN_CELLS = 4  # non-empty cells a table has at least
MIN_GRID_USED = 1 / 4  # rows x columns holding text, as a share of the grid's (a drawing's grid holds a few labels)
MAX_CELL_CHARS = 160  # a cell longer than this is a paragraph
MAX_PARAGRAPH_CELLS = 1 / 4  # share of filled cells that may be paragraphs (more: prose beside labels, not a table)
MAX_HEADER_ROWS = 3
MERGED_GAP = 2.0  # two header words further apart than this many times their height head two columns
MAX_INDEX_CELLS = 1 / 4  # share of filled cells that may be index or contents entries (more: an index set in columns)
_PAGE_LIST = re.compile(r"\d+(?:,\s+\d+)*,?")  # "4252," or "5104, 5105, 5106": page references, not a value ("4,312")
BODY_KINDS = ("heading", "paragraph", "list", "table", "formula", "figure")  # blocks that are page content (not furniture, captions, notes)


def _r(x: float) -> float:
    return round(float(x), 2)


def rules(page: pymupdf.Page) -> tuple[list[tuple], list[tuple]]:
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


def find_grid_tables(horiz: list[tuple], vert: list[tuple]) -> list[tuple[list[float], list[float]]]:
    """Ruled tables as (row boundaries y, column boundaries x): connected grids of >= 2x2 rules."""
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


def model_grid(group: dict) -> tuple[list[float], list[float]] | None:
    """(row boundaries y, column boundaries x) in points of one table group of pymupdf's layout
    model (page.get_layout(return_raw=True)); None when the model predicted no grid."""
    grid = group.get("table_grid")
    x0, y0, x1, y1 = group["group_bbox"][:4]
    rows = getattr(grid, "h_lines_norm", None)
    cols = getattr(grid, "v_lines_norm", None)
    if grid is None or rows is None or cols is None:
        return None
    ys = [y0, *sorted(y0 + float(v) * (y1 - y0) for v in rows), y1]
    xs = [x0, *sorted(x0 + float(v) * (x1 - x0) for v in cols), x1]
    return ys, xs


def _is_index_entry(cell: str) -> bool:
    """A cell of an index or a contents page: dot leaders, or nothing but page references."""
    return bool(LEADERS.search(cell) or (("," in cell) and _PAGE_LIST.fullmatch(cell.strip())))


def _centre(w: tuple) -> tuple[float, float]:
    return (w[0] + w[2]) / 2, (w[1] + w[3]) / 2


def split_merged_columns(ys: list[float], xs: list[float], words: list[tuple]) -> list[float]:
    """Column boundaries `xs` with a boundary added where one column holds two: its cell in the
    first row is two words further apart than MERGED_GAP times their height ("热度" and "备注" over
    one column), and the words of every other row fall cleanly to either side of one x (those that
    start before the first header word ends, and the rest). The layout model draws such close
    columns as one ("5 维护良好，..." as one cell under "热度备注")."""
    out = list(xs)
    for x0, x1 in zip(xs, xs[1:]):
        inside = [w for w in words if x0 <= _centre(w)[0] < x1 and ys[0] <= _centre(w)[1] <= ys[-1]]
        head = sorted((w for w in inside if _centre(w)[1] < ys[1]), key=lambda w: w[0])
        if len(head) != 2 or head[1][0] - head[0][2] < MERGED_GAP * (head[0][3] - head[0][1]):
            continue
        body = [w for w in inside if _centre(w)[1] >= ys[1]]
        left = [w for w in body if w[0] < head[0][2]]
        right = [w for w in body if w[0] >= head[0][2]]
        if left and right and max(w[2] for w in left) < min(w[0] for w in right):
            split = (max(w[2] for w in left) + min(w[0] for w in right)) / 2
            if _centre(head[0])[0] < split < _centre(head[1])[0]:
                out.append(split)
    return sorted(out)


def table_block(ys: list[float], xs: list[float], words: list[tuple], horiz: list[tuple] = ()) -> dict | None:
    """A table block (docs/formats.md: kind "table", cells, header_rows) from a grid and the page's
    words (x0, y0, x1, y1, text, ...); None when the grid does not hold a table (see module docstring)."""
    xs = split_merged_columns(ys, xs, words)
    n_rows, n_cols = len(ys) - 1, len(xs) - 1
    if n_rows < 1 or n_cols < 1:
        return None
    cells: list[list[list]] = [[[] for _ in range(n_cols)] for _ in range(n_rows)]
    for w in words:
        cx, cy = (w[0] + w[2]) / 2, (w[1] + w[3]) / 2
        if not (xs[0] <= cx <= xs[-1] and ys[0] <= cy <= ys[-1]):
            continue
        r = max(i for i in range(n_rows) if ys[i] <= cy)
        c = max(i for i in range(n_cols) if xs[i] <= cx)
        cells[r][c].append(w)
    text = [[words_text(cell) for cell in row] for row in cells]
    keep_rows = [r for r in range(n_rows) if any(text[r])]
    keep_cols = [c for c in range(n_cols) if any(text[r][c] for r in keep_rows)]
    rows = [[text[r][c] for c in keep_cols] for r in keep_rows]
    filled = sum(bool(t) for row in rows for t in row)
    if (len(rows) < 2 or len(keep_cols) < 2 or filled < MIN_CELLS or filled < MIN_FILL * len(rows) * len(keep_cols)
            or len(rows) * len(keep_cols) < MIN_GRID_USED * n_rows * n_cols
            or sum(len(t) > MAX_CELL_CHARS for row in rows for t in row) > MAX_PARAGRAPH_CELLS * filled
            or sum(_is_index_entry(t) for row in rows for t in row) > MAX_INDEX_CELLS * filled):
        return None
    width = xs[-1] - xs[0]
    header_rows = 1
    for share in (0.9, 0.5):  # a full-width rule (\midrule) first; a partial one (\cmidrule) only without it
        inner = sorted(y for y, hx0, hx1 in horiz if ys[0] + 2 < y < ys[-1] - 2 and min(hx1, xs[-1]) - max(hx0, xs[0]) >= share * width)
        above = sum((ys[r] + ys[r + 1]) / 2 < inner[0] for r in keep_rows) if inner else 0
        if len(_merge_coords(inner)) * 2 >= len(rows):  # rules between most rows: a ruled grid, one header row
            break
        if 1 <= above <= MAX_HEADER_ROWS and above < len(rows):
            header_rows = above
            break
    return {
        "kind": "table",
        "bbox": [_r(xs[0]), _r(ys[0]), _r(xs[-1]), _r(ys[-1])],
        "text": "\n".join(" | ".join(row) for row in rows),
        "cells": rows,
        "header_rows": header_rows,
        "continued_from": None,
        "header_copied": False,
    }


def _edge_table(blocks: list[dict], first: bool) -> dict | None:
    """The page's first (or last) body block when it is a table."""
    body = [b for b in blocks if b["kind"] in BODY_KINDS]
    if not body:
        return None
    b = body[0] if first else body[-1]
    return b if b["kind"] == "table" else None


def link_continued_tables(pages: list[dict]) -> int:
    """Mark tables continued from the previous page and give them its header rows (see the module
    docstring); pages are pool page dicts with final block kinds. Returns how many were linked."""
    linked = 0
    for prev, page in zip(pages, pages[1:]):
        before, after = _edge_table(prev.get("blocks", []), first=False), _edge_table(page.get("blocks", []), first=True)
        if before is None or after is None or len(before["cells"][0]) != len(after["cells"][0]):
            continue
        overlap = min(before["bbox"][2], after["bbox"][2]) - max(before["bbox"][0], after["bbox"][0])
        if overlap < 0.8 * min(before["bbox"][2] - before["bbox"][0], after["bbox"][2] - after["bbox"][0]):
            continue
        header = before["cells"][: before["header_rows"]]
        after["continued_from"] = prev["index"]
        if after["cells"][: len(header)] != header:
            after["cells"] = [list(row) for row in header] + after["cells"]
            after["header_rows"] = len(header)
            after["header_copied"] = True
        linked += 1
    return linked
