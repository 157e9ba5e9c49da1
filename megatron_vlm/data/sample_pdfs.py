"""Generate demo/test PDFs whose content is known: headings, paragraphs with numbers, bullet lists,
ruled tables with captions, a scanned-looking image-only page, and a set of bad inputs.

    from megatron_vlm.data.sample_pdfs import make_corpus, make_bad_inputs
    docs = make_corpus("pdfs/", n_docs=4, pages=(10, 14), seed=0)   # -> [DocSpec, ...]
    bad = make_bad_inputs("pdfs/bad/")                               # -> {filename: expected reason word}

    python -m megatron_vlm.data.sample_pdfs OUT_DIR [--docs N] [--pages MIN MAX] [--seed S] [--bad]

Everything is a pure function of the seed, so the same call writes byte-identical files. The
returned DocSpec says what each page holds, so tests can check extraction against it.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field
from pathlib import Path

import pymupdf

LETTER = (612.0, 792.0)
A4 = (595.0, 842.0)
MARGIN = 60.0
BODY_SIZE = 10.5
HEADING_SIZE = 16.0
TITLE_SIZE = 22.0

COMPANIES = ["Aldmere", "Brightwater", "Corvale", "Dunmore", "Eastfield", "Fenwick", "Glenrock", "Harlow"]
METRICS = ["revenue", "output", "headcount", "shipments", "orders", "energy use"]
UNITS = ["north", "south", "east", "west", "central", "coastal"]
REGIONS = ["Northern", "Southern", "Eastern", "Western", "Central"]
TOPICS = ["Operations", "Markets", "Logistics", "Research", "Staffing", "Outlook", "Supply", "Quality"]
WORDS = (
    "the program continued to expand while teams reviewed costs schedules and risks across every site "
    "during the period under review with steady attention to safety training and customer service"
).split()


@dataclass
class TableSpec:
    caption: str
    header: list[str]
    rows: list[list[str]]


@dataclass
class PageSpec:
    index: int
    kind: str  # "text" | "scan"
    headings: list[str] = field(default_factory=list)
    paragraphs: list[str] = field(default_factory=list)
    list_items: list[str] = field(default_factory=list)
    table: TableSpec | None = None
    facts: list[tuple[str, str]] = field(default_factory=list)  # (sentence prefix, number) pairs

    def words(self) -> list[str]:
        """Every word the page shows, in no particular order."""
        parts = [*self.headings, *self.paragraphs, *self.list_items]
        if self.table:
            parts += [self.table.caption, *self.table.header, *(c for r in self.table.rows for c in r)]
        return " ".join(parts).split()


@dataclass
class DocSpec:
    path: Path
    width_pt: float
    height_pt: float
    pages: list[PageSpec]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _page_spec(rng: random.Random, index: int, company: str, scan: bool) -> PageSpec:
    spec = PageSpec(index=index, kind="scan" if scan else "text")
    if index == 0:
        spec.headings.append(f"Annual Report of {company} Holdings")
    spec.headings.append(f"Section {index + 1}: {rng.choice(TOPICS)}")
    facts = []
    for _ in range(2):
        metric, unit, year = rng.choice(METRICS), rng.choice(UNITS), rng.randint(2015, 2024)
        value = f"{rng.randint(1000, 99999):,}"
        prefix = f"In {year} the {metric} of the {unit} division was"
        facts.append((prefix, value))
    spec.facts = facts
    spec.paragraphs.append(
        f"{_sentence(rng, 12)} {facts[0][0]} {facts[0][1]} units. {_sentence(rng, 10)} "
        f"{facts[1][0]} {facts[1][1]} units. {_sentence(rng, 14)}"
    )
    if scan:
        return spec
    spec.list_items = [f"- {_sentence(rng, 6)}" for _ in range(3)]
    if index % 2 == 1:
        metric = rng.choice(METRICS)
        years = sorted(rng.sample(range(2016, 2025), 3))
        rows = [[r] + [str(rng.randint(100, 9999)) for _ in years] for r in rng.sample(REGIONS, 4)]
        spec.table = TableSpec(f"Table {index + 1}: {metric.capitalize()} by region", ["Region"] + [str(y) for y in years], rows)
    spec.paragraphs.append(_sentence(rng, 18))
    return spec


def _wrap(text: str, size: float, width: float, font: str = "helv") -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and pymupdf.get_text_length(trial, fontname=font, fontsize=size) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


def _draw_page(page: pymupdf.Page, spec: PageSpec) -> None:
    width = page.rect.width - 2 * MARGIN
    y = MARGIN + TITLE_SIZE

    def text_block(text: str, size: float, font: str, gap: float) -> None:
        nonlocal y
        for line in _wrap(text, size, width, font):
            page.insert_text((MARGIN, y), line, fontsize=size, fontname=font)
            y += size * 1.3
        y += gap

    for i, heading in enumerate(spec.headings):
        text_block(heading, TITLE_SIZE if (spec.index == 0 and i == 0) else HEADING_SIZE, "hebo", 12)
    text_block(spec.paragraphs[0], BODY_SIZE, "helv", 14)
    for item in spec.list_items:
        text_block(item, BODY_SIZE, "helv", 2)
    y += 12
    if spec.table:
        t = spec.table
        text_block(t.caption, BODY_SIZE - 1, "helv", 6)
        row_h, col_w = 20.0, width / len(t.header)
        top = y - BODY_SIZE
        page.draw_rect(pymupdf.Rect(MARGIN, top, MARGIN + width, top + row_h), color=None, fill=(0.85, 0.9, 1.0))  # a coloured header
        for r, row in enumerate([t.header, *t.rows]):
            for c, cell in enumerate(row):
                page.insert_text((MARGIN + c * col_w + 5, top + r * row_h + 14), cell, fontsize=BODY_SIZE, fontname="hebo" if r == 0 else "helv")
        n_rows = len(t.rows) + 1
        for r in range(n_rows + 1):
            page.draw_line((MARGIN, top + r * row_h), (MARGIN + width, top + r * row_h), width=0.7)
        for c in range(len(t.header) + 1):
            page.draw_line((MARGIN + c * col_w, top), (MARGIN + c * col_w, top + n_rows * row_h), width=0.7)
        y = top + n_rows * row_h + 24
    for para in spec.paragraphs[1:]:
        text_block(para, BODY_SIZE, "helv", 14)


def _scan_image(width: float, height: float, spec: PageSpec, rng: random.Random) -> bytes:
    """Render the page's text on a scratch page, then return it as a slightly noisy grey image."""
    scratch = pymupdf.open()
    _draw_page(scratch.new_page(width=width, height=height), spec)
    pix = scratch[0].get_pixmap(dpi=200, colorspace=pymupdf.csGRAY)
    samples = bytearray(pix.samples)
    for _ in range(len(samples) // 400):  # speckle, like a photocopy
        samples[rng.randrange(len(samples))] = rng.randint(90, 200)
    noisy = pymupdf.Pixmap(pymupdf.csGRAY, pix.width, pix.height, bytes(samples), False)
    return noisy.tobytes("png")


def make_pdf(spec: DocSpec, seed: int = 0) -> Path:
    """Write the PDF that ``spec`` describes to ``spec.path`` (deterministically)."""
    rng = random.Random(f"scan:{seed}:{spec.path.name}")
    doc = pymupdf.open()
    for page_spec in spec.pages:
        page = doc.new_page(width=spec.width_pt, height=spec.height_pt)
        if page_spec.kind == "scan":
            page.insert_image(page.rect, stream=_scan_image(spec.width_pt, spec.height_pt, page_spec, rng))
        else:
            _draw_page(page, page_spec)
    doc.set_metadata({"producer": "megatron-vlm sample_pdfs", "creator": "", "creationDate": "", "modDate": ""})
    spec.path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(spec.path, garbage=3, deflate=True, no_new_id=True)
    return spec.path


def make_corpus(
    out_dir: str | Path, n_docs: int = 4, pages: tuple[int, int] = (3, 6), seed: int = 0, scanned: bool = True
) -> list[DocSpec]:
    """Write ``n_docs`` PDFs named doc-NNN.pdf into ``out_dir``; return what each page holds.

    Documents alternate US-Letter and A4. With ``scanned``, every third document (doc-000, doc-003,
    ...) with at least 3 pages has page 2 as an image-only "scan" with no text layer.
    """
    out_dir = Path(out_dir)
    specs = []
    for d in range(n_docs):
        rng = random.Random(f"{seed}:{d}")
        n_pages = rng.randint(pages[0], pages[1])
        company = rng.choice(COMPANIES)
        scan_page = 2 if (scanned and d % 3 == 0 and n_pages >= 3) else -1
        page_specs = [_page_spec(rng, i, company, i == scan_page) for i in range(n_pages)]
        width, height = LETTER if d % 2 == 0 else A4
        spec = DocSpec(out_dir / f"doc-{d:03d}.pdf", width, height, page_specs)
        make_pdf(spec, seed)
        specs.append(spec)
    return specs


def _raw_pdf(objects: list[bytes], trailer_extra: bytes = b"") -> bytes:
    """A minimal PDF from numbered object bodies (1..n) with a correct xref table."""
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R %s>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, trailer_extra, xref)
    return bytes(out)


def make_bad_inputs(out_dir: str | Path) -> dict[str, str]:
    """Write one file per kind of bad input; return {file name: a word its error reason contains}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    good = pymupdf.open()
    for i in range(3):
        good.new_page(width=LETTER[0], height=LETTER[1]).insert_text((72, 100), f"Page {i + 1} of a sound file", fontsize=12)
    good_bytes = good.tobytes(garbage=3, deflate=True, no_new_id=True)

    files = {
        "corrupt.pdf": (b"%PDF-1.7\n" + bytes(random.Random(7).randrange(256) for _ in range(4000)) + b"\n%%EOF\n", "corrupt"),
        "truncated.pdf": (good_bytes[: len(good_bytes) * 3 // 5], "truncated"),
        "zero-page.pdf": (_raw_pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"]), "no pages"),
        "not-a-pdf.pdf": (b"<html><body>This is a web page saved with a .pdf name.</body></html>\n", "not a PDF"),
        "empty.pdf": (b"", "empty"),
    }
    giant = pymupdf.open()
    giant.new_page(width=14400, height=14400).insert_text((72, 100), "giant", fontsize=12)
    files["giant-page.pdf"] = (giant.tobytes(no_new_id=True), "too large")
    files["encrypted.pdf"] = (
        good.tobytes(no_new_id=True, encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="secret", owner_pw="owner"),
        "encrypted",
    )
    for name, (data, _) in files.items():
        (out_dir / name).write_bytes(data)
    return {name: word for name, (_, word) in files.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="write sample PDFs with known content")
    parser.add_argument("out_dir")
    parser.add_argument("--docs", type=int, default=4)
    parser.add_argument("--pages", type=int, nargs=2, default=(10, 14), metavar=("MIN", "MAX"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bad", action="store_true", help="also write the bad-input set into OUT_DIR/bad")
    args = parser.parse_args(argv)
    specs = make_corpus(args.out_dir, args.docs, tuple(args.pages), args.seed)
    print(f"[sample_pdfs] wrote {len(specs)} PDFs ({sum(len(s.pages) for s in specs)} pages) to {args.out_dir}")
    if args.bad:
        bad = make_bad_inputs(Path(args.out_dir) / "bad")
        print(f"[sample_pdfs] wrote {len(bad)} bad inputs to {Path(args.out_dir) / 'bad'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
