"""The offline template teacher: QA pairs built from layout facts, with no model.

extract-single asks for one fact (a table cell, a page's first heading, a number in a sentence) on
a named page; extract-multi gathers 2-4 facts of one kind from different pages into a list;
reasoning computes a sum, difference, count or comparison over numeric facts. Every answer comes
from the page text, so validation can check it. Deterministic: each job seeds its own RNG.
"""

from __future__ import annotations

import json
import random

from megatron_vlm.data.synth.facts import Fact, number_format, page_facts, parse_number
from megatron_vlm.data.synth.prompts import PROMPT_VERSION
from megatron_vlm.data.synth.tasks import page_label
from megatron_vlm.data.synth.teachers import Answer, Job


def _fmt(value: float, as_int: bool) -> str:
    return str(int(round(value))) if as_int else f"{value:.2f}".rstrip("0").rstrip(".")


class TemplateTeacher:
    name = "template"
    prompt_version = PROMPT_VERSION
    concurrency = 1

    def answer(self, jobs: list[Job]) -> list[Answer]:
        return [self.answer_one(job) for job in jobs]

    def answer_one(self, job: Job) -> Answer:
        rng = random.Random(f"{job.seed}:{job.doc['id']}:{job.segment}:{job.task}:{job.index}")
        facts = [f for p in range(*job.segment) for f in page_facts(job.doc["pages"][p])]
        build = {"extract-single": single, "extract-multi": multi, "reasoning": reasoning}[job.task]
        qa = build(facts, rng)
        return Answer(job, qa=qa) if qa else Answer(job, failure=f"{job.task}: no usable facts in segment")


def single(facts: list[Fact], rng: random.Random) -> dict | None:
    kinds = sorted({f.kind for f in facts})
    if not kinds:
        return None
    fact = rng.choice([f for f in facts if f.kind == rng.choice(kinds)])
    if fact.kind == "cell":
        question = f"What is {fact.where()}?"
    elif fact.kind == "sentence":
        question = f'On page {fact.page + 1}, which number completes the sentence "{fact.label}"?'
    else:
        question = f"What is the first heading on page {fact.page + 1}?"
    return {
        "question": question,
        "answer": fact.value,
        "answer_format": number_format(fact.value) if fact.kind != "heading" else "Str",
        "evidence_pages": [fact.page],
        "evidence_description": f"{fact.where()[0].upper()}{fact.where()[1:]}.",
    }


def _spread(facts: list[Fact], rng: random.Random, k: int) -> list[Fact]:
    """Up to k facts on distinct pages, in page order."""
    by_page: dict[int, list[Fact]] = {}
    for f in facts:
        by_page.setdefault(f.page, []).append(f)
    pages = sorted(rng.sample(sorted(by_page), min(k, len(by_page))))
    return [rng.choice(by_page[p]) for p in pages]


def multi(facts: list[Fact], rng: random.Random) -> dict | None:
    kinds = [k for k in ("cell", "sentence", "heading") if len({f.page for f in facts if f.kind == k}) >= 2]
    if not kinds:
        return None
    kind = rng.choice(kinds)
    chosen = _spread([f for f in facts if f.kind == kind], rng, rng.randint(2, 4))
    pages = [f.page for f in chosen]
    if kind == "heading":
        question = f"List the first heading of each of {page_label(pages)}, in page order."
    else:
        items = "; ".join(f.where() for f in chosen)
        question = f"List, in this order: {items}."
    return {
        "question": question,
        "answer": json.dumps([f.value for f in chosen]),
        "answer_format": "List",
        "evidence_pages": pages,
        "evidence_description": "; ".join(f"{f.where()[0].upper()}{f.where()[1:]}" for f in chosen) + ".",
    }


def reasoning(facts: list[Fact], rng: random.Random) -> dict | None:
    numeric = [f for f in facts if f.kind in ("cell", "sentence") and parse_number(f.value) is not None]
    ops = []
    if len({f.page for f in numeric}) >= 2:
        ops += ["sum", "difference", "comparison"]
    columns: dict[tuple, list[Fact]] = {}
    for f in numeric:
        if f.kind == "cell":
            columns.setdefault((f.page, f.caption, f.column), []).append(f)
    columns = {k: v for k, v in columns.items() if len(v) >= 3}
    if columns:
        ops.append("count")
    if not ops:
        return None
    op = rng.choice(ops)
    if op == "count":
        key = rng.choice(sorted(columns))
        cells = columns[key]
        values = sorted({parse_number(f.value) for f in cells})
        if len(values) < 2:
            return None
        i = rng.randrange(len(values) - 1)
        threshold = (values[i] + values[i + 1]) / 2
        count = sum(parse_number(f.value) > threshold for f in cells)
        table = f'the table "{key[1]}"' if key[1] else "the table"
        return {
            "question": f'In {table} on page {key[0] + 1}, how many rows have a value greater than {_fmt(threshold, False)} in the column "{key[2]}"?',
            "answer": str(count),
            "answer_format": "Int",
            "evidence_pages": [key[0]],
            "evidence_description": f'Column "{key[2]}" of {table} on page {key[0] + 1}: ' + ", ".join(f"{f.label} {f.value}" for f in cells) + ".",
        }
    a, b = _spread(numeric, rng, 2)
    va, vb = parse_number(a.value), parse_number(b.value)
    as_int = number_format(a.value) == number_format(b.value) == "Int"
    evidence = f"{a.where()[0].upper()}{a.where()[1:]} is {a.value}; {b.where()} is {b.value}."
    if op == "sum":
        question, answer = f"What is the sum of {a.where()} and {b.where()}?", _fmt(va + vb, as_int)
    elif op == "difference":
        question, answer = f"What is the absolute difference between {a.where()} and {b.where()}?", _fmt(abs(va - vb), as_int)
    else:
        if va == vb:
            return None
        question = f"Which page reports the larger number: page {a.page + 1} ({a.where()}) or page {b.page + 1} ({b.where()})? Answer with the page number."
        answer, as_int = str((a if va > vb else b).page + 1), True
    return {
        "question": question,
        "answer": answer,
        "answer_format": "Int" if as_int else "Float",
        "evidence_pages": [a.page, b.page],
        "evidence_description": evidence,
    }
