"""The package imports on CPU without the optional GPU libraries, and never imports them at module top.

Each check runs in a fresh interpreter with an import hook that makes transformer_engine, flash_attn,
apex and nvidia.dali unimportable (as on a CPU machine, even where they are installed) and records
every attempt to import them together with the file that asked.

    python -m pytest tests/unit/test_import.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_PROBE = r"""
import importlib, json, os, pkgutil, sys, traceback

BLOCKED = ("transformer_engine", "flash_attn", "flash_attn_2_cuda", "flash_attn_interface", "apex", "nvidia.dali")
attempts = []

def is_blocked(name):
    return any(name == b or name.startswith(b + ".") for b in BLOCKED)

class Block:
    def find_spec(self, name, path=None, target=None):
        if not is_blocked(name):
            return None
        frame = sys._getframe(1)
        while frame is not None and ("importlib" in frame.f_code.co_filename or frame.f_code.co_filename.startswith("<")):
            frame = frame.f_back
        attempts.append([name, frame.f_code.co_filename if frame is not None else "?"])
        raise ModuleNotFoundError(f"No module named {name!r} (blocked by test_import)")

sys.meta_path.insert(0, Block())
mode = sys.argv[1]
failures = {}
import megatron_vlm
names = ["megatron_vlm"]
if mode == "all":
    def onerror(name):
        failures[name] = traceback.format_exc()
    for info in pkgutil.walk_packages(megatron_vlm.__path__, "megatron_vlm.", onerror=onerror):
        if info.name.endswith("__main__"):
            continue
        names.append(info.name)
        try:
            importlib.import_module(info.name)
        except Exception:
            failures[info.name] = traceback.format_exc()
pkg_dir = os.path.dirname(megatron_vlm.__file__)
print(json.dumps({
    "names": names,
    "failures": failures,
    "attempts": attempts,
    "ours": [a for a in attempts if a[1].startswith(pkg_dir)],
    "loaded": sorted(m for m in sys.modules if is_blocked(m)),
}))
"""


def _probe(mode: str) -> dict:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": "", "HOME": "/tmp"}
    # the suite's bytecode cache (tools/activate.sh), else every module is compiled again here
    env.update({k: os.environ[k] for k in ("PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE") if k in os.environ})
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_bare_import_touches_no_optional_library():
    result = _probe("bare")
    assert result["attempts"] == [], f"`import megatron_vlm` tried to import {result['attempts']}"
    assert result["loaded"] == []


@pytest.mark.slow(30)
def test_every_submodule_imports_without_gpu_libraries():
    result = _probe("all")
    assert len(result["names"]) > 5, result["names"]  # the walk really found the package's modules
    assert result["failures"] == {}, "\n\n".join(f"{k}:\n{v}" for k, v in result["failures"].items())
    assert result["ours"] == [], f"module-level imports of optional GPU libraries in megatron_vlm: {result['ours']}"
    assert result["loaded"] == []
