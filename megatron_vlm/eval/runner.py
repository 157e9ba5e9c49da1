"""Run an eval set through a backend into a predictions JSONL (docs/eval_format.md), resumably.

Each finished answer is appended to ``PRED.jsonl.partial`` at once; a rerun skips the items found
there. When all items are done the lines are written, in eval-set order, to ``PRED.jsonl`` (aside,
then renamed) and the partial file is removed, so ``PRED.jsonl`` existing means complete.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from megatron_vlm.eval.files import read_jsonl, write_jsonl_atomic

CARRIED = (
    "id",
    "qa_id",
    "doc_id",
    "task",
    "target_tokens",
    "depth",
    "num_tokens",
    "question",
    "answer",
    "answer_format",
    "benchmark",
    "dataset",
    "doc_name",
)


def prediction_row(item: dict, output: str, model: str, error: str | None = None, prompt: str = "default") -> dict:
    row = {k: item[k] for k in CARRIED if k in item}
    row.update({"prediction": output, "model": model, "prompt": prompt})
    if any(isinstance(p, dict) and "evidence" in p for p in item.get("pages", [])):
        row["evidence_count"] = sum(1 for p in item["pages"] if p.get("evidence"))
    if error:
        row["error"] = error
    return row


def run_eval(items: list[dict], backend, output: str | os.PathLike, model: str, log=print) -> Path:
    """Answer every item with ``backend.answer_stream(items)`` (yields (item, text, error)); write predictions."""
    output = Path(output)
    if output.exists():
        raise FileExistsError(f"{output} exists; choose a new output file")
    ids = [it["id"] for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError("eval items have duplicate ids")
    partial = output.with_name(output.name + ".partial")
    done = {r["id"]: r for r in read_jsonl(partial)} if partial.exists() else {}
    todo = [it for it in items if it["id"] not in done]
    if done:
        log(f"resuming: {len(done)} answers found in {partial}, {len(todo)} to go")
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(partial, "a", encoding="utf-8") as f:
        for n, (item, text, error) in enumerate(backend.answer_stream(todo), 1):
            row = prediction_row(item, text, model, error, getattr(backend, "prompt_mode", "default"))
            done[item["id"]] = row
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
            f.flush()
            rate = n / max(time.time() - start, 1e-9)
            log(f"  [{len(done)}/{len(items)}] {item['id']}{' ERROR ' + error if error else ''} ({rate:.2f} items/s)")
    write_jsonl_atomic(output, [done[i] for i in ids])
    partial.unlink()
    return output


def sequential_stream(answer, items: list[dict]) -> Iterator[tuple[dict, str, str | None]]:
    """(item, answer(item), None) one at a time; a failing item yields ("", error) and the run goes on."""
    for item in items:
        try:
            yield item, answer(item), None
        except (RuntimeError, ValueError, OSError) as e:
            yield item, "", f"{type(e).__name__}: {e}"
