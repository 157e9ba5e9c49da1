"""QA record files (docs/formats.md section 2): the one writer and the one reader.

`read_records(QA_DIR or FILE)` checks every line before anything is built from it, and refuses a
bad one with a one-line error naming the file and line: not JSON, not an object, a field missing
or of the wrong type (`evidence_pages: 3`), a task or answer format it does not know, a doc id or
record id that is not a plain name. An answer written as a bare JSON number is read as its string.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from megatron_vlm.data.pool import dumps_sorted
from megatron_vlm.data.pool_format import read_manifest
from megatron_vlm.data.synth.prompts import ANSWER_FORMATS
from megatron_vlm.data.synth.tasks import ALL_TASKS
from megatron_vlm.utils import atomic

NAME = re.compile(r"^[A-Za-z0-9][\w\-]{0,199}$")  # ids become file and WebDataset key names
STRING_FIELDS = ("id", "doc_id", "task", "question", "answer", "answer_format")


def write_records(path: str | Path, records: list[dict], inputs=()) -> Path:
    """One record per line, sorted keys (equal records, equal bytes), written aside and renamed."""
    return atomic.write_text(path, "".join(dumps_sorted(r) + "\n" for r in records), inputs=inputs)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def record_problem(r) -> str | None:
    """What makes `r` not a QA record, or None."""
    if not isinstance(r, dict):
        return "not a JSON object"
    for key in STRING_FIELDS:
        if key not in r:
            return f"missing {key}"
        if not isinstance(r[key], str):
            return f"{key} must be a string, got {type(r[key]).__name__}"
    for key in ("id", "doc_id"):
        if not NAME.match(r[key]):
            return f"{key} {r[key][:60]!r} is not a plain name (letters, digits, - and _)"
    if r["task"] not in ALL_TASKS:
        return f"task {r['task'][:40]!r} is not one of {', '.join(ALL_TASKS)}"
    if r["answer_format"] not in ANSWER_FORMATS:
        return f"answer_format {r['answer_format'][:20]!r} is not one of {', '.join(ANSWER_FORMATS)}"
    seg = r.get("segment")
    if not (isinstance(seg, list) and len(seg) == 2 and all(_is_int(x) for x in seg) and 0 <= seg[0] < seg[1]):
        return f"segment must be [first, last) page indices, got {json.dumps(seg)[:40]}"
    pages = r.get("evidence_pages")
    if not (isinstance(pages, list) and pages and all(_is_int(p) and p >= 0 for p in pages)):
        return f"evidence_pages must be a non-empty list of page indices, got {json.dumps(pages)[:40]}"
    return None


def record_files(qa: str | Path) -> list[Path]:
    """QA_DIR's records-*.jsonl, or the one file given."""
    qa = Path(qa)
    files = [qa] if qa.is_file() else sorted(qa.glob("records-*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no records-*.jsonl in {qa}")
    return files


def read_records(qa: str | Path) -> list[dict]:
    """Every record of QA_DIR (or one .jsonl file), in file then line order; ValueError "FILE:LINE: why"."""
    records = []
    for path in record_files(qa):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{n}: not a JSON record ({getattr(e, 'msg', e)})") from None
            if isinstance(r, dict) and isinstance(r.get("answer"), (int, float)) and not isinstance(r["answer"], bool):
                r["answer"] = str(r["answer"])  # a bare number is read as the string it prints as
            problem = record_problem(r)
            if problem:
                raise ValueError(f"{path}:{n}: {problem}")
            records.append(r)
    return records


def by_document(records: list[dict], pool: str | Path) -> dict[str, list[tuple[int, dict]]]:
    """{doc id: [(position in `records`, record), ...]}; ValueError when a document is not an ok
    row of the pool's manifest."""
    known = {r["id"] for r in read_manifest(pool) if r["status"] == "ok"}
    grouped: dict[str, list[tuple[int, dict]]] = {}
    for i, r in enumerate(records):
        if r["doc_id"] not in known:
            raise ValueError(f"document {r['doc_id']} of record {r['id']} is not in the pool {pool}")
        grouped.setdefault(r["doc_id"], []).append((i, r))
    return grouped
