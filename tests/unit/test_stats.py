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
                        length_histogram={"0-10000": 1, "10000-30000": 3}, token_budget=2_000_000, max_repeats=10, samples_per_shard=20)
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


def test_unmet_target_exits_1_with_check_and_bad_input_exits_2(built, tmp_path, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(built, other)
    index = json.loads((other / "index.json").read_text())
    index["targets"]["mixture"] = {"extract-single": 0.9, "extract-multi": 0.05, "reasoning": 0.05}
    (other / "index.json").write_text(json.dumps(index))
    assert _run(other) == 0 and _run(other, "--check") == 1  # reported either way, failing only with --check
    assert "| extract-single | 90.00% |" in capsys.readouterr().out
    # A truncated shard: one line naming it, exit 2, no report written over the old one.
    report_before = (other / "report" / "report.md").read_bytes()
    shard = other / index["shards"][0]["name"]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    assert _run(other) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and shard.name in err[0] and "not a readable tar" in err[0]
    assert (other / "report" / "report.md").read_bytes() == report_before
    # An index naming a shard outside the directory: refused by name (the one index reader), nothing opened.
    outside = tmp_path / "outside.tar"
    outside.write_bytes((built / index["shards"][0]["name"]).read_bytes())
    index["shards"][0]["name"] = "../outside.tar"
    (other / "index.json").write_text(json.dumps(index))
    assert _run(other) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "index.json: not a build index (shard name '../outside.tar' is not a safe file name" in err[0], err
    (other / "index.json").unlink()
    assert _run(other) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "index.json" in err[0]


def test_share_tolerance_counts_samples():
    # 9 samples, a 1/3 target: 2 or 4 samples are one sample off (met), 1 is two off (not met).
    assert stats._met(2, 9, 1 / 3, 0.01) and stats._met(4, 9, 1 / 3, 0.01) and not stats._met(1, 9, 1 / 3, 0.01)
    # 10,000 samples, 1% tolerance: 100 samples either way.
    assert stats._met(4100, 10_000, 0.4, 0.01) and not stats._met(4101, 10_000, 0.4, 0.01)


def test_evidence_depth_is_read_from_the_shards(built):
    import tarfile

    index = json.loads((built / "index.json").read_text())
    depths = []
    for shard in index["shards"]:
        with tarfile.open(built / shard["name"]) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    meta = json.loads(tf.extractfile(m).read())
                    depths.append(meta["pages"].index(meta["evidence_pages"][0]) / len(meta["pages"]))
    report = stats.compute(built)
    assert report["evidence"]["samples"] == len(depths) == report["totals"]["samples"]
    assert report["evidence"]["depth_tenths"] == [sum(int(d * 10) == i for d in depths) for i in range(10)]
    assert "evidence depth in the context" in stats.render_markdown(report)
