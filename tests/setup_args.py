"""What setup.py passes to setuptools.setup(), read by running it with setup() captured (no install)."""

from __future__ import annotations

import runpy
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def setup_kwargs(path: Path = REPO / "setup.py") -> dict:
    import setuptools

    captured: dict = {}
    real = setuptools.setup
    setuptools.setup = lambda **kw: captured.update(kw)
    try:
        runpy.run_path(str(path))
    finally:
        setuptools.setup = real
    return captured
