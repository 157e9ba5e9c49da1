"""Stage options are dataclasses: the CLI's flags are generated from their fields, and the Python
API (build_pool / synthesize keyword options) sets exactly what the flags would."""

from __future__ import annotations

import argparse

import pytest

from megatron_vlm.data import build, pool
from megatron_vlm.data.synth import run as synth
from megatron_vlm.utils import options


def _parse(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_options_set_what_the_flags_would():
    by_flags = options.from_args(pool.PoolOptions, _parse(pool, ["--input", "in", "--output", "out", "--no-ocr", "--workers", "3", "--dpi", "72"]))
    by_options = options.make(pool.PoolOptions, "build_pool", input="in", output="out", no_ocr=True, workers=3, dpi=72)
    assert by_flags == by_options
    assert (by_options.input, by_options.output, by_options.no_ocr, by_options.workers) == ("in", "out", True, 3)
    by_flags = options.from_args(synth.SynthOptions, _parse(synth, ["--pool", "p", "--output", "o", "--segment-pages", "3", "5",
                                                                    "--tasks", "reasoning", "ocr-full"]))
    assert by_flags == options.make(synth.SynthOptions, "synthesize", pool="p", output="o", segment_pages=(3, 5), tasks=["reasoning", "ocr-full"])
    assert by_flags.segment_pages == (3, 5)


def test_an_unknown_option_is_refused_by_name(tmp_path):
    with pytest.raises(TypeError, match="build_pool\\(\\) got an unknown option 'worker'"):
        pool.build_pool(tmp_path, tmp_path / "out", worker=2)
    with pytest.raises(TypeError, match="synthesize\\(\\) got an unknown option 'teachr'"):
        synth.synthesize(tmp_path, tmp_path / "out", teachr="template")
    with pytest.raises(ValueError, match="teacher: 'gpt' is not one of template, openai"):
        synth.synthesize(tmp_path, tmp_path / "out", teacher="gpt")
    with pytest.raises(ValueError, match="segment_pages: cannot use"):
        synth.synthesize(tmp_path, tmp_path / "out", segment_pages=3)
    assert not (tmp_path / "out").exists()


def test_help_comes_from_the_field_docstrings_with_defaults(capsys):
    for module, flag, text in ((pool, "--docs-per-tar", "documents per pool tar (the unit of work and resumption) (default: 64)"),
                               (synth, "--segment-pages", "pages in a segment shown to the teacher (default: 8 15)"),
                               (build, "--tokenizer", "tokenizer directory (overrides the recipe's data.tokenizer)")):
        with pytest.raises(SystemExit):
            _parse(module, ["--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert flag in out and text in out
    with pytest.raises(SystemExit):
        _parse(pool, ["--output", "o"])  # --input is required
    assert "the following arguments are required: --input" in capsys.readouterr().err
