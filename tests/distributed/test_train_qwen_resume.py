"""Qwen2.5-VL on the shard loader, interrupted from outside the process as a cluster would: a run stopped
by SIGTERM (saves, exits 0) or killed by SIGKILL (keeps its last save) and then resumed gives the
uninterrupted run's losses bitwise, on the same samples step for step (the loader's state travels in
the checkpoint). The real command (`python -m megatron_vlm.train`) runs as a subprocess; nothing in
the package is rebound. The shards are built in-test from a tiny pool (84x168 px pages: 18 LLM tokens).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.dist_utils import free_port, run_tool
from tests.shards_fixtures import build_shards

REPO = Path(__file__).resolve().parents[2]
SEQ, STEPS = 256, 5


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory, qwen_tokenizer_dir) -> Path:
    from megatron_vlm.data.recipe import DataRecipe

    root = tmp_path_factory.mktemp("qwen_resume")
    counts = [random.Random(5).randint(1, 4) for _ in range(8)]
    data = DataRecipe(tokenizer=str(qwen_tokenizer_dir), max_seq_length=SEQ, length_distribution="custom",
                      length_histogram={f"0-{SEQ + 1}": 1}, token_budget=4000, samples_per_shard=16)
    build_shards(root, counts, data, page_px=(84, 168), docs_per_tar=8)
    recipe = {
        "model": {"kind": "qwen2_5_vl", "flavor": "debug"},
        "data": {"shards": str(root / "shards"), "tokenizer": str(qwen_tokenizer_dir), "max_seq_length": SEQ,
                 "seq_length_multiple": 32, "num_workers": 0, "pack_buffer": 8},
        "train": {"tokens": SEQ * 2 * STEPS, "global_batch_tokens": SEQ * 2, "precision": "fp32", "lr": 1e-3,
                  "warmup_steps": 1},
        "checkpoint": {"save_interval": 2},
        "logging": {"wandb_mode": "disabled"},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _argv(recipe: Path, ckpt: Path) -> list[str]:
    return ["--config", str(recipe), f"checkpoint.dir={ckpt}"]


def _steps(ckpt: Path) -> dict[int, tuple[float, list[str]]]:
    """(loss, sample ids) per step from metrics.jsonl; a step redone after a kill keeps its last record."""
    steps = {}
    for line in (ckpt / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        steps[record["step"]] = (record["loss"], sorted(record["sample_ids"]))
    return steps


def _interrupt(recipe: Path, ckpt: Path, sig: int, after: str) -> tuple[int, str]:
    """Run the command until a line containing ``after``, then send ``sig``: SIGTERM to the trainer
    (as Slurm warns a job), SIGKILL to its whole process group (as a node is lost; the checkpoint
    writer's helper processes die with it). (exit status, output)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "megatron_vlm.train", *_argv(recipe, ckpt)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines, deadline = [], time.monotonic() + 400
    for line in proc.stdout:
        lines.append(line)
        if after in line:
            os.killpg(proc.pid, sig) if sig == signal.SIGKILL else proc.send_signal(sig)
            break
        assert time.monotonic() < deadline, "".join(lines[-20:])
    rest, _ = proc.communicate(timeout=300)
    return proc.returncode, "".join(lines) + rest


def _resume(recipe: Path, ckpt: Path) -> str:
    code, out, err = run_tool("megatron_vlm.train", _argv(recipe, ckpt), timeout_s=400)[0]
    assert code == 0, out[-3000:] + err[-3000:]
    return out


@pytest.fixture(scope="module")
def straight(recipe_path, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("straight")
    _resume(recipe_path, ckpt)
    steps = _steps(ckpt)
    assert sorted(steps) == list(range(1, STEPS + 1))
    return steps


@pytest.mark.slow(150)
def test_sigterm_saves_then_resume_matches_the_straight_run(recipe_path, straight, tmp_path):
    code, output = _interrupt(recipe_path, tmp_path, signal.SIGTERM, "step 1/")
    assert code == 0 and "signal received" in output, output[-3000:]
    latest = (tmp_path / "latest").read_text().strip()
    stopped = json.loads((tmp_path / latest / "train_state.json").read_text())["step"]
    assert 1 <= stopped < STEPS and latest == f"iter_{stopped:07d}"
    out = _resume(recipe_path, tmp_path)
    assert f"resumed from {tmp_path / latest}" in out
    assert _steps(tmp_path) == straight  # bitwise losses, the same samples in every step


@pytest.mark.slow(150)
def test_sigkill_resumes_from_the_last_save_and_matches(recipe_path, straight, tmp_path):
    code, output = _interrupt(recipe_path, tmp_path, signal.SIGKILL, "step 3/")
    assert code == -signal.SIGKILL, output[-3000:]
    latest = (tmp_path / "latest").read_text().strip()
    assert latest in ("iter_0000002", "iter_0000004")  # step 4's save only if the kill came late
    out = _resume(recipe_path, tmp_path)
    assert f"resumed from {tmp_path / latest}" in out
    assert _steps(tmp_path) == straight
