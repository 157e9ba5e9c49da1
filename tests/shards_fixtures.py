"""Small pools, QA records and recipes written in-test for the build/stats/loader tests.

A pool written here follows docs/formats.md section 1. ``image_px`` lets a test store small page
images while the page json keeps the real page size, for build/stats tests at realistic token
lengths that never decode images (the loader would rightly refuse such pages as mismatched).
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from megatron_vlm.models.family import get_family

TASKS = ("extract-single", "extract-multi", "reasoning")


def _png(h: int, w: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.full((h, w, 3), 255, dtype=np.uint8)
    arr[rng.integers(0, h, 20), :, :] = rng.integers(0, 255, (20, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _add(tf, name, data):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))


def write_pool(pool_dir: Path, page_counts: list[int], page_px=(1584, 1224), image_px=None, docs_per_tar=25) -> list[str]:
    """Write a pool of documents with these page counts; returns the document ids."""
    (pool_dir / "shards").mkdir(parents=True, exist_ok=True)
    ids, manifest = [], []
    image_px = image_px or page_px
    tiny = _png(*image_px, 0) if image_px != page_px else None
    for t in range(0, len(page_counts), docs_per_tar):
        shard = f"shards/pool-00000-{t // docs_per_tar:05d}.tar"
        with tarfile.open(pool_dir / shard, "w") as tf:
            for d in range(t, min(t + docs_per_tar, len(page_counts))):
                doc_id = f"{d:016x}"
                ids.append(doc_id)
                pages = [
                    {"index": i, "width_pt": page_px[1] / 2, "height_pt": page_px[0] / 2, "height_px": page_px[0], "width_px": page_px[1],
                     "grid_thw": [1, 0, 0], "tokens": 0, "has_text_layer": True, "ocr": "none", "text": f"page {i}", "blocks": []}
                    for i in range(page_counts[d])
                ]
                doc = {"id": doc_id, "source": f"doc{d}.pdf", "sha256": doc_id * 4, "num_pages": page_counts[d], "dpi": 144, "pages": pages}
                _add(tf, f"{doc_id}.json", json.dumps(doc).encode())
                for i in range(page_counts[d]):
                    _add(tf, f"{doc_id}.p{i:04d}.png", tiny or _png(*image_px, d * 1000 + i))
                manifest.append({"id": doc_id, "source": f"doc{d}.pdf", "sha256": doc_id * 4, "status": "ok", "reason": None,
                                 "pages": page_counts[d], "tokens": None, "shard": shard, "duplicate_of": None})
    (pool_dir / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
    return ids


def write_records(qa_dir: Path, doc_ids: list[str], page_counts: list[int], tasks=TASKS, seed=0) -> int:
    """One QA record per task per document, with a segment and evidence inside it."""
    qa_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for doc_id, n in zip(doc_ids, page_counts):
        for task in tasks:
            seg_len = min(n, rng.randint(8, 15))
            first = rng.randint(0, n - seg_len)
            ev = sorted(rng.sample(range(first, first + seg_len), k=min(seg_len, 1 if task == "extract-single" else 2)))
            q = rng.choice(["What is the total revenue in the summary table?", "Which company is named in the heading?", "How many items are listed?"])
            lines.append({"id": f"{doc_id}-{task}", "doc_id": doc_id, "task": task, "segment": [first, first + seg_len], "question": q,
                          "answer": str(rng.randint(1, 9999)), "answer_format": "Int", "evidence_pages": ev,
                          "evidence_description": "table", "teacher": "template", "prompt_version": "t1"})
    (qa_dir / "records-00000.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return len(lines)


def build_shards(root: Path, page_counts: list[int], recipe, page_px=(1584, 1224), image_px=None,
                 docs_per_tar=25, out: str = "shards", family: str = "qwen2_5_vl") -> dict:
    """write_pool + write_records under ``root`` (pool/, qa/), then data.build with ``recipe`` for
    ``family``'s model into ``root / out``; returns the build's index."""
    from megatron_vlm.data.build import build

    ids = write_pool(root / "pool", page_counts, page_px=page_px, image_px=image_px, docs_per_tar=docs_per_tar)
    write_records(root / "qa", ids, page_counts)
    return build(root / "pool", root / "qa", recipe, root / out, get_family(family))


def write_recipe(path: Path, **data) -> Path:
    path.write_text(yaml.safe_dump({"data": data}))
    return path


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Autouse in the modules that import it: tiny tensor ops thrash on a shared 2-core machine
    with torch's default thread count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
