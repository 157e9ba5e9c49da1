"""Write aside, then rename: the one way a file or directory is written as complete.

A reader never sees a half-written output: the content goes to a hidden temporary beside the
final path (``.<name>.tmp.<pid>.<thread>``), is flushed to disk, renamed over the final path, and
the directory entry is flushed too, so a crash leaves either the old file or the new one. On an
error the temporary is removed. ``inputs=`` refuses an output that would overwrite, sit inside,
or contain one of the paths the command reads.

    with atomic_write(path, "wb", inputs=[pool_dir]) as f: f.write(data)
    write_json(path, obj); write_jsonl(path, rows); write_text(path, text)
    with atomic_path(path) as tmp: tarfile.open(tmp, "w")...   # for writers that want a path
    with atomic_dir(path) as scratch: ...                       # a whole directory at once
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

TEMP_MARK = ".tmp."


def temp_path(path: str | os.PathLike) -> Path:
    """The hidden temporary that stands in for ``path`` while it is written (unique per thread)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}.{threading.get_ident()}")


def stale_temps(directory: str | os.PathLike, prefix: str = "") -> list[Path]:
    """Temporaries a killed writer left in ``directory`` for names starting with ``prefix``
    (also the unhidden ``<name>.tmp.<pid>`` of writers before this module)."""
    directory = Path(directory)
    return sorted({*directory.glob(f".{prefix}*{TEMP_MARK}*"), *directory.glob(f"{prefix}*{TEMP_MARK}*")})


def refuse_inputs(output: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """ValueError (one line) when ``output`` is one of ``inputs``, lies inside one, or contains one."""
    out = Path(output).resolve()
    for given in inputs:
        inp = Path(given).resolve()
        if out == inp:
            raise ValueError(f"refusing to write {output}: it is the input {given}")
        if inp in out.parents:
            raise ValueError(f"refusing to write {output}: it is inside the input {given}")
        if out in inp.parents:
            raise ValueError(f"refusing to write {output}: it contains the input {given}")


def fsync_dir(directory: str | os.PathLike) -> None:
    """Flush a directory's entries (a rename is durable only once its directory is)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _commit(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through; on success it is flushed and renamed."""
    path = Path(path)
    refuse_inputs(path, inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        _fsync_file(tmp)
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = "utf-8",
                 inputs: Iterable[str | os.PathLike] = ()) -> Iterator:
    """Open ``path`` for writing ("w" or "wb") through a temporary; it appears complete or not at all."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', not {mode!r}")
    with atomic_path(path, inputs=inputs) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f


def write_bytes(path: str | os.PathLike, data: bytes, **kw) -> Path:
    with atomic_write(path, "wb", **kw) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, **kw) -> Path:
    with atomic_write(path, "w", **kw) as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj, *, indent: int | None = 2, **kw) -> Path:
    """``obj`` as sorted-key JSON (UTF-8, non-ASCII kept) and a final newline."""
    return write_text(path, json.dumps(obj, sort_keys=True, indent=indent, ensure_ascii=False) + "\n", **kw)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict], **kw) -> Path:
    """One sorted-key JSON object per line."""
    return write_text(path, "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows), **kw)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, replace: bool = False,
               inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a scratch directory beside ``path``; on success its files are flushed and it is
    renamed to ``path`` (an existing ``path`` is removed first only when ``replace``). On an
    error the scratch directory is removed and ``path`` is untouched."""
    path = Path(path)
    refuse_inputs(path, inputs)
    if path.exists() and not replace:
        raise FileExistsError(f"{path} exists; choose a new output directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = temp_path(path)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        yield scratch
        for root, _, files in os.walk(scratch):
            for name in files:
                _fsync_file(Path(root) / name)
            fsync_dir(root)
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        _commit(scratch, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
