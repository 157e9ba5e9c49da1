"""Which instances go into the shards: truncation, length distribution, task mixture, budget.

Truncation policy (documents whose instance is longer than max_seq_length):
  1. The QA record's segment and its evidence pages, and every page between them, are never
     removed: the teacher wrote the question from that span, so it stays answerable.
  2. A reader question names no page (synth's rule), so the kept window may start anywhere: it
     is the longest run of pages that fits and holds the span, placed with a seeded random start
     among all such windows (those that reach the end of the document are not shortened), so the
     evidence sits at every depth of the context, also in the late pages of long documents.
  3. A question that names page numbers (the OCR baselines: "Transcribe pages 3 and 7") keeps
     page 0, so the numbers stay right: pages after the span are removed from the end; if the
     span still does not fit from page 0 the instance is dropped
     (reason ``page-numbered-question-needs-head-cut``).
  4. If the span alone with the question and answer does not fit, the instance is dropped
     (reason ``evidence-span-too-long``). Nothing is ever cut inside a page.
The kept pages are always one contiguous run, in document order.

Selection. Length distributions apply to document instances (short-context samples are outside
them): ``pool-native`` keeps documents with ``pages_range`` pages and samples them as the pool
has them (each task's length histogram of its eligible records, in 16K-token bins); ``long-biased`` splits candidates at ``long_threshold``
tokens and draws long ones so their share never falls below ``long_share``; ``custom`` draws from the given
token-range histogram. Samples are drawn one at a time until the token budget is reached: the
task furthest below its target share goes next, then (within it) the length bin furthest
below its target, then the next candidate of that cell in a seeded shuffled order (a new
shuffle each pass, so a small pool repeats evenly when the budget needs more than one pass).
This greedy keeps every achieved share within one sample of its target at all times.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from megatron_vlm.data.recipe import SHORT_TASK, DataRecipe

REPORT_BIN = 16384  # width of the length bins pool-native targets are reported in


class Dropped(Exception):
    """An instance that cannot be built; ``reason`` is a short stable tag for reports."""

    def __init__(self, reason: str, detail: str = "", needs_tokens: int = 0):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.needs_tokens = reason, needs_tokens


@dataclass
class Candidate:
    """One buildable instance: a QA record on its document (or a short sample), after truncation."""

    record_id: str
    task: str
    num_tokens: int
    pages: list[int] = field(default_factory=list)
    doc_pages: int = 0  # pages of the whole document (before truncation)
    evidence: list[int] = field(default_factory=list)  # the record's evidence pages (all in `pages`)


def truncate_pages(
    page_tokens: list[int],
    segment: tuple[int, int],
    evidence_pages: list[int],
    names_pages: bool,
    count: callable,
    max_length: int,
    rng: random.Random,
) -> list[int]:
    """Kept page indices under the policy above. ``count(pages)`` gives the instance's exact
    length; ``names_pages``: the question names page numbers; ``rng`` places the window."""
    n = len(page_tokens)
    needed = [p for p in evidence_pages] + ([segment[0], segment[1] - 1] if segment[1] > segment[0] else [])
    if not needed or min(needed) < 0 or max(needed) >= n:
        raise Dropped("bad-record", f"segment/evidence pages {segment} {evidence_pages} outside a {n}-page document")
    lo, hi = min(needed), max(needed) + 1
    if count(list(range(n))) <= max_length:
        return list(range(n))
    span = count(list(range(lo, hi)))
    if span > max_length:
        raise Dropped("evidence-span-too-long", f"pages {lo}-{hi - 1} with the question need {span:,} tokens, more than {max_length:,}", span)
    fits_from = lambda s: (lambda e: count(list(range(s, e))) <= max_length)  # noqa: E731
    if names_pages:
        end = _largest_fit(fits_from(0), hi, n)
        if end is None:
            raise Dropped("page-numbered-question-needs-head-cut", "the evidence lies beyond max length from page 0")
        return list(range(0, end))
    first = _smallest_fit(lambda s: count(list(range(s, hi))) <= max_length, 0, lo)
    last_full = _smallest_fit(lambda s: count(list(range(s, n))) <= max_length, first, n)
    start = rng.randint(first, min(lo, last_full))
    return list(range(start, _largest_fit(fits_from(start), hi, n)))


def _largest_fit(fits, lo: int, hi: int) -> int | None:
    """Largest e in [lo, hi] with fits(e) (fits is monotone decreasing in e), or None."""
    if not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _smallest_fit(fits, lo: int, hi: int) -> int:
    """Smallest s in [lo, hi] with fits(s) (fits is monotone increasing in s); fits(hi) holds."""
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
    return lo


def length_bins(recipe: DataRecipe, doc_candidates: list[Candidate]) -> tuple[list[tuple[int, int, float]], dict]:
    """Target length distribution of document instances as (lo, hi exclusive, share) bins, and the
    per-task bin weights the sampler follows (the same for every task unless pool-native)."""
    shares = {t: v for t, v in recipe.task_shares().items() if t != SHORT_TASK}
    if recipe.length_distribution == "long-biased":
        t = recipe.long_threshold
        edges = [(0, t, 1 - recipe.long_share), (t, recipe.max_seq_length + 1, recipe.long_share)]
    elif recipe.length_distribution == "custom":
        raw = []
        for rng, w in recipe.length_histogram.items():
            lo, hi = (int(x) for x in str(rng).split("-"))
            raw.append((lo, hi, float(w)))
        total = sum(w for _, _, w in raw)
        edges = sorted((lo, hi, w / total) for lo, hi, w in raw)
    else:
        # pool-native: each task as the pool has it (its eligible records' own histogram, in
        # fixed-width bins); the overall target is their mixture-weighted sum.
        top = recipe.max_seq_length
        lows = list(range(0, top, REPORT_BIN))
        spans = [(lo, lo + REPORT_BIN if lo + REPORT_BIN < top else top + 1) for lo in lows]
        per_task = {}
        for task in shares:
            counts = [0] * len(spans)
            for c in doc_candidates:
                if c.task == task:
                    counts[min(c.num_tokens // REPORT_BIN, len(spans) - 1)] += 1
            total = sum(counts)
            per_task[task] = [k / total if total else 0.0 for k in counts]
        norm = sum(shares.values())
        overall = [sum(shares[t] / norm * per_task[t][i] for t in shares) for i in range(len(spans))]
        return [(lo, hi, w) for (lo, hi), w in zip(spans, overall)], per_task
    return edges, {task: [w for _, _, w in edges] for task in shares}


def bin_of(num_tokens: int, bins: list[tuple[int, int, float]]) -> int | None:
    for i, (lo, hi, _) in enumerate(bins):
        if lo <= num_tokens < hi:
            return i
    return None


def eligible(recipe: DataRecipe, c: Candidate) -> str | None:
    """Why a document candidate is outside the recipe's length distribution, or None."""
    if recipe.length_distribution == "pool-native":
        lo, hi = recipe.pages_range
        if not lo <= c.doc_pages <= hi:
            return f"outside-pages-range-{lo}-{hi}"
    if recipe.length_distribution == "custom":
        ranges = [tuple(int(x) for x in str(r).split("-")) for r, w in recipe.length_histogram.items() if w > 0]
        if not any(lo <= c.num_tokens < hi for lo, hi in ranges):
            return "outside-length-histogram"
    return None


class _Cycle:
    """Endless seeded shuffled passes over a list; counts how many passes it has started."""

    def __init__(self, items: list, rng: random.Random):
        self.items, self.rng, self.pos, self.passes = list(items), rng, len(items), 0

    def next(self):
        if self.pos >= len(self.items):
            self.rng.shuffle(self.items)
            self.pos, self.passes = 0, self.passes + 1
        self.pos += 1
        return self.items[self.pos - 1]


def select(recipe: DataRecipe, docs: list[Candidate], shorts: list[Candidate]) -> tuple[list[Candidate], dict]:
    """Candidates to write, in shard order, and the targets they were drawn for.

    Raises ValueError when the recipe asks for a task or length the candidates cannot give.
    """
    rng = random.Random(recipe.seed)
    shares = recipe.task_shares()
    bins, weights = length_bins(recipe, docs)
    at_least = recipe.length_distribution == "long-biased"
    by_task: dict[str, list[list[Candidate]]] = {}
    for task in shares:
        pool = shorts if task == SHORT_TASK else [c for c in docs if c.task == task]
        if not pool:
            raise ValueError(f"the recipe wants task {task!r} but there are no candidates for it")
        if task == SHORT_TASK:
            by_task[task] = [pool]
        else:
            by_task[task] = [[c for c in pool if bin_of(c.num_tokens, bins) == i] for i in range(len(bins))]
    cycles = {t: [_Cycle(cell, random.Random(rng.random())) if cell else None for cell in cells] for t, cells in by_task.items()}
    task_count = dict.fromkeys(shares, 0)
    cell_count = {t: [0] * len(cells) for t, cells in by_task.items()}
    chosen: list[Candidate] = []
    tokens = 0
    while tokens < recipe.token_budget:
        n = len(chosen) + 1
        task = max(shares, key=lambda t: shares[t] * n - task_count[t])
        cells = cycles[task]
        if len(cells) == 1:
            k = 0
        else:
            # Renormalise the length targets over the bins this task has candidates in.
            w = weights[task]
            avail = [i for i, c in enumerate(cells) if c is not None and w[i] > 0]
            if not avail:
                raise ValueError(f"task {task!r} has no candidates in any length bin with a positive target")
            wsum = sum(w[i] for i in avail)
            m = task_count[task] + 1
            k = max(avail, key=lambda i: w[i] / wsum * m - cell_count[task][i])
            if at_least and len(avail) == 2:
                # "at least long_share": a short sample only while it keeps the long share >= target.
                k = 0 if cell_count[task][0] + 1 <= w[0] / wsum * m + 1e-9 else 1
        c = cells[k].next()
        chosen.append(c)
        task_count[task] += 1
        cell_count[task][k] += 1
        tokens += c.num_tokens
    targets = {
        "mixture": shares,
        "length_distribution": recipe.length_distribution,
        "length_bins": [[lo, hi, share] for lo, hi, share in bins],
        "long_threshold": recipe.long_threshold,
        "long_share_at_least": recipe.long_share if recipe.length_distribution == "long-biased" else None,
        "passes": {t: max((c.passes for c in cells if c), default=0) for t, cells in cycles.items()},
    }
    return chosen, targets


def check_repeats(recipe: DataRecipe, chosen: list[Candidate]) -> None:
    """ValueError when the budget needs one instance more than recipe.max_repeats times, naming
    how many times and the largest budget that stays within the limit."""
    seen: dict[str, int] = {}
    tokens, fits = 0, None
    for c in chosen:
        seen[c.record_id] = seen.get(c.record_id, 0) + 1
        if fits is None and seen[c.record_id] > recipe.max_repeats:
            fits = tokens
        tokens += c.num_tokens
    worst = max(seen.values(), default=0)
    if worst > recipe.max_repeats:
        raise ValueError(
            f"data.token_budget {recipe.token_budget:,} needs {len(chosen):,} samples from {len(seen):,} distinct instances, "
            f"one of them {worst} times (data.max_repeats is {recipe.max_repeats}); a budget of at most {fits:,} tokens "
            f"stays within it: lower data.token_budget, add documents, or raise data.max_repeats"
        )
