"""A small pool written per docs/formats.md section 1, for the eval tests (not a test module)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image

# (doc id, page sizes in px (w, h)): doc sizes vary so pages cost 30..200 tokens.
DOCS = {
    f"doc{i:02d}": [(196 + 28 * ((i + k) % 5), 252 + 40 * ((i * k) % 4)) for k in range(6 + i % 5)] for i in range(14)
}


def add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_pool(root: Path) -> Path:
    pool = root / "pool"
    (pool / "shards").mkdir(parents=True)
    (pool / "pool.json").write_text(json.dumps({"dpi": 144, "image_format": "png", "version": 1}))
    manifest = []
    for t, chunk in enumerate([list(DOCS)[:7], list(DOCS)[7:]]):
        shard = f"shards/pool-00000-{t:05d}.tar"
        with tarfile.open(pool / shard, "w") as tf:
            for doc_id in chunk:
                pages = []
                for k, (w, h) in enumerate(DOCS[doc_id]):
                    buf = io.BytesIO()
                    Image.new("RGB", (w, h), (255, 255 - 10 * k, 255)).save(buf, format="PNG")
                    add_member(tf, f"{doc_id}.p{k:04d}.png", buf.getvalue())
                    pages.append(
                        {
                            "index": k,
                            "width_pt": w / 2,
                            "height_pt": h / 2,
                            "width_px": w,
                            "height_px": h,
                            "grid_thw": None,
                            "tokens": None,
                            "has_text_layer": True,
                            "ocr": "none",
                            "text": "",
                            "blocks": [],
                        }
                    )
                meta = {
                    "id": doc_id,
                    "source": f"{doc_id}.pdf",
                    "sha256": "0" * 64,
                    "num_pages": len(pages),
                    "dpi": 144,
                    "pages": pages,
                }
                add_member(tf, f"{doc_id}.json", json.dumps(meta).encode())
                manifest.append(
                    {
                        "id": doc_id,
                        "source": meta["source"],
                        "sha256": meta["sha256"],
                        "status": "ok",
                        "reason": None,
                        "pages": len(pages),
                        "tokens": None,
                        "shard": shard,
                        "duplicate_of": None,
                    }
                )
    manifest.append(
        {
            "id": "broken",
            "source": "broken.pdf",
            "sha256": "1" * 64,
            "status": "error",
            "reason": "not a PDF",
            "pages": None,
            "tokens": None,
            "shard": None,
            "duplicate_of": None,
        }
    )
    (pool / "manifest.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in manifest))
    return pool
