"""Can a page's text layer be trusted? A verdict per page from its fonts and its characters.

A PDF's text is only as good as its fonts' maps from glyphs to Unicode. Two failures are common
in real files and both look like text to a program:
- a composite (Type0) font with Identity encoding and no ToUnicode map: the glyph ids come out
  as code points, e.g. "3FTVMUT\\x01PG" for "Results of" or runs of Sinhala letters for small caps;
- glyphs that map to nothing: U+FFFD, control characters, private-use code points.
`unmapped_fonts` finds the fonts of the first kind from the PDF's objects; `judge` counts the
characters a reader cannot trust (every character of such a font, and the unmappable ones of
other text fonts) and calls the page `broken` when they are a visible share of its text. Symbol
and math fonts (cmsy, cmex, Dingbats, ...) are left out of the count: their control characters
are bullets and delimiters, not words. A wrong but well-formed map (a minus sign mapped to "2")
cannot be seen this way and stays undetected.

`page_script` names the writing system most of a page's letters belong to, which picks the
Tesseract language data when the page is OCRed (see ocr.py).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import pymupdf

BROKEN_SHARE = 0.05  # unmapped characters above this share of a page's text characters: a broken text layer
BROKEN_MIN_CHARS = 10  # ... and at least this many of them
SYMBOL_FONT_RE = re.compile(r"^(?:cmsy|cmex|cmmi|msam|msbm|eufm|wasy|stmary|lasy|rsfs|esint|mathx?|dingbats|zapfdingbats|symbol|wingdings|webdings|marvosym|fontawesome|pzd)|math|symbol|dingbat", re.IGNORECASE)
CJK_ORDERINGS = {"GB1", "CNS1", "Japan1", "Korea1", "KR"}  # CID orderings whose CIDs MuPDF maps to Unicode itself

# Unicode ranges -> script name (the names Tesseract's OSD reports); first match wins.
_SCRIPTS = [
    (0x0041, 0x024F, "Latin"), (0x1E00, 0x1EFF, "Latin"), (0x0370, 0x03FF, "Greek"), (0x0400, 0x052F, "Cyrillic"),
    (0x0590, 0x05FF, "Hebrew"), (0x0600, 0x06FF, "Arabic"), (0x0900, 0x097F, "Devanagari"), (0x0E00, 0x0E7F, "Thai"),
    (0x3040, 0x30FF, "Japanese"), (0x31F0, 0x31FF, "Japanese"), (0x1100, 0x11FF, "Hangul"), (0xAC00, 0xD7AF, "Hangul"),
    (0x3400, 0x4DBF, "Han"), (0x4E00, 0x9FFF, "Han"), (0xF900, 0xFAFF, "Han"), (0x20000, 0x2FFFF, "Han"),
    (0x0D80, 0x0DFF, "Sinhala"),
]


@dataclass(frozen=True)
class Verdict:
    quality: str  # "good" | "broken" | "none" (no text)
    chars: int  # text characters on the page (not blank, not from symbol fonts)
    unmapped: int  # of those, the ones that cannot be trusted
    reason: str | None = None  # for "broken": one line saying why


def unmapped(ch: str) -> bool:
    """A character that a glyph should never map to in running text."""
    o = ord(ch)
    if o == 0xFFFD or 0xE000 <= o <= 0xF8FF or o >= 0xF0000:
        return True
    return unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn") and ch not in "\t\n\r"


def _key(doc: pymupdf.Document, xref: int, key: str) -> tuple[str, str]:
    try:
        return doc.xref_get_key(xref, key)
    except Exception:
        return "null", "null"


def font_key(name: str) -> str:
    """A font name as both the PDF's font dict and the text spans can be matched by: no subset
    prefix, no spaces or punctuation, lower case ("ABCDEF+Nimbus Mono PS Regular" and
    "NimbusMonoPS-Regular" are one font)."""
    return re.sub(r"[\W_]+", "", name.split("+", 1)[-1]).lower()


def unmapped_fonts(doc: pymupdf.Document, page_index: int) -> set[str]:
    """font_key of each of the page's fonts whose glyphs have no Unicode map: Type0 fonts with
    Identity encoding, no ToUnicode and no CJK character collection."""
    out = set()
    try:
        fonts = doc.get_page_fonts(page_index)
    except Exception:
        return out
    for xref, _ext, ftype, basefont, _name, encoding in fonts:
        if ftype != "Type0" or not str(encoding).startswith("Identity") or _key(doc, xref, "ToUnicode")[0] != "null":
            continue
        kind, value = _key(doc, xref, "DescendantFonts")
        descendant = re.search(r"(\d+) 0 R", value) if kind in ("array", "xref") else None
        ordering = ""
        if descendant:
            ordering = _key(doc, int(descendant.group(1)), "CIDSystemInfo/Ordering")[1].strip("()")
        if ordering not in CJK_ORDERINGS:
            out.add(font_key(basefont))
    return out


def judge(text_dict: dict, bad_fonts: set[str]) -> Verdict:
    """The verdict for one page's text dict (pymupdf extractDICT), given unmapped_fonts."""
    chars = bad = 0
    for block in text_dict["blocks"]:
        for line in block.get("lines", ()):
            for span in line["spans"]:
                font = span["font"]
                if SYMBOL_FONT_RE.search(font):
                    continue
                text = "".join(span["text"].split())
                chars += len(text)
                bad += len(text) if bad_fonts and font_key(font) in bad_fonts else sum(map(unmapped, text))
    if chars == 0:
        return Verdict("none", 0, 0)
    if bad >= BROKEN_MIN_CHARS and bad > BROKEN_SHARE * chars:
        why = "fonts without a Unicode map" if bad_fonts else "unmappable characters"
        return Verdict("broken", chars, bad, f"{bad} of {chars} characters untrustworthy: {why}")
    return Verdict("good", chars, bad)


def script_of(ch: str) -> str | None:
    o = ord(ch)
    for lo, hi, name in _SCRIPTS:
        if lo <= o <= hi:
            return name if name != "Latin" or ch.isalpha() else None
    return None


def page_script(text: str) -> str | None:
    """The script most letters of `text` belong to ("Latin", "Han", "Cyrillic", ...); Japanese when
    kana make up a tenth of the Han and kana letters; None without letters."""
    counts: dict[str, int] = {}
    for ch in text:
        name = script_of(ch)
        if name:
            counts[name] = counts.get(name, 0) + 1
    if not counts:
        return None
    if counts.get("Japanese", 0) * 10 >= counts.get("Han", 0) + counts.get("Japanese", 0) > 0:
        counts["Japanese"] += counts.pop("Han", 0)
    return max(sorted(counts), key=counts.get)
