"""Needle-in-a-haystack over page images: a short fact rendered into a page, hidden at depth x length.

For each grid point (context length, depth) and trial, a one-page "document" holding a fact
("The access code of the Lisbon archive is 482913.") rendered with pymupdf is placed at that depth
inside distractor pages of held-out pool documents, with the same context builder as the eval
sets (megatron_vlm/eval/contexts.py), so lengths are exact to one page. The question asks for the
number (answer_format Int). Scored predictions give an accuracy grid, drawn as a heatmap PNG.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from megatron_vlm.data import image_rule
from megatron_vlm.eval.contexts import Document, Page, Question
from megatron_vlm.eval.evalset import write_eval_set
from megatron_vlm.models.family import DEFAULT_FAMILY, get_family
from megatron_vlm.utils import atomic

PLACES = ("Lisbon", "Oslo", "Nairobi", "Quito", "Hanoi", "Tbilisi", "Perth", "Cusco", "Tallinn", "Accra")
US_LETTER_PT = (612.0, 792.0)


def needle_fact(rng: random.Random) -> tuple[str, str, int]:
    """(fact sentence, question, answer) with a random place and six-digit code."""
    place, code = rng.choice(PLACES), rng.randrange(100000, 1000000)
    return (
        f"The access code of the {place} archive is {code}.",
        f"What is the access code of the {place} archive?",
        code,
    )


def render_needle_page(fact: str, dpi: int, size_pt: tuple[float, float] = US_LETTER_PT) -> bytes:
    """PNG bytes of a page with ``fact`` written in its middle (pymupdf), rendered at ``dpi`` (an integer)."""
    import pymupdf

    if dpi != int(dpi):
        raise ValueError(f"dpi must be a whole number, got {dpi}")
    dpi = int(dpi)  # pymupdf's get_pixmap rejects a float dpi
    width, height = size_pt
    doc = pymupdf.open()
    page = doc.new_page(width=width, height=height)
    box = pymupdf.Rect(72, height / 2 - 40, width - 72, height / 2 + 40)
    if page.insert_textbox(box, fact, fontsize=16, fontname="helv", align=pymupdf.TEXT_ALIGN_CENTER) < 0:
        raise ValueError(f"needle text does not fit the page: {fact!r}")
    png = page.get_pixmap(dpi=dpi).tobytes("png")
    doc.close()
    return png


def needle_documents(
    lengths: Sequence[int], depths: Sequence[float], trials: int, dpi: int, seed: int = 0, family: str = DEFAULT_FAMILY
) -> tuple[dict[str, Document], list[tuple[Question, int, float]]]:
    """One needle document and question per (length, depth, trial); pages costed with ``family``'s rule."""
    docs, questions = {}, []
    h, w = image_rule.page_pixels(*US_LETTER_PT, dpi)
    rule = get_family(family).image
    tokens, grid = rule.token_count(h, w), rule.grid_thw(h, w)
    for length in lengths:
        for depth in depths:
            for t in range(trials):
                rng = random.Random(f"needle:{seed}:{length}:{depth}:{t}")
                fact, question, answer = needle_fact(rng)
                doc_id = f"needle-{length}-{depth:.2f}-{t}"
                png = render_needle_page(fact, dpi)
                docs[doc_id] = Document(doc_id, [Page(doc_id, 0, tokens, grid, "png", lambda png=png: png)])
                questions.append((Question(doc_id, doc_id, "needle", question, answer, "Int", [0]), length, depth))
    return docs, questions


def build_needle_set(
    haystack: dict[str, Document],
    output: str | os.PathLike,
    lengths: Sequence[int],
    depths: Sequence[float],
    trials: int = 1,
    dpi: int = 144,
    exclude: set[str] = frozenset(),
    seed: int = 0,
    count_prompt_tokens=None,
    log=print,
    family: str = DEFAULT_FAMILY,
) -> dict:
    """Write an eval set (docs/eval_format.md) of needle questions, one per grid point and trial;
    needle pages costed with ``family``'s image rule (the haystack's pages come costed)."""
    needles, jobs = needle_documents(lengths, depths, trials, dpi, seed, family)
    haystack = [d for k, d in haystack.items() if k not in exclude]
    summary = {
        "task": "needle",
        "lengths": list(lengths),
        "depths": list(depths),
        "trials": trials,
        "dpi": dpi,
        "excluded_docs": len(exclude),
        "family": family,
    }
    return write_eval_set(output, jobs, needles, haystack, seed, count_prompt_tokens, summary, log)


def accuracy_grid(scored: Iterable[dict]) -> tuple[list[int], list[float], list[list[float | None]]]:
    """(lengths, depths, acc[depth][length]) from scored needle predictions; None where a cell has no item."""
    cells = defaultdict(list)
    for r in scored:
        cells[(int(r["target_tokens"]), round(float(r["depth"]), 4))].append(float(r["score"]))
    lengths = sorted({k[0] for k in cells})
    depths = sorted({k[1] for k in cells})
    acc = [[(sum(cells[(n, d)]) / len(cells[(n, d)])) if cells.get((n, d)) else None for n in lengths] for d in depths]
    return lengths, depths, acc


def _length_label(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else (f"{n / 1000:g}k" if n >= 1000 else str(n))


def plot_heatmap(scored: Iterable[dict], path: str | os.PathLike, title: str = "Needle in a document") -> Path:
    """Accuracy heatmap: context length on x, needle depth on y (0% = first page), cells annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    scored = list(scored)
    lengths, depths, acc = accuracy_grid(scored)
    if not lengths:
        raise ValueError("no scored needle predictions to plot")
    grid = np.array([[np.nan if v is None else 100.0 * v for v in row] for row in acc])
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 3, 0.5 * len(depths) + 2.2), dpi=120)
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(lengths)), [_length_label(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth (% of context before it)")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            value = grid[i, j]
            ax.text(
                j,
                i,
                "-" if np.isnan(value) else f"{value:.0f}",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if not np.isnan(value) and (value > 85 or value < 15) else "black",
            )
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("accuracy (%)")
    overall = np.nanmean(grid)
    ax.set_title(f"{title}\nmean accuracy {overall:.1f}% over {np.sum(~np.isnan(grid))} cells, {len(scored)} questions")
    fig.tight_layout()
    path = Path(path)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
