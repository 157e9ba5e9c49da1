"""The offline template teacher: reader questions built from a document's facts, with no model.

Facts (facts.py) are read from the whole document, so each question picks out one fact in it;
only the usable facts on the segment's pages are asked about. No question names a page: the
instance shows the whole document and the model must find where the answer is.

- extract-single: one fact (a table cell by its table, row and column; a quantity by its section
  and clause; a numbered section's title by its number; a title a contents page also lists only
  when the segment has nothing else left to ask).
- extract-multi: 2-4 facts of one kind (cells of one column header, quantities of one unit,
  section titles no contents page lists) from different pages, answered as a list in the order asked.
- reasoning: comparable values only (one column of one table; quantities with one unit in
  near-identical clauses, or of one unit of measure in one section), with the operation in the
  question: a difference, a sum, which row is largest/smallest, or how many rows exceed a threshold; or a count over the document's
  structure: how many numbered subsections a section has (only when they are numbered without a
  gap, all on the segment's pages, and the next section follows the last of them).

Deterministic: each job seeds its own RNG.
"""

from __future__ import annotations

import json
import random
from collections import Counter

from megatron_vlm.data.synth.facts import (
    Fact,
    FactCache,
    is_measure,
    mask_digits,
    normalize,
    number_format,
    parse_number,
)
from megatron_vlm.data.synth.teachers import Answer, Job

TEMPLATE_VERSION = "template-v2"


def _fmt(value: float, as_int: bool) -> str:
    return str(int(round(value))) if as_int else f"{value:.4f}".rstrip("0").rstrip(".")


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _quoted(names: list[str]) -> str:
    """'"a"', '"a" and "b"', '"a", "b" and "c"'."""
    q = [f'"{n}"' for n in names]
    return q[0] if len(q) == 1 else f"{', '.join(q[:-1])} and {q[-1]}"


class TemplateTeacher:
    name = "template"
    prompt_version = TEMPLATE_VERSION
    concurrency = 1

    def __init__(self, cache: FactCache | None = None):
        self.cache = cache or FactCache()
        self._seen_docs: set[str] = set()
        self._facts: Counter = Counter()

    def answer(self, jobs: list[Job]) -> list[Answer]:
        return [self.answer_one(job) for job in jobs]

    def answer_one(self, job: Job) -> Answer:
        rng = random.Random(f"{job.seed}:{job.doc['id']}:{job.segment}:{job.task}:{job.index}")
        facts = self.cache.facts(job.doc)
        if job.doc["id"] not in self._seen_docs:
            self._seen_docs.add(job.doc["id"])
            self._facts.update(f"{f.kind}: {f.problem or 'usable'}" for f in facts)
        first, last = job.segment
        usable = [f for f in facts if first <= f.page < last and f.problem is None]
        if job.task == "extract-single":
            # The k-th job of a segment asks its k-th fact, so --per-segment K asks K different facts.
            order = random.Random(f"{job.seed}:{job.doc['id']}:{job.segment}:single")
            qa = single(usable, order, job.index)
        elif job.task == "extract-multi":
            qa = multi(usable, rng)
        else:
            qa = reasoning(usable, rng, facts)
        return Answer(job, qa=qa) if qa else Answer(job, failure=f"{job.task}: no usable facts in segment")

    def usage(self) -> dict:
        """Facts read per kind, usable or why not (summary.json's teacher_usage)."""
        return {"facts": dict(sorted(self._facts.items()))}


def _in_turn(facts: list[Fact], rng: random.Random) -> list[Fact]:
    """A seeded order that takes the kinds in turn (cell, quantity, section)."""
    kinds = sorted({f.kind for f in facts})
    rng.shuffle(kinds)
    queues = {kind: rng.sample([f for f in facts if f.kind == kind], sum(f.kind == kind for f in facts)) for kind in kinds}
    return [q[i] for i in range(max((len(q) for q in queues.values()), default=0)) for q in queues.values() if i < len(q)]


def single(facts: list[Fact], rng: random.Random, k: int = 0) -> dict | None:
    """The k-th fact of a seeded order that takes the kinds in turn (cell, quantity, section);
    section titles a contents page also lists (`Fact.listed`) come after all the others: asking
    them teaches looking up the contents, not finding the section."""
    order = _in_turn([f for f in facts if not f.listed], rng) + _in_turn([f for f in facts if f.listed], rng)
    if k >= len(order):
        return None
    fact = order[k]
    return {
        "question": fact.ask(),
        "answer": fact.value,
        "answer_format": "Str" if fact.kind == "section" else number_format(fact.value),
        "evidence_pages": [fact.page],
        "evidence_description": fact.describe(),
    }


def _spread(facts: list[Fact], rng: random.Random, k: int) -> list[Fact]:
    """Up to k facts on distinct pages, in page order."""
    by_page: dict[int, list[Fact]] = {}
    for f in facts:
        by_page.setdefault(f.page, []).append(f)
    pages = sorted(rng.sample(sorted(by_page), min(k, len(by_page))))
    return [rng.choice(by_page[p]) for p in pages]


def _kind_of(f: Fact) -> tuple:
    """Facts of one kind can be gathered into one extract-multi question."""
    if f.kind == "cell":
        return ("cell", normalize(f.column))
    if f.kind == "quantity":
        return ("quantity", f.unit)
    return ("section",)


def multi(facts: list[Fact], rng: random.Random) -> dict | None:
    """2-4 facts of one kind from different pages, asked as a list; never section titles a contents
    page lists (one look at the contents answers them all)."""
    groups: dict[tuple, list[Fact]] = {}
    for f in facts:
        if f.listed:
            continue
        groups.setdefault(_kind_of(f), []).append(f)
    groups = {k: v for k, v in groups.items() if len({f.page for f in v}) >= 2}
    if not groups:
        return None
    kind = rng.choice(sorted(groups))
    chosen = _spread(groups[kind], rng, rng.randint(2, 4))
    if kind[0] == "cell":
        parts = "; ".join(f'the value in the column "{f.column}" for the row "{f.row}" of {f.table}' for f in chosen)
        question = f"What are these values, in this order: {parts}?"
    elif kind[0] == "quantity":
        parts = "; ".join(f"({i + 1}) {_lower_first(f.where())}, {f.clause}" for i, f in enumerate(chosen))
        question = f"Answer each in order: {parts}?"
    else:
        numbers = [f.anchors[0] for f in chosen]
        question = f"What are the titles of sections {', '.join(numbers[:-1])} and {numbers[-1]}? Answer in this order."
    return {
        "question": question,
        "answer": json.dumps([f.value for f in chosen], ensure_ascii=False),
        "answer_format": "List",
        "evidence_pages": sorted({f.page for f in chosen}),
        "evidence_description": " ".join(f.describe() for f in chosen),
    }


def _columns(facts: list[Fact]) -> list[list[Fact]]:
    """Numeric cells grouped by (table, column), one unit per group, at least two rows each."""
    groups: dict[tuple, list[Fact]] = {}
    for f in facts:
        if f.kind == "cell" and parse_number(f.value) is not None:
            groups.setdefault((f.table_id, normalize(f.column), f.unit), []).append(f)
    return [v for _, v in sorted(groups.items()) if len(v) >= 2]


def _quantity_pairs(facts: list[Fact]) -> list[tuple[Fact, Fact]]:
    """Quantities with one unit that measure comparable things: clauses that differ in exactly one
    word, digits aside (the same measure of two things: "the revenue of the north / east division
    was N units"), or two amounts of one unit of measure (pt, ms, MB, %, ...; not a counted noun:
    "24 participants" and "3 rules" are not comparable) in one section."""
    qs = [f for f in facts if f.kind == "quantity"]
    pairs = []
    for i, a in enumerate(qs):
        for b in qs[i + 1:]:
            if a.unit != b.unit:
                continue
            wa, wb = mask_digits(a.anchors[1]).split(), mask_digits(b.anchors[1]).split()
            same_measure = len(wa) == len(wb) >= 4 and sum(x != y for x, y in zip(wa, wb)) == 1
            same_unit = a.section and a.section == b.section and is_measure(a.unit) and a.value != b.value
            if same_measure or same_unit:
                pairs.append((a, b))
    return pairs


def reasoning(facts: list[Fact], rng: random.Random, doc_facts: list[Fact] | None = None) -> dict | None:
    """A reasoning question over the segment's usable `facts` (`doc_facts`: the whole document's,
    to know a section's subsections are complete)."""
    options = {"column": _columns(facts), "pair": _quantity_pairs(facts), "sections": _subsections(facts, doc_facts or facts)}
    kinds = [kind for kind, items in options.items() if items]
    if not kinds:
        return None
    what = rng.choice(kinds)  # each kind as likely, however many pairs a segment has
    item = rng.choice(options[what])
    if what == "sections":
        return _count_question(*item)
    return _column_question(item, rng) if what == "column" else _pair_question(item, rng)


def _next_number(number: str) -> str:
    """'3.2' -> '3.3': the next sibling's number."""
    *head, last = number.split(".")
    return ".".join([*head, str(int(last) + 1)])


def _subsections(facts: list[Fact], doc_facts: list[Fact]) -> list[tuple[Fact, list[Fact]]]:
    """(section, its subsections) where all of them are usable facts on the segment's pages, they
    are numbered N.1 .. N.k without a gap, and the next section at N's level (or above) follows
    the last one, so no subsection was missed."""
    numbered = {f.anchors[0]: f for f in facts if f.kind == "section"}
    order = [f.anchors[0] for f in doc_facts if f.kind == "section"]
    out = []
    for number, parent in sorted(numbered.items()):
        children, k = [], 1
        while f"{number}.{k}" in numbered:
            children.append(numbered[f"{number}.{k}"])
            k += 1
        if len(children) < 2 or f"{number}.{k}" in order:
            continue
        later = order[order.index(children[-1].anchors[0]) + 1:] if children[-1].anchors[0] in order else []
        upper = [_next_number(".".join(number.split(".")[:i])) for i in range(1, number.count(".") + 2)]
        if later and later[0] in upper and all(c.page >= parent.page for c in children):
            out.append((parent, children))
    return out


def _count_question(parent: Fact, children: list[Fact]) -> dict:
    number, first, second = parent.anchors[0], children[0].anchors[0], children[1].anchors[0]
    return {
        "question": f'Section {number} ("{parent.value}") is divided into numbered subsections {first}, {second} and so on. How many subsections does it have?',
        "answer": str(len(children)),
        "answer_format": "Int",
        "evidence_pages": sorted({parent.page, *(c.page for c in children)}),
        "evidence_description": f"Section {number} has the subsections " + "; ".join(f"{c.anchors[0]} {c.value}" for c in children) + f": {len(children)}.",
    }


def _column_question(cells: list[Fact], rng: random.Random) -> dict | None:
    cells = sorted(cells, key=lambda f: (f.page, f.row))[:6]
    values = [parse_number(f.value) for f in cells]
    as_int = all(number_format(f.value) == "Int" for f in cells)
    head = cells[0]
    col, table = head.column, head.table
    ops = ["difference", "sum"] + (["largest", "smallest", "count"] if len(cells) >= 3 else [])
    op = rng.choice(ops)
    listing = "; ".join(f"{f.row} {f.value}" for f in cells)
    answer_format = "Int" if as_int else "Float"
    if op == "difference":
        a, b = rng.sample(cells, 2)
        question = f'In {table}, what is the "{col}" value of the row "{a.row}" minus that of the row "{b.row}"?'
        answer, used = _fmt(parse_number(a.value) - parse_number(b.value), as_int), [a, b]
        how = f"{a.value} - {b.value} = {answer}"
    elif op == "sum":
        used = sorted(rng.sample(cells, rng.randint(2, min(4, len(cells)))), key=cells.index)
        question = f'In {table}, what is the sum of the "{col}" values of the rows {_quoted([f.row for f in used])}?'
        answer = _fmt(sum(parse_number(f.value) for f in used), as_int)
        how = f"{' + '.join(f.value for f in used)} = {answer}"
    elif op in ("largest", "smallest"):
        pick = max(values) if op == "largest" else min(values)
        if values.count(pick) != 1:
            return None
        winner = cells[values.index(pick)]
        question = f'In {table}, which of the rows {_quoted([f.row for f in cells])} has the {op} "{col}" value?'
        answer, used, answer_format, how = winner.row, cells, "Str", f"the {op} is {winner.value} ({winner.row})"
    else:
        distinct = sorted(set(values))
        if len(distinct) < 2:
            return None
        i = rng.randrange(len(distinct) - 1)
        threshold = _fmt((distinct[i] + distinct[i + 1]) / 2, False)
        count = sum(v > float(threshold) for v in values)
        question = f'In {table}, how many of the rows {_quoted([f.row for f in cells])} have a "{col}" value greater than {threshold}?'
        answer, used, answer_format, how = str(count), cells, "Int", f"{count} of them exceed {threshold}"
    return {
        "question": question,
        "answer": answer,
        "answer_format": answer_format,
        "evidence_pages": sorted({f.page for f in used}),
        "evidence_description": f'{table[0].upper()}{table[1:]}, column "{col}": {listing}; {how}.',
    }


def _pair_question(pair: tuple[Fact, Fact], rng: random.Random) -> dict:
    a, b = pair if rng.random() < 0.5 else pair[::-1]
    va, vb = parse_number(a.value), parse_number(b.value)
    as_int = number_format(a.value) == number_format(b.value) == "Int"
    op = rng.choice(["difference", "sum"])
    answer = _fmt(va - vb if op == "difference" else va + vb, as_int)
    sign = "minus" if op == "difference" else "plus"
    question = f"Take two figures from the document: (1) {_lower_first(a.where())}, {a.clause}; (2) {_lower_first(b.where())}, {b.clause}. What is (1) {sign} (2)?"
    return {
        "question": question,
        "answer": answer,
        "answer_format": "Int" if as_int else "Float",
        "evidence_pages": sorted({a.page, b.page}),
        "evidence_description": f"{a.describe()} {b.describe()} {a.value} {'-' if op == 'difference' else '+'} {b.value} = {answer}.",
    }
