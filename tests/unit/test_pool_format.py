"""pool_format: the one reader of a pool; the build, the eval sets and synth see the same documents,
page indices and image bytes (a hand-written pool per docs/formats.md section 1)."""

from __future__ import annotations

import io
import json
import tarfile

from megatron_vlm.data import build, pool_format
from megatron_vlm.eval import contexts


def _member(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _page(index: int) -> dict:
    return {"index": index, "height_px": 56, "width_px": 84, "tokens": 6, "grid_thw": [1, 4, 6], "text": ""}


def _write_pool(root):
    (root / "shards").mkdir(parents=True)
    doc = {"id": "aaaa", "source": "a.pdf", "num_pages": 2, "dpi": 144, "pages": [_page(0), _page(1)]}
    with tarfile.open(root / "shards" / "pool-00000-00000.tar", "w") as tar:
        _member(tar, "zzzz.json", json.dumps({"id": "zzzz", "num_pages": 0, "pages": []}).encode())  # not an ok row
        _member(tar, "aaaa.json", json.dumps(doc).encode())
        _member(tar, "aaaa.p0001.jpg", b"second page")
        _member(tar, "aaaa.p0000.png", b"first page")
        _member(tar, "aaaa.notes.txt", b"not a page")
        dir_info = tarfile.TarInfo("aaaa.p0002.png")
        dir_info.type = tarfile.DIRTYPE  # not a file: skipped
        tar.addfile(dir_info)
    rows = [{"id": "aaaa", "status": "ok", "shard": "shards/pool-00000-00000.tar", "source": "a.pdf"},
            {"id": "zzzz", "status": "duplicate", "shard": None, "source": "z.pdf"}]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "pool.json").write_text(json.dumps({"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280}))
    return root


def test_every_reader_sees_the_same_pages(tmp_path):
    root = _write_pool(tmp_path / "pool")
    (doc,) = pool_format.documents(root)
    assert doc.id == "aaaa" and doc.meta["num_pages"] == 2
    assert {i: (im.ext, im.read()) for i, im in doc.images.items()} == {0: ("png", b"first page"), 1: ("jpg", b"second page")}
    assert list(pool_format.iter_documents(root, images=True)) == [(doc.meta, {0: b"first page", 1: b"second page"})]
    assert list(pool_format.iter_documents(root)) == [(doc.meta, {})]
    assert list(pool_format.documents(root, ids={"zzzz"})) == []

    docs, images = build.read_pool(root)
    assert docs == {"aaaa": {"num_pages": 2, "sizes": [(56, 84), (56, 84)]}}
    assert {key: im.read() for key, im in images.items()} == {("aaaa", 0): b"first page", ("aaaa", 1): b"second page"}

    (eval_doc,) = contexts.read_pool(root).values()
    assert [(p.index, p.ext, p.read_bytes()) for p in eval_doc.pages] == [(0, "png", b"first page"), (1, "jpg", b"second page")]
