"""Short-context samples (image + QA) from a JSONL file or WebDataset tars, for the short share.

Accepted records (LLaVA-OneVision style or plain), one per JSONL line or per WebDataset sample:

    {"id": ..., "image": "a.jpg" | ["a.jpg", ...], "question": ..., "answer": ...}
    {"id": ..., "image": ..., "conversations": [{"from": "human", "value": "<image>\\n..."},
                                                {"from": "gpt", "value": ...}]}

Only the first human/gpt exchange is used; ``<image>`` placeholders are removed (the images go
before the question, as for documents). In JSONL, image paths are relative to the file's folder.
In WebDataset, the sample's ``.json`` holds the text and its image members (``.jpg``, ``.png``,
``.jpeg``, ``.webp``, in name order) are the images. A record without a question, an answer or
readable images is skipped and counted by reason.
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass
class ShortSample:
    id: str
    question: str
    answer: str
    images: list  # each: ("file", path) or ("tar", tar path, offset, size)
    exts: list[str]


def read_image(loc) -> bytes:
    if loc[0] == "file":
        return Path(loc[1]).read_bytes()
    with open(loc[1], "rb") as f:
        f.seek(loc[2])
        return f.read(loc[3])


def _question_answer(rec: dict) -> tuple[str, str]:
    if "conversations" in rec:
        turns = rec["conversations"]
        human = next((t["value"] for t in turns if t.get("from") in ("human", "user")), None)
        gpt = next((t["value"] for t in turns if t.get("from") in ("gpt", "assistant")), None)
        q, a = human, gpt
    else:
        q, a = rec.get("question"), rec.get("answer")
    if not isinstance(q, str) or not isinstance(a, str) or not q.strip() or not a.strip():
        raise KeyError("no question/answer")
    return q.replace("<image>\n", "").replace("<image>", "").strip(), a.strip()


def load_short_samples(source: str | Path) -> tuple[list[ShortSample], Counter]:
    """All usable samples of ``source`` (a .jsonl, a .tar, or a folder of .tar), and skips by reason."""
    path = Path(source)
    skipped: Counter = Counter()
    out: list[ShortSample] = []
    if path.suffix == ".jsonl":
        for n, line in enumerate(path.read_text().splitlines()):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                q, a = _question_answer(rec)
                imgs = rec.get("image") or rec.get("images") or []
                imgs = [imgs] if isinstance(imgs, str) else list(imgs)
                files = [path.parent / i for i in imgs]
                if not all(f.is_file() for f in files):
                    skipped["short-image-missing"] += 1
                    continue
                out.append(
                    ShortSample(str(rec.get("id", n)), q, a, [("file", str(f)) for f in files], [f.suffix.lstrip(".").lower() for f in files])
                )
            except (ValueError, KeyError, TypeError):
                skipped["short-record-unreadable"] += 1
        return out, skipped
    tars = sorted(path.glob("*.tar")) if path.is_dir() else [path]
    if not tars or not all(t.is_file() for t in tars):
        raise FileNotFoundError(f"short_source {source} is neither a .jsonl nor WebDataset tar(s)")
    for tar_path in tars:
        groups: dict[str, dict] = {}
        with tarfile.open(tar_path, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, _, ext = Path(m.name).name.partition(".")
                g = groups.setdefault(key, {"images": []})
                if ext == "json":
                    g["json"] = tf.extractfile(m).read()
                elif ext.rsplit(".", 1)[-1].lower() in IMAGE_EXTS:
                    g["images"].append((m.name, ("tar", str(tar_path), m.offset_data, m.size), ext.rsplit(".", 1)[-1].lower()))
        for key, g in groups.items():
            try:
                q, a = _question_answer(json.loads(g["json"]))
            except (KeyError, ValueError, TypeError):
                skipped["short-record-unreadable"] += 1
                continue
            imgs = sorted(g["images"])
            out.append(ShortSample(key, q, a, [i[1] for i in imgs], [i[2] for i in imgs]))
    return out, skipped
