"""Joining pieces of text the way a reader reads them: words into lines, lines into paragraphs.

- Words (each with a bbox) become lines by vertical overlap, not by equal baselines: a Chinese
  glyph and a Latin letter on one line have different boxes, and sorting words by (bottom, x)
  scrambles mixed-script cells ("2023 年 收入" read as "年 2023 收入"). Within a line, left to right.
- Neighbours are joined with a space, except between two CJK characters (Chinese and Japanese
  are written without spaces; OCR reports each character group as a word).
- Lines are joined into a paragraph with a space; a word hyphenated at a line end ("exam-" then
  "ple") is joined back ("example") when the hyphen follows a letter and the next line starts with
  a lower-case letter; a soft hyphen (U+00AD) at a line end always joins. A real compound split at
  a line end ("long-" / "context") is joined too: a line break does not say which it was.
"""

from __future__ import annotations

import re

LEADERS = re.compile(r"\.\s?\.\s?\.")  # dot leaders of an index or a table of contents
_CJK_RE = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\U00020000-\U0002ffff]")
_HYPHENS = "-\u2010\u2011"
_SOFT_HYPHEN = "\u00ad"


def is_cjk(ch: str) -> bool:
    return bool(_CJK_RE.match(ch))


def join_pair(left: str, right: str) -> str:
    """`left` and `right` with a space between them unless both touching characters are CJK."""
    if not left:
        return right
    if not right:
        return left
    return left + right if is_cjk(left[-1]) and is_cjk(right[0]) else f"{left} {right}"


def join_words(words: list[str]) -> str:
    out = ""
    for w in words:
        out = join_pair(out, w)
    return out


def join_lines(lines: list[str]) -> str:
    """One paragraph from its lines (see the module docstring for hyphenation)."""
    out = ""
    for line in lines:
        line = " ".join(line.split())
        if not line:
            continue
        if out.endswith(_SOFT_HYPHEN):
            out = out[:-1] + line
        elif len(out) >= 2 and out[-1] in _HYPHENS and out[-2].isalpha() and line[0].islower():
            out = out[:-1] + line
        else:
            out = join_pair(out, line)
    return out.replace(_SOFT_HYPHEN, "")


def group_lines(words: list[tuple]) -> list[list[tuple]]:
    """Words (x0, y0, x1, y1, text, ...) grouped into lines, top to bottom, each left to right.

    A word joins the line whose vertical extent overlaps its own by at least half of the smaller
    height; lines are then ordered by their top and words within a line by x0.
    """
    lines: list[list] = []  # [y0, y1, words]
    for w in sorted(words, key=lambda w: ((w[1] + w[3]) / 2, w[0])):
        for line in lines:
            overlap = min(line[1], w[3]) - max(line[0], w[1])
            if overlap >= 0.5 * min(line[1] - line[0], w[3] - w[1]):
                line[2].append(w)
                line[0], line[1] = min(line[0], w[1]), max(line[1], w[3])
                break
        else:
            lines.append([w[1], w[3], [w]])
    lines.sort(key=lambda line: line[0])
    return [sorted(line[2], key=lambda w: w[0]) for line in lines]


def words_text(words: list[tuple]) -> str:
    """The text of some words read in lines (group_lines), lines joined as a paragraph."""
    return join_lines([join_words([w[4] for w in line]) for line in group_lines(words)])
