"""The one reader of the pool format (docs/formats.md section 1), used by synth, build and eval.

    for doc in pool_format.documents(pool_dir):       # each `ok` document once
        doc.meta["num_pages"], doc.images[0].read()

``read_manifest`` and ``read_settings`` read POOL_DIR/manifest.jsonl and pool.json;
``documents`` reads each `ok` manifest row's ``<id>.json`` from the tar the row names (a path
inside the pool directory; any other is refused with ValueError) and locates
(does not load) its page images ``<id>.pNNNN.<png|jpg>`` as byte spans inside that tar. Members of
other documents, and members that are not a file, are skipped. A missing, truncated or
unreadable tar is a ValueError naming it, in one line. The pool stage is the one writer.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from megatron_vlm.utils import paths

_PAGE = re.compile(r"p(\d{4})\.(png|jpg|jpeg)")


class PageImage(NamedTuple):
    """Where a page's encoded image lies: ``size`` bytes at ``offset`` in the tar at path ``tar``."""

    tar: str
    offset: int
    size: int
    ext: str
    """`png` or `jpg` (the encoding, as the member name says)."""

    def read(self) -> bytes:
        with open(self.tar, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


@dataclass
class PoolDocument:
    """One `ok` document: its json (id, source, num_pages, dpi, pages) and its page images by index."""

    meta: dict
    images: dict[int, PageImage] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.meta["id"]


def read_manifest(pool_dir: str | Path) -> list[dict]:
    """The merged manifest rows; ValueError when the pool is incomplete, or "FILE:LINE: why" for a
    row that is not JSON, not an object, without a status, or an ok row whose id is not a plain name
    (ids become file names downstream)."""
    path = Path(pool_dir) / "manifest.jsonl"
    if not path.exists():
        raise ValueError(f"{path} missing: the pool run has not finished (all shards)")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("status"), str):
                raise ValueError("not a manifest row (an object with a status)")
            if row["status"] == "ok":
                paths.safe_name(row.get("id"), "id")
        except ValueError as e:
            raise ValueError(f"{path}:{n}: {getattr(e, 'msg', e)}") from None
        rows.append(row)
    return rows


def read_settings(pool_dir: str | Path) -> dict:
    """pool.json: the settings the pool was rendered with (dpi, min/max pixels, ...)."""
    return json.loads((Path(pool_dir) / "pool.json").read_text())


def documents(pool_dir: str | Path, ids: set[str] | None = None) -> Iterator[PoolDocument]:
    """Each `ok` document (those in ``ids`` when given) once, tar by tar in sorted shard order and
    in member order within a tar."""
    pool_dir = Path(pool_dir)
    wanted: dict[str, set[str]] = {}
    for row in read_manifest(pool_dir):
        if row["status"] == "ok" and (ids is None or row["id"] in ids):
            wanted.setdefault(row["shard"], set()).add(row["id"])
    for shard in sorted(wanted):
        tar_path = paths.inside(pool_dir, shard, "manifest shard")  # a row naming ../x or /x is refused
        try:
            found = _read_tar(tar_path, wanted[shard])
        except FileNotFoundError:
            raise ValueError(f"{tar_path}: missing (the pool's manifest names it)") from None
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ValueError(f"{tar_path}: not a readable pool tar ({type(e).__name__}: {e})") from None
        except ValueError as e:
            raise ValueError(f"{tar_path}: a document json is unreadable ({e})") from None
        for doc in found.values():
            if doc.meta:
                yield doc


def _read_tar(tar_path: Path, wanted: set[str]) -> dict[str, PoolDocument]:
    found: dict[str, PoolDocument] = {}
    with tarfile.open(tar_path, "r:") as tar:
        for member in tar:
            key, _, rest = Path(member.name).name.partition(".")
            if not member.isfile() or key not in wanted:
                continue
            doc = found.setdefault(key, PoolDocument({}))
            page = _PAGE.fullmatch(rest)
            if rest == "json":
                doc.meta = json.loads(tar.extractfile(member).read())
            elif page:
                doc.images[int(page[1])] = PageImage(str(tar_path), member.offset_data, member.size, page[2])
    return found


def iter_documents(pool_dir: str | Path, images: bool = False, ids: set[str] | None = None) -> Iterator[tuple[dict, dict[int, bytes]]]:
    """(document json, {page index: encoded image}) per `ok` document as ``documents`` orders them;
    the images are read only when asked."""
    for doc in documents(pool_dir, ids):
        yield doc.meta, ({i: im.read() for i, im in sorted(doc.images.items())} if images else {})
