"""The supported GPU stack: version ranges, setup.py's pins, and the check the Dockerfile and
benchmarks/gpu_check.sh run (megatron_vlm/utils/versions.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from megatron_vlm.utils import versions
from tests.setup_args import setup_kwargs

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("version,name,ok", [
    ("2.9.0+70f53666", "transformer-engine", True),       # NGC 25.11's TE
    ("2.10.0+769ed778", "transformer-engine", True),      # NGC 25.12's TE
    ("2.11.0", "transformer-engine", True),
    ("2.12.0+5671fd36", "transformer-engine", False),
    ("2.3.0", "transformer-engine", False),                # older than megatron-core 0.16 supports
    ("0.16.1", "megatron-core", True),
    ("0.16.0", "megatron-core", False),
    ("0.17.0", "megatron-core", False),
])
def test_ranges(version, name, ok):
    assert versions.in_range(version, versions.SUPPORTED[name]) is ok


def test_release_of_ngc_style_versions():
    assert versions.release("2.10.0a0+b4e4ee81d3.nv25.12") == (2, 10, 0)
    with pytest.raises(ValueError):
        versions.release("unknown")


def test_problems_name_each_version_in_one_line():
    ok = {"megatron-core": "0.16.1", "transformer-engine": "2.9.0+70f53666"}
    assert versions.problems(ok, require_te=True) == []
    assert versions.problems({"megatron-core": "0.16.1"}) == []
    assert versions.problems({"megatron-core": "0.16.1"}, require_te=True) == [
        "transformer-engine is not installed (supported: >=2.9,<2.12)"]
    assert versions.problems({"megatron-core": "0.18.0", "transformer-engine": "2.3.0"}) == [
        "megatron-core 0.18.0 is outside the supported range >=0.16.1,<0.17",
        "transformer-engine 2.3.0 is outside the supported range >=2.9,<2.12"]


def test_setup_pins_megatron_core_on_every_python():
    """NGC images run Python 3.12; an unbounded megatron-core there installs an untested major."""
    captured = setup_kwargs()
    mcore = [r for r in captured["install_requires"] if r.startswith("megatron-core")]
    assert mcore == ["megatron-core>=0.16.1,<0.17"]
    te = [r for r in captured["extras_require"]["gpu"] if r.startswith("transformer-engine")]
    assert te == ["transformer-engine[pytorch]>=2.9,<2.12"]


def test_dockerfile_base_and_build_check():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=nvcr\.io/nvidia/pytorch:25\.11-py3$", dockerfile, re.M)
    assert "python -m megatron_vlm.utils.versions --require-te" in dockerfile


def test_main_on_this_machine(capsys):
    assert versions.main([]) == 0  # megatron-core 0.16.x, TE optional
    assert "megatron-core=0.16" in capsys.readouterr().out
    if versions.installed("transformer-engine") is None:
        assert versions.main(["--require-te"]) == 1
        assert "transformer-engine is not installed" in capsys.readouterr().err
