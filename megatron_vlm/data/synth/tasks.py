"""Task types, segment choice, and the two tasks built from the pool's text alone (OCR-full,
OCR-needle).

Segments tile a document front to back with lengths drawn uniformly from [min, max] pages; a tail
shorter than `min` is dropped, and a document shorter than `min` has no segment. Page numbers in
questions are 1-based pages of the full document, since a QA pair is trained with the whole
document in context; `evidence_pages` are 0-based indices (docs/formats.md).
"""

from __future__ import annotations

import random

TEACHER_TASKS = ("extract-single", "extract-multi", "reasoning")
TEXT_TASKS = ("ocr-full", "ocr-needle")
ALL_TASKS = TEACHER_TASKS + TEXT_TASKS


def choose_segments(num_pages: int, lo: int, hi: int, rng: random.Random) -> list[tuple[int, int]]:
    """Consecutive [first, last) page ranges of lo..hi pages covering the document from page 0."""
    segments, start = [], 0
    while num_pages - start >= lo:
        length = min(rng.randint(lo, hi), num_pages - start)
        segments.append((start, start + length))
        start += length
    return segments


def page_label(pages: list[int]) -> str:
    """[2, 5, 6] -> 'pages 3, 6 and 7' (1-based)."""
    names = [str(p + 1) for p in pages]
    if len(names) == 1:
        return f"page {names[0]}"
    return f"pages {', '.join(names[:-1])} and {names[-1]}"


def _transcript(doc: dict, pages: list[int]) -> str:
    if len(pages) == 1:
        return doc["pages"][pages[0]]["text"]
    return "\n\n".join(f"Page {p + 1}:\n{doc['pages'][p]['text']}" for p in pages)


def ocr_full(doc: dict, segment: tuple[int, int]) -> dict | None:
    pages = [p for p in range(*segment)]
    if not any(doc["pages"][p]["text"] for p in pages):
        return None
    return {
        "question": f"Transcribe all the text of pages {segment[0] + 1} to {segment[1]}, page by page, in reading order.",
        "answer": _transcript(doc, pages),
        "answer_format": "Str",
        "evidence_pages": pages,
        "evidence_description": f"The full text of pages {segment[0] + 1}-{segment[1]}.",
    }


def ocr_needle(doc: dict, segment: tuple[int, int], rng: random.Random) -> dict | None:
    with_text = [p for p in range(*segment) if doc["pages"][p]["text"]]
    if not with_text:
        return None
    pages = sorted(rng.sample(with_text, min(len(with_text), rng.randint(1, 3))))
    return {
        "question": f"Transcribe the text of {page_label(pages)} in reading order.",
        "answer": _transcript(doc, pages),
        "answer_format": "Str",
        "evidence_pages": pages,
        "evidence_description": f"The text of {page_label(pages)}; the other pages are distractors.",
    }
