"""OCR of one page with the Tesseract program: script detected, matching language data, confidences.

    result = ocr_page(page, language="auto", dpi=300)   # OcrResult: blocks, confidence, languages, script

The page is drawn at `dpi` in grey and given to `tesseract` (the command-line program, so no
Python binding is needed) on stdin:
1. `--psm 0` (orientation and script detection, `osd` data) names the page's script.
2. The script picks the language data: Han -> chi_sim and chi_tra (both are tried; chi_tra is
   kept only when its mean confidence beats chi_sim's by TRADITIONAL_MARGIN, since it also reads
   simplified scans with high confidence), Japanese -> jpn, Hangul -> kor, Cyrillic -> rus, ...
   each with `+eng` when installed, because such pages mix in Latin words. Latin pages are read
   with eng first; when the words read look like another installed Latin language (its common
   short words outnumber English ones), the page is read again with that language. When the
   document's other pages are in another script (`hint`), that script's languages are tried
   too and the most confident reading is kept. A reading with a script's language data must
   give letters of that script (MIN_SCRIPT_SHARE of its letters): detection takes some English
   pages for Cyrillic, and rus+eng then reads them a little more confidently than eng does,
   with "REVTeX" as "ВЕУТЕХ"; such a reading is dropped and the page is read as Latin.
   `language` other than "auto" (e.g. "deu+eng") is used as given and skips both steps.
3. The TSV output gives every word with its box and confidence (0-100). Words are grouped into
   Tesseract's paragraphs; each becomes a block with the mean confidence of its characters, and
   `low_confidence` when that is under LOW_CONFIDENCE, so QA facts can leave such text out. A
   block is a list when it starts with a bullet or enumerator, a heading when it is short and its
   lines are taller than the page's body lines (layout.classify, with line height as font size),
   else a paragraph.

Language data comes from Debian's `tesseract-ocr-<lang>` packages (tools/setup_env.sh installs
the common ones). A script without installed data is read with eng; its low confidence shows.
Tesseract runs single-threaded (OMP_THREAD_LIMIT=1): the pool runs one page per worker process,
and results do not depend on thread timing.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

import pymupdf

from megatron_vlm.data import layout, text_quality
from megatron_vlm.data.textlines import join_lines, join_words

LOW_CONFIDENCE = 70.0  # a block (or page) whose mean character confidence is below this is marked low confidence
# A reading with a script's language data must give that script this share of its letters
# (real scans: a code-heavy Chinese page 4% Han; an English page read as Cyrillic 0.9%).
MIN_SCRIPT_SHARE = 0.02
TRADITIONAL_MARGIN = 3.0  # chi_tra must beat chi_sim's confidence by this much (it scores high on simplified scans too)
TIMEOUT_S = 300  # one tesseract call
SCRIPT_LANGUAGES = {
    "Han": ("chi_sim", "chi_tra"), "Japanese": ("jpn",), "Hangul": ("kor",), "Cyrillic": ("rus", "ukr"),
    "Greek": ("ell",), "Arabic": ("ara",), "Hebrew": ("heb",), "Devanagari": ("hin",), "Thai": ("tha",),
}
# Short words frequent in running text of each Latin-script language (and rare in the others).
LATIN_STOPWORDS = {
    "eng": {"the", "and", "of", "to", "is", "in", "that", "with", "for", "this", "are", "be", "by"},
    "deu": {"der", "die", "das", "und", "ist", "nicht", "mit", "auf", "den", "ein", "eine", "sich", "werden", "wird", "zu"},
    "fra": {"le", "la", "les", "et", "des", "est", "une", "pour", "dans", "que", "qui", "sur", "pas", "du"},
    "spa": {"el", "los", "las", "y", "es", "una", "para", "con", "que", "por", "del", "se"},
    "ita": {"il", "gli", "che", "di", "è", "una", "per", "con", "non", "della", "sono"},
    "por": {"os", "as", "e", "é", "uma", "para", "com", "que", "não", "do", "da", "em"},
    "nld": {"de", "het", "een", "en", "is", "van", "niet", "met", "voor", "zijn", "op"},
}


class OcrError(Exception):
    """Tesseract failed on a page; str(error) is a one-line reason."""


@dataclass
class OcrResult:
    blocks: list[dict]  # {"kind": "paragraph", "bbox", "text", "confidence", "low_confidence"} in Tesseract's order
    confidence: float | None  # mean over the page's characters, 0-100; None when nothing was read
    languages: str  # the language data used, e.g. "chi_sim+eng"
    script: str | None  # from orientation and script detection; None when it could not tell
    tried: dict[str, float] = field(default_factory=dict)  # languages tried -> their mean confidence


@lru_cache(maxsize=1)
def installed_languages() -> frozenset[str]:
    """Tesseract's installed language data (empty when the program is missing)."""
    exe = shutil.which("tesseract")
    if exe is None:
        return frozenset()
    try:
        out = subprocess.run([exe, "--list-langs"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(line.strip() for line in out.splitlines()[1:] if line.strip())


def available() -> bool:
    return bool(installed_languages() - {"osd"})


def _tesseract(png: bytes, args: list[str]) -> str:
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    try:
        proc = subprocess.run(["tesseract", "stdin", "stdout", *args], input=png, capture_output=True, timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        raise OcrError(f"tesseract {' '.join(args)} took over {TIMEOUT_S} s") from None
    except OSError as e:
        raise OcrError(f"cannot run tesseract: {e}") from None
    if proc.returncode != 0:
        last = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise OcrError(f"tesseract {' '.join(args)} exited {proc.returncode}: {last}")
    return proc.stdout.decode("utf-8", errors="replace")


def detect_script(png: bytes) -> str | None:
    """The script Tesseract's orientation and script detection sees on the image, or None."""
    if "osd" not in installed_languages():
        return None
    try:
        out = _tesseract(png, ["--psm", "0", "-l", "osd"])
    except OcrError:
        return None  # e.g. "Too few characters": read the page with the default language
    m = re.search(r"^Script:\s*(\S+)", out, re.MULTILINE)
    return m.group(1) if m else None


def _read(png: bytes, languages: str, scale: float, derotate: pymupdf.Matrix) -> tuple[list[dict], float | None]:
    """Blocks and mean confidence of one Tesseract pass; boxes in PDF points (unrotated page)."""
    tsv = _tesseract(png, ["-l", languages, "--psm", "3", "tsv"])
    paragraphs: dict[tuple, dict[tuple, list]] = {}
    for row in tsv.splitlines()[1:]:
        cols = row.split("\t")
        if len(cols) < 12 or cols[0] != "5" or not cols[11].strip():
            continue
        conf = float(cols[10])
        if conf < 0:
            continue
        left, top, width, height = (float(c) for c in cols[6:10])
        rect = pymupdf.Rect(left * scale, top * scale, (left + width) * scale, (top + height) * scale) * derotate
        key = (int(cols[2]), int(cols[3]))
        paragraphs.setdefault(key, {}).setdefault(int(cols[4]), []).append((rect, cols[11].strip(), conf))
    blocks, heights, total_chars, total_conf = [], [], 0, 0.0
    for lines in paragraphs.values():
        words = [w for line in lines.values() for w in line]
        chars = sum(len(t) for _, t, _ in words)
        conf = sum(len(t) * c for _, t, c in words) / chars
        total_chars, total_conf = total_chars + chars, total_conf + conf * chars
        box = pymupdf.Rect(words[0][0])
        for rect, _, _ in words[1:]:
            box |= rect
        line_texts = [join_words([t for _, t, _ in line]) for line in lines.values()]
        height = statistics.median(max(r.height for r, _, _ in line) for line in lines.values())
        heights += [height] * chars
        blocks.append({
            "kind": "list" if layout.LIST_RE.match(line_texts[0]) else "paragraph",
            "bbox": [round(v, 2) for v in box],
            "text": "\n".join(line_texts) if layout.LIST_RE.match(line_texts[0]) else join_lines(line_texts),
            "confidence": round(conf, 1),
            "low_confidence": conf < LOW_CONFIDENCE,
            "_lines": len(line_texts),
            "_height": height,
        })
    body = statistics.median(heights) if heights else 0.0
    for block in blocks:  # headings by the height of their lines, as the rules do by font size (layout.py)
        n_lines, height = block.pop("_lines"), block.pop("_height")
        if block["kind"] == "paragraph":
            block["kind"] = layout.classify(block["text"], height, False, False, n_lines, body)
    return blocks, (round(total_conf / total_chars, 1) if total_chars else None)


def _latin_language(blocks: list[dict], installed: frozenset[str]) -> str | None:
    words = re.findall(r"\w+", " ".join(b["text"] for b in blocks).lower())
    hits = {lang: sum(w in stop for w in words) for lang, stop in LATIN_STOPWORDS.items() if lang in installed}
    best = max(sorted(hits), key=hits.get, default=None)
    return best if best and best != "eng" and hits[best] >= 3 and hits[best] > hits.get("eng", 0) else None


def _languages_for(script: str | None, installed: frozenset[str]) -> list[str]:
    """The language-data combinations to try for a script, best first; [] for Latin or unknown."""
    eng = "+eng" if "eng" in installed else ""
    return [lang + eng for lang in SCRIPT_LANGUAGES.get(script or "", ()) if lang in installed]


_SCRIPT_OF_LANGUAGE = {lang: script for script, langs in SCRIPT_LANGUAGES.items() for lang in langs}


def _reads_its_script(languages: str, blocks: list[dict]) -> bool:
    """Whether a reading with a non-Latin script's language data gives that script's letters
    (MIN_SCRIPT_SHARE of them; Han and kana count together); Latin readings always do."""
    script = _SCRIPT_OF_LANGUAGE.get(languages.split("+")[0])
    if script is None:
        return True
    counts = Counter(text_quality.script_of(ch) for b in blocks for ch in b["text"])
    counts.pop(None, None)
    wanted = {"Han", "Japanese"} if script in ("Han", "Japanese") else {script}
    return sum(counts[s] for s in wanted) >= MIN_SCRIPT_SHARE * max(1, sum(counts.values()))


def ocr_page(page: pymupdf.Page, language: str = "auto", dpi: int = 300, hint: str | None = None) -> OcrResult:
    """Read one page with Tesseract (see the module docstring); OcrError when tesseract fails.

    `hint` is the script of the document's other pages: when the detected script differs, the
    hint's languages are tried too (orientation and script detection misreads pages that mix a
    few Chinese lines with much Latin code), and the most confident reading is kept."""
    installed = installed_languages()
    png = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY).tobytes("png")
    scale, derotate = 72.0 / dpi, page.derotation_matrix
    if language != "auto":
        blocks, conf = _read(png, language, scale, derotate)
        return OcrResult(blocks, conf, language, None, {language: conf or 0.0})
    detected = detect_script(png)
    readings: dict[str, tuple[list[dict], float | None, str | None]] = {}

    def read_script(script: str | None) -> None:
        tries = _languages_for(script, installed)
        if not tries:  # Latin, unknown, or no data for the script: English first, then by its words
            tries = ["eng" if "eng" in installed else sorted(installed - {"osd"})[0]]
        for languages in tries:
            if languages not in readings:
                blocks, conf = _read(png, languages, scale, derotate)
                readings[languages] = (blocks, conf, script)
        if tries == ["eng"] and (script in (None, "Latin")):
            other = _latin_language(readings["eng"][0], installed)
            if other and other not in readings:
                blocks, conf = _read(png, other, scale, derotate)
                readings[other] = (blocks, conf, script or "Latin")

    def score(item) -> float:
        languages, (_, conf, _) = item
        return (conf or 0.0) - (TRADITIONAL_MARGIN if languages.startswith("chi_tra") else 0.0)

    read_script(detected)
    if hint and hint != detected:
        read_script(hint)
    agreeing = {k: v for k, v in readings.items() if _reads_its_script(k, v[0])}
    if not agreeing:  # the script was misdetected: read the page as Latin
        read_script(None)
        agreeing = {k: v for k, v in readings.items() if _reads_its_script(k, v[0])} or readings
    languages, (blocks, conf, script) = max(agreeing.items(), key=score)
    if languages in ("eng", *LATIN_STOPWORDS) and script is None:
        script = "Latin" if blocks else None
    return OcrResult(blocks, conf, languages, script, {k: v[1] or 0.0 for k, v in readings.items()})
