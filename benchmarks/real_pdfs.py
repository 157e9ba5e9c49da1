"""The real-PDF set: how to get it from Debian packages, and what the pool makes of it.

    python benchmarks/real_pdfs.py fetch OUT_DIR                 # apt-get download + dpkg -x, pick 18 files, make 3 scans
    PYTHONPATH=. python benchmarks/real_pdfs.py report PDF_DIR_OR_LIST [--layout model] [--draw DIR [--draw-pages K]] [--max-docs N]

`fetch` needs apt-get and network access to a Debian bookworm mirror (no root: `apt-get download`
only fetches .deb files). It writes the files SOURCES lists under their short names, plus three
scan-like image-only PDFs (grey JPEG, quality 70, 150 DPI, rotated 0.4 degrees, slightly blurred)
made from pages of three of them, and SOURCES.md. The .deb files and the extracted tree (about
1,500 PDFs under OUT_DIR.debian/x/usr/share/doc, a larger set for `report`) go beside OUT_DIR, not
in it: the pool and `report` search a directory recursively, and OUT_DIR is the 21-document set.

`report` runs the pool's per-document job (megatron_vlm.data.pdf.process_pdf, with the pool's
default settings unless told otherwise) on each PDF and prints per document: pages, CPU ms per
page (this process and the tesseract processes it starts), text quality verdicts, OCR pages with their confidence and languages, blocks by kind,
tables (rows x columns, continued ones), running headers / footers / page numbers found, and
page labels found; then totals. `--draw DIR` also writes pages (--draw-pages per document, spread
from the first to the last) with their blocks drawn on them (box and kind, colour by kind) as PNG, for a person to look at.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

PACKAGES = [
    "texlive-lang-chinese", "texlive-lang-german", "texlive-latex-recommended-doc",
    "auto-multiple-choice-doc-pdf", "texlive-science-doc", "texlive-publishers-doc",
]
DOC = "usr/share/doc"
SOURCES = {  # short name -> path under usr/share/doc, and what it is
    "paper_acm_sigconf.pdf": ("texlive-doc/latex/acmart/samples/sample-sigconf.pdf", "two-column paper, tables"),
    "paper_aps_twocol.pdf": ("texlive-doc/latex/revtex4-1/sample/aps/apssamp.pdf", "two-column physics paper, tables"),
    "paper_elsarticle.pdf": ("texlive-doc/latex/elsarticle/1psingleauthorgroup.pdf", "paper"),
    "paper_ieeepes.pdf": ("texlive-doc/latex/ieeepes/ieeepes_doc.pdf", "paper"),
    "tables_booktabs.pdf": ("texlive-doc/latex/booktabs/booktabs.pdf", "rule-only tables"),
    "tables_siunitx_manual.pdf": ("texlive-doc/latex/siunitx/siunitx.pdf", "82 p, many tables"),
    "de_gerdoc.pdf": ("texlive-doc/generic/german/gerdoc.pdf", "German"),
    "de_biblatex_book.pdf": ("texlive-doc/latex/translation-biblatex-de/biblatex-de-Benutzerhandbuch.pdf", "German, 157 p"),
    "manual_amc_en.pdf": ("auto-multiple-choice/auto-multiple-choice.en.pdf", "101 p manual"),
    "manual_listings.pdf": ("texlive-doc/latex/listings/listings.pdf", "63 p manual, tables"),
    "slides_verona.pdf": ("texlive-doc/latex/beamer-verona/beamer-verona.pdf", "slides"),
    "slides_bfh_de.pdf": ("texlive-doc/latex/bfh-ci/DEMO-BFHBeamer.pdf", "German slides"),
    "zh_ctex_manual.pdf": ("texlive-doc/latex/ctex/ctex.pdf", "Chinese, 175 p"),
    "zh_install_guide.pdf": ("texlive-doc/latex/install-latex-guide-zh-cn/install-latex-guide-zh-cn.pdf", "Chinese"),
    "zh_texproposal.pdf": ("texlive-doc/latex/texproposal/texproposal.pdf", "Chinese slides/report"),
    "book_sesamanuel_194p.pdf": ("texlive-doc/latex/sesamanuel/sesamanuel.pdf", "French, 194 p"),
    "report_uantwerpen.pdf": ("texlive-doc/latex/uantwerpendocs/uantwerpenreport-example.pdf", "report"),
    "report_dfg_final.pdf": ("texlive-doc/latex/proposal/dfg/report/finalreport.pdf", "report"),
}
SCANS = {  # scan name -> (source path under usr/share/doc, 0-based pages)
    "scan_zh_zhlipsum.pdf": ("texlive-doc/latex/zhlipsum/zhlipsum.pdf", range(2, 6)),
    "scan_de_gerdoc.pdf": ("texlive-doc/generic/german/gerdoc.pdf", range(1, 4)),
    "scan_en_aps.pdf": ("texlive-doc/latex/revtex4-1/sample/aps/apssamp.pdf", range(0, 2)),
}
COLOURS = {
    "heading": (0, 0, 1), "paragraph": (0.55, 0.55, 0.55), "list": (0.5, 0.5, 0), "table": (1, 0, 0), "caption": (1, 0.5, 0),
    "footnote": (0.3, 0.3, 0.3), "formula": (0, 0.6, 0.6), "figure": (0.6, 0, 0.6), "header": (0, 0.6, 0), "footer": (0, 0.6, 0),
    "page_number": (0, 0.8, 0),
}


def scan_like(src: Path, pages, out: Path) -> None:
    """An image-only PDF of some pages: grey, 150 DPI, rotated 0.4 degrees, blurred, JPEG quality 70."""
    import io

    import pymupdf
    from PIL import Image, ImageFilter

    source, scan = pymupdf.open(src), pymupdf.open()
    for i in pages:
        page = source[i]
        pix = page.get_pixmap(dpi=150, colorspace=pymupdf.csGRAY)
        image = Image.frombytes("L", (pix.width, pix.height), pix.samples)
        image = image.rotate(0.4, resample=Image.BICUBIC, fillcolor=255).filter(ImageFilter.GaussianBlur(0.6))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=70)
        scan.new_page(width=page.rect.width, height=page.rect.height).insert_image(page.rect, stream=buf.getvalue())
    scan.save(out, garbage=3, deflate=True, no_new_id=True)


def fetch(out: Path) -> int:
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        print("[real_pdfs] error: needs apt-get and dpkg (a Debian or Ubuntu machine)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    aside = out.with_name(out.name + ".debian")  # not under out: a directory input is searched recursively
    debs = aside / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    print(f"[real_pdfs] apt-get download {' '.join(PACKAGES)}", flush=True)
    if subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs).returncode != 0:
        print("[real_pdfs] error: apt-get download failed (run apt-get update? network?)", file=sys.stderr)
        return 1
    tree = aside / "x"
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(tree)], check=True)
    doc = tree / DOC
    lines = ["# Real PDFs (made by benchmarks/real_pdfs.py fetch; not in the repo)", "", f"Debian packages: {' '.join(PACKAGES)}",
             f"(extracted tree: {doc})", ""]
    for name, (rel, what) in SOURCES.items():
        shutil.copyfile(doc / rel, out / name)
        lines.append(f"- {name}: {rel} ({what})")
    for name, (rel, pages) in SCANS.items():
        scan_like(doc / rel, pages, out / name)
        lines.append(f"- {name}: pages {pages.start + 1}-{pages.stop} of {rel}, scan-like (grey JPEG q70, 150 DPI, 0.4 degrees, blur)")
    (out / "SOURCES.md").write_text("\n".join(lines) + "\n")
    n = sum(1 for _ in doc.rglob("*.pdf"))
    print(f"[real_pdfs] wrote {len(SOURCES) + len(SCANS)} PDFs and SOURCES.md to {out}; {n} PDFs under {doc}")
    return 0


def draw(page, blocks: list[dict], out: Path, dpi: int = 80) -> None:
    """The page with each block's box and kind drawn on it, as PNG."""
    import pymupdf

    doc = pymupdf.open()
    doc.insert_pdf(page.parent, from_page=page.number, to_page=page.number)
    copy = doc[0]
    shape = copy.new_shape()
    for b in blocks:
        r = pymupdf.Rect(b["bbox"]) * copy.rotation_matrix if copy.rotation else pymupdf.Rect(b["bbox"])
        colour = COLOURS.get(b["kind"], (0, 0, 0))
        shape.draw_rect(r)
        shape.finish(color=colour, width=1.2)
        label = b["kind"] + (f" {len(b['cells'])}x{len(b['cells'][0])}" if b["kind"] == "table" else "")
        label += f" {b['confidence']:.0f}" if b.get("confidence") is not None else ""
        shape.insert_text(r.tl + (1, -1.5), label, fontsize=6.5, color=colour)
    shape.commit()
    copy.get_pixmap(dpi=dpi).save(out)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the tesseract processes OCR runs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def spread(items: list, k: int) -> list:
    """k items evenly spread from the first to the last (a document's first pages are its title
    and contents, the least like the rest)."""
    if k <= 1 or len(items) <= k:
        return items[:max(k, 0)]
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


def report(inputs: list[Path], settings, draw_dir: Path | None, draw_pages: int) -> int:
    import pymupdf

    from megatron_vlm.data.pdf import PdfError, process_pdf

    totals, kinds_all, quality_all = Counter(), Counter(), Counter()
    print(f"{'document':44s} {'pages':>5s} {'ms/p':>6s}  quality  | OCR (conf, languages) | blocks by kind | tables | furniture | labels")
    for path in inputs:
        start = cpu_seconds()
        try:
            pages, _ = process_pdf(path.read_bytes(), settings, sink=lambda i, image: None)
        except PdfError as e:
            print(f"{path.name[:44]:44s} error: {e}")
            totals["errors"] += 1
            continue
        ms = (cpu_seconds() - start) * 1000 / len(pages)
        kinds = Counter(b["kind"] for p in pages for b in p["blocks"])
        quality = Counter(p["text_quality"] for p in pages)
        ocred = [p for p in pages if p["ocr"] == "tesseract"]
        tables = [b for p in pages for b in p["blocks"] if b["kind"] == "table"]
        labels = [p["page_label"] for p in pages if p["page_label"] is not None]
        ocr = (f"{len(ocred)} p, conf {min(p['ocr_confidence'] or 0 for p in ocred):.0f}-{max(p['ocr_confidence'] or 0 for p in ocred):.0f}, "
               f"{','.join(sorted({p['ocr_languages'] for p in ocred}))}" if ocred else "-")
        shapes = ",".join(f"{len(t['cells'])}x{len(t['cells'][0])}" + ("c" if t["continued_from"] is not None else "") for t in tables[:6])
        print(f"{path.name[:44]:44s} {len(pages):5d} {ms:6.0f}  {dict(quality)} | {ocr} | "
              f"{', '.join(f'{k} {n}' for k, n in kinds.most_common())} | {len(tables)} [{shapes}{'...' if len(tables) > 6 else ''}] | "
              f"h{kinds['header']} f{kinds['footer']} n{kinds['page_number']} | {len(labels)}/{len(pages)} {labels[:3]}", flush=True)
        totals.update(docs=1, pages=len(pages), ms=ms * len(pages), ocr_pages=len(ocred), tables=len(tables),
                      low_confidence=sum((p["ocr_confidence"] or 100) < 70 for p in ocred), labelled=len(labels))
        kinds_all.update(kinds)
        quality_all.update(quality)
        if draw_dir is not None:
            draw_dir.mkdir(parents=True, exist_ok=True)
            with pymupdf.open(path) as doc:
                for p in spread(pages, draw_pages):
                    draw(doc[p["index"]], p["blocks"], draw_dir / f"{path.stem}.p{p['index']:04d}.png")
    if totals["pages"]:
        print(f"\ntotal: {totals['docs']} documents, {totals['pages']} pages, {totals['ms'] / totals['pages']:.0f} ms CPU per page; "
              f"quality {dict(quality_all)}; {totals['ocr_pages']} pages OCRed ({totals['low_confidence']} low confidence); "
              f"{totals['tables']} tables; page labels on {totals['labelled']} pages; {totals['errors']} errors")
        print(f"blocks: {dict(kinds_all.most_common())}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download the Debian documentation packages and make the set")
    f.add_argument("out", type=Path)
    r = sub.add_parser("report", help="run the pool's per-document job on PDFs and print what it found")
    r.add_argument("input", type=Path, help="a directory (searched recursively), one PDF, or a list file")
    r.add_argument("--layout", choices=["model", "rules"], default="model")
    r.add_argument("--no-ocr", action="store_true")
    r.add_argument("--max-docs", type=int, default=0, help="only the first N documents (0: all)")
    r.add_argument("--draw", type=Path, default=None, help="write pages with their blocks drawn to this directory")
    r.add_argument("--draw-pages", type=int, default=4, help="pages drawn per document, spread from the first to the last")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        return fetch(args.out)
    from megatron_vlm.data.pdf import PdfSettings
    from megatron_vlm.data.pool import list_inputs

    inputs = [p for _, p in list_inputs(args.input)][: args.max_docs or None]
    settings = PdfSettings(layout=args.layout, ocr=not args.no_ocr)
    print(f"# PYTHONPATH=. python benchmarks/real_pdfs.py report {' '.join(sys.argv[2:] if argv is None else argv[1:])}")
    return report(inputs, settings, args.draw, args.draw_pages)


if __name__ == "__main__":
    sys.exit(main())
