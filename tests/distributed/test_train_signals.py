"""SIGTERM during training saves a loadable checkpoint and exits 0; a bad recipe exits 1 with one line.

Runs the real command (`python -m megatron_vlm.train`, one process, gloo) as a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.dist_utils import free_port, run_tool

REPO = Path(__file__).resolve().parents[2]


def _command(ckpt: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "megatron_vlm.train", "--config", str(REPO / "examples/recipes/gpt_tiny.yaml"),
            f"checkpoint.dir={ckpt}", "checkpoint.save_interval=0", "train.tokens=1000000", *extra]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1",
                PYTHONWARNINGS="ignore")


@pytest.mark.slow(20)
def test_sigterm_saves_and_exits_zero(tmp_path):
    proc = subprocess.Popen(_command(tmp_path), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 240
    for line in proc.stdout:
        lines.append(line)
        if "step 3/" in line:
            proc.send_signal(signal.SIGTERM)
            break
        assert time.monotonic() < deadline, "".join(lines[-20:])
    rest, _ = proc.communicate(timeout=240)
    output = "".join(lines) + rest
    assert proc.returncode == 0, output[-3000:]
    assert "signal received" in output
    latest = (tmp_path / "latest").read_text().strip()
    state = json.loads((tmp_path / latest / "train_state.json").read_text())
    assert state["step"] >= 3 and latest == f"iter_{state['step']:07d}"

    # loadable: a new run (the same command's main(), in a fork-server rank) resumes from it and trains one more step
    code, out, err = run_tool("megatron_vlm.train", _command(tmp_path, f"train.max_steps={state['step'] + 1}")[3:])[0]
    assert code == 0, out[-3000:] + err[-3000:]
    assert f"resumed from {tmp_path / latest}" in out
    assert f"step {state['step'] + 1}/" in out


def test_bad_recipe_exits_one_with_one_line(tmp_path):
    done = subprocess.run(_command(tmp_path, "train.lrr=1"), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("megatron_vlm.train: error:")]
    assert len(errors) == 1 and "train.lrr" in errors[0]


def test_sigterm_during_start_up_exits_zero_without_a_checkpoint(tmp_path):
    """Start-up (model build, resume) can take minutes at scale: a signal then is honoured, not fatal."""
    proc = subprocess.Popen(_command(tmp_path), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "resolved recipe" in line:  # process groups up; the model is built next
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=240)
    output = "".join(lines) + rest
    assert proc.returncode == 0, output[-3000:]
    assert "signal received before the first step" in output and "step 1/" not in output
    assert not (tmp_path / "latest").exists()


def test_checkpoint_writer_helper_dies_with_a_killed_rank(tmp_path):
    """Megatron's checkpoint writer keeps a spawned Manager, started to ignore SIGTERM; a SIGKILLed
    rank left it running (four of them, 570 MB each, outlived the resume tests by half an hour)."""
    code = ("from megatron.core.dist_checkpointing.strategies import filesystem_async as f\n"
            "from megatron_vlm.training.checkpointing import _start_writer_helpers\n"
            "_start_writer_helpers()\n"
            "print(f._results_queue._manager._process.pid, flush=True)\n"
            "import time; time.sleep(120)\n")
    rank = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        helper = int(rank.stdout.readline())
        os.kill(helper, signal.SIGTERM)  # ignored, as a save after Slurm's signal needs it
        time.sleep(0.5)
        assert Path(f"/proc/{helper}").exists()
    finally:
        rank.kill()
        rank.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{helper}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    gone = not Path(f"/proc/{helper}").exists() or "Z" in Path(f"/proc/{helper}/stat").read_text().split(")")[1][:3]
    if not gone:
        os.kill(helper, signal.SIGKILL)
    assert gone, "the writer's helper outlived its rank"
