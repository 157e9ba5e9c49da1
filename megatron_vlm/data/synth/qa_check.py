"""`preprocess_data.py qa-check`: how many QA records break the reader-question rules.

    python tools/preprocess_data.py qa-check QA_DIR --pool POOL_DIR [--report REPORT.json] [--examples 3]

Runs every rule of validation.py over every record (all the rules a record breaks, not only the
first) against its document in the pool, and prints one count per group: questions naming a
page, blank or vague questions, questions that do not pick out one fact in the whole document,
facts from headers/footers/captions or low-quality text, reasoning not over comparable values,
and the other rules (format, evidence pages, OCR transcripts, duplicates), with a few examples of
each. Works on any teacher's records; the OCR baselines name pages by design and are checked only
against their transcripts.

Exit status: 0 when no record breaks a rule, 1 when some do, 2 on bad input (no records, a bad
records line, a document missing from the pool). `--report` writes every flagged record with its
problems (JSON), after all records have been checked.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from megatron_vlm.data.pool_format import iter_documents
from megatron_vlm.data.synth.facts import FactCache, normalize
from megatron_vlm.data.synth.records import by_document, read_records, record_files
from megatron_vlm.data.synth.validation import CATEGORIES, READER_TASKS, problems
from megatron_vlm.utils import atomic, options

GROUPS = list(dict.fromkeys(CATEGORIES.values())) + ["other rules"]


@dataclass
class QaCheckOptions:
    """qa-check's options; the CLI's flags are generated from these fields."""

    qa: str = field(metadata={"positional": True})
    """QA directory (records-*.jsonl) or one records .jsonl file"""
    pool: str
    """the pool the records were made from"""
    report: str | None = None
    """write the flagged records and their problems here (JSON)"""
    examples: int = 3
    """examples printed per group"""


def add_arguments(parser) -> None:
    options.add_arguments(parser, QaCheckOptions)


def check(qa: str | Path, pool: str | Path) -> dict:
    """{"records", "reader_questions", "groups": {group: count}, "reasons": {reason: count},
    "flagged": [{"id", "task", "question", "answer", "problems"}]}; ValueError on bad input."""
    records = read_records(qa)
    if not records:
        raise ValueError(f"no records in {qa}")
    by_doc = by_document(records, pool)
    cache, flagged, reasons, groups = FactCache(size=1), [], Counter(), Counter()
    for doc, _ in iter_documents(pool, images=False, ids=set(by_doc)):
        seen = set()
        for _, r in by_doc[doc["id"]]:
            found = problems(r, doc, cache)
            question = normalize(r["question"])
            if question in seen:
                found.append("duplicate question")
            seen.add(question)
            if found:
                reasons.update(found)
                groups.update({CATEGORIES.get(p, "other rules") for p in found})
                flagged.append({"id": r["id"], "task": r["task"], "question": r["question"], "answer": r["answer"], "problems": found})
    return {
        "qa": [str(p) for p in record_files(qa)],
        "pool": str(pool),
        "records": len(records),
        "reader_questions": sum(r["task"] in READER_TASKS for r in records),
        "groups": {g: groups[g] for g in GROUPS},
        "reasons": dict(sorted(reasons.items())),
        "flagged": sorted(flagged, key=lambda f: f["id"]),
    }


def main(args) -> int:
    try:
        args = options.from_args(QaCheckOptions, args)
        result = check(args.qa, args.pool)
        if args.report:
            atomic.write_json(args.report, result, inputs=[args.qa, args.pool])
    except (FileNotFoundError, ValueError) as e:
        print(f"qa-check: error: {e}", file=sys.stderr)
        return 2
    print(f"qa-check: {result['records']} records ({result['reader_questions']} reader questions) in {args.qa}, against {args.pool}")
    for group, n in result["groups"].items():
        print(f"  {group}: {n}")
        shown = [f for f in result["flagged"] if any(CATEGORIES.get(p, "other rules") == group for p in f["problems"])]
        for f in shown[: args.examples]:
            print(f"      {f['id']}: {f['question'][:140]!r} -> {f['answer'][:60]!r} ({'; '.join(f['problems'])})")
    flagged = len(result["flagged"])
    print(f"qa-check: {flagged} of {result['records']} records break a rule" + (f"; report at {args.report}" if args.report else ""))
    return 1 if flagged else 0
