"""A small report PDF whose facts the tests know: numbered sections, quantities in sentences, ruled
tables with and without labels, facts that are ambiguous in the whole document, and a running
header and footer (one with a number) on every page. `make_report(path)` writes it and returns
the truth the tests check synth, validation and qa-check against."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pymupdf

from megatron_vlm.data.synth.facts import normalize

HEADER = "Harlow Annual Review 2023"
FOOTER = "This review was prepared by 14 members of the survey team"


@dataclass
class ReportTruth:
    path: Path
    pages: int
    sections: dict[str, str]  # number -> title
    cells: dict[tuple[str, str, str], str]  # (table label, row, column) -> value, labelled tables
    quantities: dict[tuple[str, str], str]  # (section heading, clause words before the number) -> value
    ambiguous: set[str]  # values that exist but must never be asked: ambiguous in the document
    never: set[str] = field(default_factory=set)  # values from headers, footers, phone/grant numbers
    header_footer: tuple[str, str] = (HEADER, FOOTER)


# Per page: (heading or None, [paragraphs], [(caption or None, header, rows)][, (heading, paragraph) after the tables])
PAGES = [
    ("1 Introduction", [
        "The survey reached 1,240 households in the northern district of the county.",
        "Questions about the study go to the office at +49 30 1234 5678 under grant 442-17 of the council.",
    ], []),
    ("2 Methods", [
        "Each interview lasted 45 minutes on average across all districts.",
    ], [("Table 1: Households by district", ["District", "Households", "Share (%)"],
         [["North", "1,240", "41.3"], ["South", "980", "32.7"], ["East", "780", "26.0"]])]),
    ("2.1 Sampling", [
        "The pilot sample included 120 volunteers from the city and its suburbs.",
    ], [(None, ["Item", "Status"], [["Printing", "Pending"], ["Binding", "Stitched by hand"], ["Mailing", "Pending"]])]),
    (None, [
        "The pilot sample included 150 volunteers from the city and its suburbs.",
    ], [(None, ["Item", "Status"], [["Printing", "Delayed twice"], ["Archiving", "Scanned to microfilm"], ["Sorting", "Not started"]])],
     ("2.2 Weighting", "Answers were weighted by the size of each district.")),
    ("3 Results", [
        "The response rate was 68% in the first wave of the survey.",
    ], [("Table 2: Responses by wave", ["Wave", "Responses", "Rate (%)"],
         [["First", "843", "68"], ["Second", "512", "41"], ["Third", "300", "24"]])]),
    ("4 Discussion", [
        "The field work took 36 days in the autumn of the survey year.",
        "The final report runs to 48 chapters with the appendices included.",
    ], []),
]


def make_report(path: Path) -> ReportTruth:
    doc = pymupdf.open()
    n = len(PAGES)
    for i, (heading, paragraphs, tables, *tail) in enumerate(PAGES):
        page = doc.new_page(width=612, height=792)
        page.insert_text((60, 40), HEADER, fontsize=9, fontname="helv")
        page.insert_text((60, 770), f"{FOOTER} - {i + 1} / {n}", fontsize=9, fontname="helv")
        y = 90.0
        if heading:
            page.insert_text((60, y), heading, fontsize=15, fontname="hebo")
            y += 34
        for text in paragraphs:
            page.insert_textbox(pymupdf.Rect(60, y - 11, 552, y + 40), text, fontsize=10.5, fontname="helv")
            y += 56
        for caption, header, rows in tables:
            if caption:
                page.insert_text((60, y), caption, fontsize=9.5, fontname="helv")
                y += 14
            top, row_h, col_w = y, 20.0, 492 / len(header)
            for r, row in enumerate([header, *rows]):
                for c, cell in enumerate(row):
                    page.insert_text((65 + c * col_w, top + r * row_h + 14), cell, fontsize=10.5, fontname="hebo" if r == 0 else "helv")
            for r in range(len(rows) + 2):
                page.draw_line((60, top + r * row_h), (552, top + r * row_h), width=0.7)
            for c in range(len(header) + 1):
                page.draw_line((60 + c * col_w, top), (60 + c * col_w, top + (len(rows) + 1) * row_h), width=0.7)
            y = top + (len(rows) + 1) * row_h + 30
        for late_heading, text in tail:
            page.insert_text((60, y), late_heading, fontsize=15, fontname="hebo")
            page.insert_textbox(pymupdf.Rect(60, y + 23, 552, y + 74), text, fontsize=10.5, fontname="helv")
    doc.set_metadata({"producer": "megatron-vlm tests", "creationDate": "", "modDate": ""})
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(path, garbage=3, deflate=True, no_new_id=True)
    return ReportTruth(
        path=path,
        pages=n,
        sections={"1": "Introduction", "2": "Methods", "2.1": "Sampling", "2.2": "Weighting", "3": "Results", "4": "Discussion"},
        cells={
            **{("Table 1", r[0], h): v for r in PAGES[1][2][0][2] for h, v in zip(["Households", "Share (%)"], r[1:])},
            **{("Table 2", r[0], h): v for r in PAGES[4][2][0][2] for h, v in zip(["Responses", "Rate (%)"], r[1:])},
            ("2.1 Sampling", "Binding", "Status"): "Stitched by hand",
            ("2.1 Sampling", "Archiving", "Status"): "Scanned to microfilm",
            ("2.1 Sampling", "Sorting", "Status"): "Not started",
        },
        quantities={
            ("1 Introduction", "The survey reached"): "1,240",
            ("2 Methods", "Each interview lasted"): "45",
            ("3 Results", "The response rate was"): "68%",
            ("4 Discussion", "The field work took"): "36",
            ("4 Discussion", "The final report runs to"): "48",
        },
        ambiguous={"120", "150", "Pending", "Delayed twice"},
        never={"14", "49", "30", "1234", "5678", "442", "17", "2023"},
    )


def pool_and_qa(root: Path, per_segment: int = 4, **synth_options) -> tuple[ReportTruth, Path, Path, dict]:
    """The report PDF under root/pdfs, its pool (root/pool, no OCR) and the template teacher's
    records for it (root/qa, segments of 3 pages): (truth, pool dir, QA dir, synth summary)."""
    from megatron_vlm.data import pool
    from megatron_vlm.data.synth.run import synthesize

    truth = make_report(root / "pdfs" / "report.pdf")
    pool.build_pool(root / "pdfs", root / "pool", no_ocr=True)
    summary = synthesize(root / "pool", root / "qa", segment_pages=(3, 3), per_segment=per_segment, **synth_options)
    return truth, root / "pool", root / "qa", summary


def named_in(question: str, items: list[tuple], sections: dict[str, str]) -> list[tuple]:
    """The known facts a question names, in the order it names them.

    `items` are (kind, names, value, group): a cell's names are (table label or section, row,
    column), matched with the row and column in quotes; a quantity's are (section, the clause's
    words before the number). Section titles are named as "section N" / "sections N, M and K".
    """
    q = normalize(question)
    found = []
    for kind, names, value, group in items:
        if kind == "cell":
            names = (names[0], f'"{names[1]}"', f'"{names[2]}"')
        offset = 0
        for part in q.split(";"):  # a list of things names each within one part
            if all(normalize(n) in part for n in names):
                found.append((offset + part.index(normalize(names[1])), kind, names, value, group))
            offset += len(part) + 1
    if m := re.match(r"What (?:is the title of section|are the titles of sections) ([\d., and]+)\?", question):
        numbers = re.findall(r"\d+(?:\.\d+)*", m[1])
        found += [(m.start(1) + m[1].index(n), "section", (n,), sections[n], "section") for n in numbers]
    return [f[1:] for f in sorted(found)]


def check_reasoning(question: str, answer: str, named: list[tuple]) -> None:
    """Recompute a template reasoning answer from the known values the question names."""
    from megatron_vlm.data.synth.facts import parse_number

    values = {n[1][1].strip('"'): parse_number(n[2]) for n in named}
    ordered = [parse_number(n[2]) for n in named]
    if m := re.search(r'of the row "(.+?)" minus that of the row "(.+?)"', question):
        expected = values[m[1]] - values[m[2]]
    elif "What is (1) minus (2)?" in question:
        expected = ordered[0] - ordered[1]
    elif "What is (1) plus (2)?" in question or "the sum of" in question:
        expected = sum(ordered)
    elif m := re.search(r"has the (largest|smallest)", question):
        pick = (max if m[1] == "largest" else min)(values.values())
        assert answer == next(k for k, v in values.items() if v == pick), question
        return
    else:
        threshold = float(re.search(r"greater than ([\d.]+)\?", question)[1])
        expected = sum(v > threshold for v in values.values())
    assert abs(parse_number(answer) - expected) < 1e-6, (question, answer, expected)
