"""Benchmark: pages/s per core of the `pool` stage versus plain pymupdf rendering of the same pages.

    PYTHONPATH=. python benchmarks/bench_pool.py [--docs 6] [--pages 10 12] [--dpi 144] [--image-format png]
                                                  [--input PDF_DIR] [--repeat 3]

Both sides run in this one process on one core. "bare" opens each PDF and renders every page with
`page.get_pixmap(dpi)`, and also encodes it the way the pool stores it (a rendering must be
stored to be used); "pool" is the whole stage (hash, validate, render, encode, layout blocks,
tables, token counts, tar and manifest writing) with --workers 1 and OCR off. Each side runs
--repeat times, interleaved, and the best time counts. The goal is pool <= 1.3x bare.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import pymupdf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_vlm.data import pool  # noqa: E402
from megatron_vlm.data.pdf import PdfSettings, _encode  # noqa: E402
from megatron_vlm.data.sample_pdfs import make_corpus  # noqa: E402


def bare(paths: list[Path], dpi: int, settings: PdfSettings | None) -> tuple[int, float]:
    start, pages = time.perf_counter(), 0
    for path in paths:
        with pymupdf.open(path) as doc:
            for page in doc:
                pix = page.get_pixmap(dpi=dpi, alpha=False)
                if settings is not None:
                    _encode(pix, settings)
                pages += 1
    return pages, time.perf_counter() - start


def run_pool(inp: Path, out: Path, args) -> tuple[int, float]:
    parser = argparse.ArgumentParser()
    pool.add_arguments(parser)
    pa = parser.parse_args(["--input", str(inp), "--output", str(out), "--dpi", str(args.dpi), "--image-format", args.image_format,
                            "--no-ocr", "--quiet", "--workers", "1"])
    start = time.perf_counter()
    counts = pool.run(pa)
    return counts["pages"], time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=6)
    parser.add_argument("--pages", type=int, nargs=2, default=(10, 12))
    parser.add_argument("--dpi", type=int, default=144)
    parser.add_argument("--image-format", choices=["png", "jpg"], default="png")
    parser.add_argument("--input", help="a directory of real PDFs instead of generated ones")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.input:
            inp = Path(args.input)
        else:
            inp = tmp / "pdfs"
            make_corpus(inp, args.docs, tuple(args.pages), seed=0, scanned=False)
        paths = [p for _, p in pool.list_inputs(inp)]
        settings = PdfSettings(dpi=args.dpi, image_format=args.image_format)
        bare(paths[:1], args.dpi, settings)  # warm up
        best = {"render": float("inf"), "render+encode": float("inf"), "pool": float("inf")}
        pages = {}
        for r in range(args.repeat):
            pages["render"], t = bare(paths, args.dpi, None)
            best["render"] = min(best["render"], t)
            pages["render+encode"], t = bare(paths, args.dpi, settings)
            best["render+encode"] = min(best["render+encode"], t)
            pages["pool"], t = run_pool(inp, tmp / f"pool{r}", args)
            best["pool"] = min(best["pool"], t)
    n = pages["pool"]
    assert n == pages["render"], (n, pages)
    print(f"command: PYTHONPATH=. python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"{len(paths)} PDFs, {n} pages, {args.dpi} DPI, {args.image_format}, 1 core, best of {args.repeat}")
    for name, t in best.items():
        print(f"  {name:<14} {n / t:8.1f} pages/s per core  ({t * 1000 / n:6.1f} ms/page)")
    ratio = best["pool"] / best["render+encode"]
    print(f"  pool / bare render+encode = {ratio:.2f}x (goal <= 1.3x); pool / render alone = {best['pool'] / best['render']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
