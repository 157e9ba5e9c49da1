"""megatron_vlm.utils.cli.stage_args: keyword options of build_pool / synthesize act as their CLI flags."""

from __future__ import annotations

import pytest

from megatron_vlm.data import pool
from megatron_vlm.data.synth import run as synth
from megatron_vlm.utils.cli import stage_args


def test_options_set_what_the_flags_would():
    by_flags = stage_args(pool.add_arguments, ["--input", "in", "--output", "out", "--no-ocr", "--workers", "3", "--dpi", "72"], {}, "build_pool")
    by_options = stage_args(pool.add_arguments, ["--input", "in", "--output", "out"], {"no_ocr": True, "workers": 3, "dpi": 72}, "build_pool")
    assert vars(by_flags) == vars(by_options)
    assert (by_options.input, by_options.output, by_options.no_ocr, by_options.workers) == ("in", "out", True, 3)


def test_an_unknown_option_is_refused_by_name(tmp_path):
    with pytest.raises(TypeError, match="build_pool\\(\\) got an unknown option 'worker'"):
        pool.build_pool(tmp_path, tmp_path / "out", worker=2)
    with pytest.raises(TypeError, match="synthesize\\(\\) got an unknown option 'teachr'"):
        synth.synthesize(tmp_path, tmp_path / "out", teachr="template")
    assert not (tmp_path / "out").exists()
