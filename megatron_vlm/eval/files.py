"""JSONL reading for eval inputs and outputs; the atomic writers are utils.atomic's, under the names eval uses."""

from __future__ import annotations

import json
import os

from megatron_vlm.utils import atomic


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """One JSON object per non-empty line; ValueError naming the line when one is not an object."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object")
            rows.append(row)
    return rows


write_text_atomic = atomic.write_text
write_jsonl_atomic = atomic.write_jsonl
write_json_atomic = atomic.write_json
