"""Benchmark: pages/s per core of the `pool` stage versus plain pymupdf rendering of the same pages.

    PYTHONPATH=. python benchmarks/bench_pool.py [--docs 6] [--pages 10 12] [--kind text|scan] [--dpi 144]
                                                  [--image-format png] [--input PDF_DIR] [--repeat 3] [--profile 25]

Generated inputs: --kind text (default) is sample_pdfs.make_corpus (vector text, headings, lists,
ruled tables); --kind scan is image-only pages, each a 300-DPI greyish JPEG "scan" of text, where
decoding and scaling the image makes rendering itself expensive.

Everything runs in this one process on one core. The headline is pool / render, where "render"
opens each PDF and calls `page.get_pixmap(dpi=DPI)` on every page and nothing else (the goal in
issue #5: pool <= 1.3x, set before the layout model). Beside it, two baselines that also store
the page: "render+png" adds pymupdf's own `pix.tobytes("png")`, "render+encode" adds the pool's
encoder (render.encode). "pool" is the whole stage with its default layout (pymupdf's layout
model): hash, validate, render, encode, text and its quality verdict, layout blocks, tables,
headers and page labels, token counts, tar and manifest writing, with --workers 1 and OCR off;
"pool-rules" the same with `--layout rules` (no model). "pool-no-image" is the floor under
"pool": pdf.process_pdf on every input with the image encoder replaced by a no-op, i.e. the
render plus the text and layout work, with no image stored, no tar and no manifest.
"render+text" is the least plain pymupdf can do for a page's image and its text with fonts: one
display list, rendered, and read into a text dict (pymupdf's `extractDICT`), nothing else. Each side runs --repeat times,
interleaved, and the best time counts. Times are CPU seconds of this process (time.process_time:
the cost per core, and much less disturbed by other work on a shared machine than wall time,
which is printed too). --profile N prints the N most expensive functions
(cProfile, own time) of one more pool run, to show what the remaining cost is.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pymupdf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_vlm.data import pdf, pool  # noqa: E402
from megatron_vlm.data.pdf import PdfSettings  # noqa: E402
from megatron_vlm.data.render import encode  # noqa: E402
from megatron_vlm.data.sample_pdfs import make_corpus  # noqa: E402


def clock() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def since(start: tuple[float, float]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) since `start`."""
    now = clock()
    return now[0] - start[0], now[1] - start[1]


def render(paths: list[Path], dpi: int, store=None) -> tuple[int, tuple[float, float]]:
    """Pages and (CPU, wall) seconds to open every PDF and render each page (then `store(pix)`, if given)."""
    start, pages = clock(), 0
    for path in paths:
        with pymupdf.open(path) as doc:
            for page in doc:
                pix = page.get_pixmap(dpi=dpi, alpha=False)
                if store is not None:
                    store(pix)
                pages += 1
    return pages, since(start)


def make_scans(out: Path, docs: int, pages: tuple[int, int], seed: int = 0) -> None:
    """`docs` PDFs of image-only US-Letter pages: paper noise and lines of text at 300 DPI, as JPEG."""
    import io
    import random

    import numpy as np
    from PIL import Image, ImageDraw

    rng, noise = random.Random(seed), np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for d in range(docs):
        doc = pymupdf.open()
        for _ in range(rng.randint(*pages)):
            paper = (235 + noise.normal(0, 8, (3300, 2550))).clip(0, 255).astype(np.uint8)
            scan = Image.fromarray(paper).convert("RGB")
            draw = ImageDraw.Draw(scan)
            for k in range(60):
                draw.text((150, 200 + 48 * k), " ".join(rng.choice(["lorem", "ipsum", "dolor", "sit", "amet"]) for _ in range(24)), fill=(20, 20, 30))
            jpeg = io.BytesIO()
            scan.save(jpeg, "JPEG", quality=80)
            page = doc.new_page(width=612, height=792)
            page.insert_image(page.rect, stream=jpeg.getvalue())
        doc.save(out / f"scan-{d:03d}.pdf")


def render_and_read(paths: list[Path], dpi: int) -> tuple[int, tuple[float, float]]:
    """Pages and (CPU, wall) seconds to render each page and read its text dict from one display list."""
    zoom, start, pages = pymupdf.Matrix(dpi / 72, dpi / 72), clock(), 0
    for path in paths:
        with pymupdf.open(path) as doc:
            for page in doc:
                display_list = page.get_displaylist()
                display_list.get_pixmap(matrix=zoom, alpha=False)
                text = pymupdf.TextPage(display_list.get_textpage(pdf.TEXT_FLAGS))
                text.parent = page
                text.extractDICT()
                pages += 1
    return pages, since(start)


def pages_without_image(paths: list[Path], settings: PdfSettings) -> tuple[int, tuple[float, float]]:
    """process_pdf on every input with the encoder swapped for a no-op: the pool's cost floor without storing images."""
    real, pdf.encode = pdf.encode, lambda pix, image_format, jpg_quality: b""
    try:
        start, pages = clock(), 0
        for path in paths:
            pages += len(pdf.process_pdf(path.read_bytes(), settings, sink=lambda i, image: None)[0])
        return pages, since(start)
    finally:
        pdf.encode = real


def run_pool(inp: Path, out: Path, args, layout: str = "model") -> tuple[int, tuple[float, float]]:
    start = clock()
    counts = pool.build_pool(inp, out, dpi=args.dpi, image_format=args.image_format, no_ocr=True, workers=1, layout=layout)
    return counts["pages"], since(start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=6)
    parser.add_argument("--pages", type=int, nargs=2, default=(10, 12))
    parser.add_argument("--kind", choices=["text", "scan"], default="text", help="what to generate (without --input)")
    parser.add_argument("--dpi", type=int, default=144)
    parser.add_argument("--image-format", choices=["png", "jpg"], default="png")
    parser.add_argument("--input", help="a directory of real PDFs instead of generated ones")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print the N functions with the most own time in one pool run")
    args = parser.parse_args()
    settings = PdfSettings(dpi=args.dpi, image_format=args.image_format)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.input:
            inp = Path(args.input)
        else:
            inp = tmp / "pdfs"
            if args.kind == "text":
                make_corpus(inp, args.docs, tuple(args.pages), seed=0, scanned=False)
            else:
                make_scans(inp, args.docs, tuple(args.pages))
        paths = [p for _, p in pool.list_inputs(inp)]
        render(paths[:1], args.dpi)  # warm up
        # order moves results by a few percent (what ran before leaves allocator and caches changed):
        # the pool runs right after the bare render, as in the figures of docs/data_prep.md
        sides = {
            "render": lambda r: render(paths, args.dpi),
            "pool": lambda r: run_pool(inp, tmp / f"pool{r}", args),
            "pool-rules": lambda r: run_pool(inp, tmp / f"rules{r}", args, "rules"),
            "render+png": lambda r: render(paths, args.dpi, lambda pix: pix.tobytes("png")),
            "render+encode": lambda r: render(paths, args.dpi, lambda pix: encode(pix, args.image_format)),
            "render+text": lambda r: render_and_read(paths, args.dpi),
            "pool-no-image": lambda r: pages_without_image(paths, replace(settings, ocr=False)),
        }
        best = {name: float("inf") for name in sides}
        wall = dict(best)
        pages = {}
        for r in range(args.repeat):
            for name, run in sides.items():
                pages[name], (t, w) = run(r)
                best[name], wall[name] = min(best[name], t), min(wall[name], w)
        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(run_pool, inp, tmp / "profiled", args)
    n = pages["pool"]
    assert all(v == n for v in pages.values()), pages
    print(f"command: PYTHONPATH=. python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"{len(paths)} PDFs, {n} pages, {args.dpi} DPI, {args.image_format}, 1 core, best of {args.repeat}, CPU time")
    for name, t in best.items():
        print(f"  {name:<14} {n / t:8.1f} pages/s per core  ({t * 1000 / n:6.2f} ms/page)  pool / {name} = {best['pool'] / t:5.2f}x"
              f"   [wall {wall[name] * 1000 / n:6.2f} ms/page]")
    print(f"pool / render (bare page.get_pixmap at {args.dpi} DPI) = {best['pool'] / best['render']:.2f}x with the layout model, "
          f"{best['pool-rules'] / best['render']:.2f}x with --layout rules (issue #5's goal, before the model: <= 1.3x)")
    print(f"floors: render+text / render = {best['render+text'] / best['render']:.2f}x (plain pymupdf: render and text dict), "
          f"pool-no-image / render = {best['pool-no-image'] / best['render']:.2f}x (the pool storing no image)")
    if args.profile:
        print(f"\none more pool run under cProfile ({args.profile} functions with the most own time; profiling slows it):")
        pstats.Stats(profile, stream=sys.stdout).sort_stats("tottime").print_stats(args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
