"""The README's main command, `bash examples/quickstart.sh`, runs end to end: PDFs -> pool -> synth -> build ->
train (2 ranks, TP=2) -> checkpoint -> HF export -> an answer from transformers."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.dist_utils import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow(150)
def test_quickstart_runs_as_the_readme_says(qwen_tokenizer_dir):
    env = dict(os.environ, MASTER_PORT=str(free_port()), WANDB_MODE="offline")
    done = subprocess.run(["bash", "examples/quickstart.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    run = REPO / "runs" / "quickstart"
    latest = (run / "checkpoints" / "latest").read_text().strip()
    state = json.loads((run / "checkpoints" / latest / "train_state.json").read_text())
    assert state["step"] == 30
    assert (run / "hf" / "config.json").is_file() and list((run / "hf").glob("*.safetensors"))
    assert "[ask] model:" in done.stdout
    # the loss fell: last steps below the first (metrics.jsonl is written by the trainer each step)
    losses = [json.loads(line)["loss"] for line in (run / "checkpoints" / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-5:]) / 5 < losses[0]
