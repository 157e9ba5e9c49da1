"""Checkable facts read from a pool page's layout blocks: table cells (with their row and column
labels and caption), headings, and numbers inside sentences.

The template teacher builds questions from these; every answer is a string that occurs in the
page's text, so validation can find it there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NUMBER_RE = re.compile(r"(?<![\w.,])[-+]?\$?\d{1,3}(?:,\d{3})+(?:\.\d+)?%?(?![\w,])|(?<![\w.,])[-+]?\$?\d+(?:\.\d+)?%?(?![\w,])")
SENTENCE_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
YEAR_RE = re.compile(r"^(1[89]|20)\d\d$")


@dataclass(frozen=True)
class Fact:
    kind: str  # "cell" | "heading" | "sentence"
    page: int
    value: str  # the answer, as printed on the page
    label: str = ""  # cell: row label; sentence: the sentence with the value blanked
    column: str = ""  # cell: column label
    caption: str = ""  # cell: the caption of its table, when there is one

    def where(self) -> str:
        """How a question names this fact (1-based page numbers, as a reader says them)."""
        if self.kind == "cell":
            table = f'the table "{self.caption}"' if self.caption else "the table"
            return f'the value in row "{self.label}", column "{self.column}" of {table} on page {self.page + 1}'
        if self.kind == "sentence":
            return f'the number missing from "{self.label}" on page {self.page + 1}'
        return f"the first heading on page {self.page + 1}"


def parse_number(text: str) -> float | None:
    """'4,312' -> 4312.0, '$1.5' -> 1.5, '12%' -> 12.0; None when the text is not a single number."""
    t = text.strip().replace(",", "").replace("$", "").rstrip("%")
    try:
        return float(t)
    except ValueError:
        return None


def number_format(text: str) -> str:
    value = parse_number(text)
    if value is None:
        return "Str"
    return "Int" if "." not in text else "Float"


def page_facts(page: dict) -> list[Fact]:
    """All facts of one pool page, in reading order."""
    facts: list[Fact] = []
    blocks = page["blocks"]
    first_heading = next((b for b in blocks if b["kind"] == "heading"), None)
    if first_heading and len(first_heading["text"]) >= 3:
        facts.append(Fact("heading", page["index"], first_heading["text"]))
    for i, block in enumerate(blocks):
        if block["kind"] == "table":
            caption = next((b["text"] for b in reversed(blocks[:i]) if b["kind"] == "caption"), "")
            facts += _cell_facts(page["index"], block.get("cells") or [], caption)
        elif block["kind"] in ("paragraph", "list"):
            for sentence in SENTENCE_RE.split(" ".join(block["text"].split())):
                numbers = NUMBER_RE.findall(sentence)
                for number in numbers:
                    if YEAR_RE.match(number) or sentence.count(number) != 1 or len(sentence) > 300:
                        continue
                    blanked = sentence.replace(number, "___")
                    facts.append(Fact("sentence", page["index"], number, label=blanked))
    return facts


def _cell_facts(page: int, cells: list[list[str]], caption: str) -> list[Fact]:
    if len(cells) < 2 or len(cells[0]) < 2:
        return []
    header = cells[0]
    labels = [row[0] for row in cells[1:]]
    facts = []
    for row in cells[1:]:
        if not row[0] or labels.count(row[0]) != 1:
            continue  # an unlabeled or repeated row cannot be named unambiguously
        for c in range(1, min(len(row), len(header))):
            if row[c] and header[c] and header.count(header[c]) == 1:
                facts.append(Fact("cell", page, row[c], label=row[0], column=header[c], caption=caption))
    return facts
