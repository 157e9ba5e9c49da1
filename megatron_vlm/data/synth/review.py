"""`preprocess_data.py review`: a static HTML page of sampled QA records, to judge them at a glance.

    python tools/preprocess_data.py review --pool POOL_DIR --qa QA_DIR --output REVIEW_DIR [--num 40] [--seed 0]

Samples N records (the reader tasks by default, `--tasks` to choose), and writes REVIEW_DIR as one
self-contained directory: index.html (per record: the question, the answer, the evidence
description, the document and its evidence pages with their printed page labels, the page text
around the answer with the answer marked, and the rules qa-check finds broken, if any),
images/<doc id>-pNNNN.png (each evidence page, scaled to --width pixels) and review.json (the
sampled records). Every name inside it is built from checked ids (records.py) and page numbers,
so nothing is written outside it. The directory is written aside and renamed; an existing one is
replaced only if it is an earlier review (it holds review.json).
"""

from __future__ import annotations

import html
import io
import json
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from megatron_vlm.data.pool_format import iter_documents
from megatron_vlm.data.synth.facts import FactCache
from megatron_vlm.data.synth.records import by_document, read_records
from megatron_vlm.data.synth.tasks import ALL_TASKS
from megatron_vlm.data.synth.validation import READER_TASKS, answer_items, problems
from megatron_vlm.utils import atomic, options

STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 1800px; }
.rec { border-top: 2px solid #888; padding: 0.8em 0; }
.meta { color: #555; font-size: 0.9em; }
.q { font-size: 1.15em; font-weight: bold; margin: 0.4em 0; }
.a { font-size: 1.1em; color: #063; margin: 0.3em 0; }
.bad { color: #a00; }
.ctx { background: #f4f4f4; padding: 0.4em; font-size: 0.9em; white-space: pre-wrap; }
mark { background: #ff6; }
.pages img { border: 1px solid #aaa; margin: 0.3em; vertical-align: top; }
"""


@dataclass
class ReviewOptions:
    """review's options; the CLI's flags are generated from these fields."""

    pool: str
    """the pool the records were made from"""
    qa: str
    """QA directory (records-*.jsonl) or one records .jsonl file"""
    output: str
    """review directory to write (index.html, images/, review.json)"""
    num: int = 40
    """records to sample"""
    seed: int = 0
    """sampling seed"""
    tasks: list[Literal[ALL_TASKS]] = field(default_factory=lambda: list(READER_TASKS))
    """tasks to sample from"""
    width: int = 800
    """width of the page images in pixels"""


def add_arguments(parser) -> None:
    options.add_arguments(parser, ReviewOptions)


def sample(records: list[dict], tasks: list[str], n: int, seed: int) -> list[dict]:
    """n records of the given tasks, chosen by seed, in id order."""
    pool = sorted((r for r in records if r["task"] in tasks), key=lambda r: r["id"])
    return sorted(random.Random(seed).sample(pool, min(n, len(pool))), key=lambda r: r["id"])


def _scaled_png(data: bytes, width: int) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB") if img.mode not in ("L", "RGB") else img
        if img.width > width:
            img = img.resize((width, round(img.height * width / img.width)))
        out = io.BytesIO()
        img.save(out, format="PNG", optimize=False)
    return out.getvalue()


def _context(text: str, items: list[str], chars: int = 160) -> str:
    """HTML of the page text around the first answer item found (case and spacing aside), marked."""
    flat = " ".join(text.split())
    for item in items:
        m = re.search(r"\s*".join(re.escape(w) for w in item.split()), flat, re.IGNORECASE) if item.split() else None
        if m:
            lo, hi = max(0, m.start() - chars), min(len(flat), m.end() + chars)
            return f"…{html.escape(flat[lo:m.start()])}<mark>{html.escape(m[0])}</mark>{html.escape(flat[m.end():hi])}…"
    return html.escape(flat[: 2 * chars]) + ("…" if len(flat) > 2 * chars else "")


def _section(i: int, r: dict, doc: dict, found: list[str], images: list[str]) -> str:
    items = answer_items(r["answer"], r["answer_format"]) or [r["answer"]]
    labels = ", ".join(
        f"{p} (printed {html.escape(str(doc['pages'][p].get('page_label')))})" if doc["pages"][p].get("page_label") else str(p)
        for p in r["evidence_pages"])
    parts = [
        f'<div class="rec" id="r{i}"><div class="meta">#{i + 1} · {html.escape(r["task"])} · {html.escape(r["id"])} · '
        f'{html.escape(doc["source"])} ({doc["num_pages"]} pages) · segment {r["segment"][0]}-{r["segment"][1] - 1} · '
        f'evidence page index {labels} · teacher {html.escape(r.get("teacher", "?"))}</div>',
        f'<div class="q">Q: {html.escape(r["question"])}</div>',
        f'<div class="a">A: {html.escape(r["answer"])} <span class="meta">({html.escape(r["answer_format"])})</span></div>',
        f'<div class="meta">Evidence: {html.escape(r.get("evidence_description", ""))}</div>',
    ]
    if found:
        parts.append(f'<div class="bad">qa-check: {html.escape("; ".join(found))}</div>')
    for p in r["evidence_pages"]:
        parts.append(f'<div class="ctx">page index {p}: {_context(doc["pages"][p]["text"], items)}</div>')
    parts.append('<div class="pages">' + "".join(f'<a href="images/{name}"><img src="images/{name}" width="420" alt="{name}"></a>' for name in images) + "</div></div>")
    return "\n".join(parts)


def write_review(pool: str | Path, qa: str | Path, output: str | Path, n: int = 40, seed: int = 0,
                 tasks: list[str] | tuple = READER_TASKS, width: int = 800) -> dict:
    """Sample, gather evidence pages and write the review directory; returns {"records", "images", "path"}."""
    output = Path(output)
    if output.exists() and not (output / "review.json").is_file():
        raise ValueError(f"{output} exists and is not an earlier review (no review.json); choose a new directory")
    chosen = sample(read_records(qa), list(tasks), n, seed)
    if not chosen:
        raise ValueError(f"no records of tasks {', '.join(tasks)} in {qa}")
    by_doc = by_document(chosen, pool)
    sections: dict[int, str] = {}
    cache = FactCache(size=1)
    with atomic.atomic_dir(output, replace=True, inputs=[pool, qa]) as scratch:
        (scratch / "images").mkdir()
        n_images = 0
        for doc, page_images in iter_documents(pool, images=True, ids=set(by_doc)):
            for i, r in by_doc[doc["id"]]:
                names = []
                for p in r["evidence_pages"]:
                    name = f"{doc['id']}-p{p:04d}.png"
                    if not (scratch / "images" / name).exists() and p in page_images:
                        (scratch / "images" / name).write_bytes(_scaled_png(page_images[p], width))
                        n_images += 1
                    names.append(name)
                sections[i] = _section(i, r, doc, problems(r, doc, cache), names)
        title = f"QA review: {len(chosen)} records from {html.escape(str(qa))}"
        body = "\n".join(sections[i] for i in sorted(sections))
        page = f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style></head><body><h1>{title}</h1>\n{body}\n</body></html>\n'
        (scratch / "index.html").write_text(page, encoding="utf-8")
        (scratch / "review.json").write_text(json.dumps(chosen, indent=1, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    return {"records": len(chosen), "images": n_images, "path": str(output / "index.html")}


def main(args) -> int:
    try:
        args = options.from_args(ReviewOptions, args)
        result = write_review(args.pool, args.qa, args.output, args.num, args.seed, args.tasks, args.width)
    except (FileNotFoundError, ValueError) as e:
        print(f"review: error: {e}", file=sys.stderr)
        return 2
    print(f"review: {result['records']} records, {result['images']} page images; open {result['path']}")
    return 0
