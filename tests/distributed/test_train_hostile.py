"""The trainer on hostile input: one-line errors with exit 1 where a traceback or a hang would be.

Every case runs the command's main() (megatron_vlm.train) in a fork-server rank, as torchrun would.
"""

from __future__ import annotations

import random

import pytest

from tests.dist_utils import REPO, run_tool
from tests.shards_fixtures import build_shards

SEQ = 512


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("megatron_vlm.train: error:")]


@pytest.fixture(scope="module")
def all_bad_shards(tmp_path_factory, qwen_tokenizer_dir):
    """Image shards whose every image is garbage."""
    from megatron_vlm.data.loader import scan_shard
    from megatron_vlm.data.recipe import DataRecipe

    root = tmp_path_factory.mktemp("bad_shards")
    rng = random.Random(5)
    recipe = DataRecipe(tokenizer=str(qwen_tokenizer_dir), max_seq_length=SEQ, length_distribution="custom",
                        length_histogram={f"0-{SEQ + 1}": 1}, token_budget=1500, samples_per_shard=4)
    index = build_shards(root, [rng.randint(1, 3) for _ in range(6)], recipe, page_px=(84, 168), docs_per_tar=6)
    for shard in index["shards"]:
        path = root / "shards" / shard["name"]
        entries, _ = scan_shard(path)
        with open(path, "r+b") as f:
            for entry in entries:
                for off, size in entry.images:
                    f.seek(off)
                    f.write(b"\x00" * size)
    return root / "shards", index


@pytest.mark.slow(25)
def test_every_sample_bad_stops_with_the_counts_not_a_hang(all_bad_shards, qwen_tokenizer_dir, tmp_path):
    shard_dir, index = all_bad_shards
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("{}\n")
    args = ["--config", str(recipe), "model.kind=qwen2_5_vl", "model.flavor=debug", "train.data_source=shards",
            f"data.shards={shard_dir}", f"data.tokenizer={qwen_tokenizer_dir}", "data.num_workers=1",
            f"data.max_seq_length={SEQ}", f"train.global_batch_tokens={SEQ}", f"train.tokens={SEQ * 4}",
            "train.precision=fp32", f"checkpoint.dir={tmp_path / 'ckpt'}", "logging.wandb_mode=disabled"]
    # On a loader that searches forever this times out (the rank spins at 100% CPU, deaf to SIGTERM).
    code, out, err = run_tool("megatron_vlm.train", args, timeout_s=240)[0]
    assert code == 1, out[-2000:] + err[-2000:]
    errors = _errors(err)
    total = index["totals"]["samples"]
    assert len(errors) == 1 and f"{total} bad samples in a row" in errors[0] and f"corrupt-image {total}" in errors[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "ckpt" / "latest").exists()


def _gpt_args(ckpt, *extra: str) -> list[str]:
    return ["--config", f"{REPO}/examples/recipes/gpt_tiny.yaml", f"checkpoint.dir={ckpt}", "train.max_steps=1",
            *extra]


@pytest.mark.slow(20)
def test_resume_with_another_model_shape_is_one_line(tmp_path):
    code, out, err = run_tool("megatron_vlm.train", _gpt_args(tmp_path / "ckpt"))[0]
    assert code == 0, err[-2000:]
    for change, named in (("model.num_layers=3", "model.num_layers: unset (the flavor's) there, 3 now"), ("parallel.tp=1", None)):
        code, out, err = run_tool("megatron_vlm.train", _gpt_args(tmp_path / "ckpt", change, "train.max_steps=2"))[0]
        if named is None:  # an unchanged model resumes
            assert code == 0 and "resumed from" in out, err[-2000:]
            continue
        errors = _errors(err)
        assert code == 1 and len(errors) == 1 and named in errors[0] and "Traceback" not in err, err[-3000:]


def test_layout_that_the_processes_cannot_form_is_one_line(tmp_path):
    code, out, err = run_tool("megatron_vlm.train", _gpt_args(tmp_path / "ckpt", "parallel.tp=2"))[0]
    errors = _errors(err)
    assert code == 1 and len(errors) == 1 and "not divisible by tp*pp*cp = 2*1*1" in errors[0], err[-3000:]
    assert "Traceback" not in err


@pytest.mark.slow(20)
def test_shard_index_that_is_not_a_build_index_is_one_line(qwen_tokenizer_dir, tmp_path):
    """An index.json cut short, or naming a shard outside its directory: one line naming the file, exit 1
    (was a ValueError traceback)."""
    cases = {"cut": ('{"shards": [{"name": "shard-000000.tar", "sam', "not a build index (JSONDecodeError"),
             "escaping": ('{"shards": [{"name": "../../etc/passwd", "samples": 1}]}', "shard name '../../etc/passwd' "
                          "is not a safe file name")}
    for case, (text, message) in cases.items():
        shard_dir = tmp_path / case
        shard_dir.mkdir()
        (shard_dir / "index.json").write_text(text)
        args = ["--config", f"{REPO}/examples/recipes/debug.yaml", "parallel.tp=1", "parallel.sequence_parallel=false",
                f"data.shards={shard_dir}", f"data.tokenizer={qwen_tokenizer_dir}", f"checkpoint.dir={tmp_path / 'ckpt'}",
                "logging.wandb_mode=disabled"]
        code, out, err = run_tool("megatron_vlm.train", args)[0]
        errors = _errors(err)
        assert code == 1 and len(errors) == 1 and "Traceback" not in err, f"{case}: {err[-3000:]}"
        assert f"{shard_dir / 'index.json'}: not a build index" in errors[0] and message in errors[0], errors
    assert not (tmp_path / "ckpt").exists()
