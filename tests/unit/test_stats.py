"""stats: measured from the shards, compared with the build's targets; exit codes; report files."""

from __future__ import annotations

import argparse
import json

import pytest
from PIL import Image

from megatron_vlm.data import stats
from megatron_vlm.data.recipe import DataRecipe
from tests.shards_fixtures import build_shards


@pytest.fixture(scope="module")
def built(tmp_path_factory, qwen_tokenizer_dir):
    root = tmp_path_factory.mktemp("st")
    counts = [2, 3, 4, 5, 6, 7, 8, 9, 13]  # 13 pages (~33K tokens) lies outside the histogram
    recipe = DataRecipe(tokenizer=str(qwen_tokenizer_dir), length_distribution="custom",
                        length_histogram={"0-10000": 1, "10000-30000": 3}, token_budget=2_000_000, samples_per_shard=20)
    build_shards(root, counts, recipe, image_px=(28, 28), out="out")
    return root / "out"


def _run(path, *extra):
    parser = argparse.ArgumentParser()
    stats.add_arguments(parser)
    return stats.main(parser.parse_args([str(path), *extra]))


def test_custom_histogram_hit_and_report_files(built, capsys):
    assert _run(built) == 0
    out = capsys.readouterr().out
    assert "| 10000-30000 | 75.00% |" in out and "all targets met: yes" in out
    assert "| excluded: outside-length-histogram | 3 |" in out
    report = json.loads((built / "report" / "report.json").read_text())
    # Independent count: 2-3 page docs are < 10K tokens (2,508 per page), 4-11 pages are 10-30K.
    lengths = [n for v in stats.compute(built)["lengths_by_task"].values() for n in v]
    assert report["totals"]["samples"] == len(lengths)
    assert sum(n < 10_000 for n in lengths) / len(lengths) == pytest.approx(0.25, abs=0.01)
    with Image.open(built / "report" / "lengths.png") as img:
        assert img.width > 500 and img.height > 500


def test_unmet_target_exits_1_and_missing_index_exits_2(built, tmp_path, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(built, other)
    index = json.loads((other / "index.json").read_text())
    index["targets"]["mixture"] = {"extract-single": 0.9, "extract-multi": 0.05, "reasoning": 0.05}
    (other / "index.json").write_text(json.dumps(index))
    assert _run(other) == 1
    assert "| extract-single | 90.00% |" in capsys.readouterr().out
    (other / "index.json").unlink()
    assert _run(other) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "index.json" in err[0]
