"""Reading an HF ``config.json``: the one loader every family's ``from_hf_config`` uses."""

from __future__ import annotations

import json
from pathlib import Path


def load_hf_config(source) -> dict:
    """The config dict of ``source``: a dict (returned as is), a ``config.json`` path, or its directory."""
    if isinstance(source, dict):
        return source
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    return json.loads(path.read_text())
