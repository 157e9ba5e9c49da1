"""Paths built from untrusted data (doc ids, image names in eval files): validated, then confined.

    safe_name(doc_id, "doc_id")                   # one path component or ValueError
    inside(root, "doc/page3.png", "image")       # root/doc/page3.png, or ValueError if it leaves root

A name is checked, not only joined: joining "../x" or "/x" to a directory leaves it.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

MAX_NAME_BYTES = 200  # a file name is at most 255 bytes; leave room for suffixes such as ".p0001.png"


def safe_name(name, what: str = "name") -> str:
    """``name`` when it is usable as one file name: a non-empty string with no ``/``, ``\\``, NUL or
    control characters, not starting with ``.`` (no ``.``/``..``/hidden files), at most 200 bytes in UTF-8.
    ValueError (one line, naming ``what``) otherwise."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} {name!r} is not a non-empty string")
    bad = [ch for ch in name if ch in "/\\" or ord(ch) < 32 or ord(ch) == 127]
    if bad or name.startswith("."):
        raise ValueError(f"{what} {name!r} is not a safe file name (no '/', '\\', control characters or leading '.')")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise ValueError(f"{what} {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")
    return name


def inside(root: str | os.PathLike, relative, what: str = "path") -> Path:
    """``root / relative`` when ``relative`` is a relative path that stays inside ``root``.

    Checked on the text (no absolute path, no ``..`` component, no NUL, ``/`` as separator) and
    again on the joined path (still under ``root`` once normalised); symbolic links inside
    ``root`` are the root owner's choice and are followed. ValueError (one line) otherwise.
    """
    if not isinstance(relative, str) or not relative or "\x00" in relative or "\\" in relative:
        raise ValueError(f"{what} {relative!r} is not a relative path with '/' separators")
    parts = PurePosixPath(relative).parts
    if relative.startswith("/") or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise ValueError(f"{what} {relative!r} points outside {root} (paths are relative to it, without '..')")
    base = Path(os.path.abspath(root))
    joined = Path(os.path.normpath(base.joinpath(*parts)))
    if joined != base and base not in joined.parents:
        raise ValueError(f"{what} {relative!r} points outside {root}")
    return joined
