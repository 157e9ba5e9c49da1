"""Preemption under a real torchrun (2 CPU ranks, gloo, the tiny GPT recipe), launched the way Slurm
does (examples/slurm/task.sh): SIGTERM to the launcher, or SIGTERM/SIGUSR1 to every process of the
step as slurmstepd sends them, end the job with exit 0, no traceback, and a complete checkpoint as
`latest`. (Before: torchrun exited 1 with a traceback; a signal to every process killed the
spawned helper of Megatron's checkpoint writer, so the save after the signal failed.)

Each save is slowed to 5 s and torch elastic's shutdown timeout set to 3 s: plain torchrun would
SIGKILL the ranks in the middle of the save (and exit 1 with a traceback); the launcher must not.
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

from tests.dist_utils import REPO, free_port, process_tree

SLOW_SAVE_S = 5  # longer than the shutdown timeouts (3 s) below
# Loaded at start-up by every process (sitecustomize): in the ranks, each checkpoint save sleeps first.
SITECUSTOMIZE = f"""
import os
if os.environ.get("RANK") is not None and os.environ.get("TORCHELASTIC_RUN_ID"):
    import time
    from megatron_vlm.training import checkpointing
    _save = checkpointing.save_checkpoint
    def _slow_save(*args, **kwargs):
        print("[test] save started", flush=True)
        time.sleep({SLOW_SAVE_S})
        return _save(*args, **kwargs)
    checkpointing.save_checkpoint = _slow_save
"""


def _launch(tmp_path: Path, whom: str, sig: signal.Signals = signal.SIGTERM) -> tuple[int, str, Path]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    ckpt = tmp_path / "ckpt"
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=f"{site}:{REPO}", GPUS_PER_NODE="2",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), SLURM_NNODES="1", SLURM_NODEID="0",
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", TORCH_ELASTIC_SHUTDOWN_TIMEOUT="3",
               MVLM_SHUTDOWN_TIMEOUT="3")
    command = ["bash", f"{REPO}/examples/slurm/task.sh", "torchrun", "-m", "megatron_vlm.train",
               "--config", f"{REPO}/examples/recipes/gpt_tiny.yaml", f"checkpoint.dir={ckpt}",
               "checkpoint.save_interval=2", "train.tokens=1000000"]
    proc = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 300
        for line in proc.stdout:
            lines.append(line)
            if "step 3/" in line:  # after the save of step 2: `latest` is iter_0000002
                break
            assert time.monotonic() < deadline, "".join(lines[-30:])
        assert proc.poll() is None, "".join(lines[-30:])
        targets = [proc.pid] if whom == "launcher" else process_tree(proc.pid)
        for pid in targets:
            os.kill(pid, sig)
        rest, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, "".join(lines) + rest, ckpt


@pytest.mark.slow(45)
@pytest.mark.parametrize("whom, sig", [("launcher", signal.SIGTERM), ("every-process", signal.SIGTERM),
                                       ("every-process", signal.SIGUSR1)], ids=["launcher", "slurm-term", "slurm-usr1"])
def test_stop_signal_under_torchrun_saves_and_exits_zero(tmp_path, whom, sig):
    """SIGTERM to the launcher alone (kill, a local scheduler), or SIGTERM/SIGUSR1 to every process of
    the step (Slurm preemption, --signal=USR1@T; helper processes included)."""
    code, output, ckpt = _launch(tmp_path, whom, sig)
    assert code == 0, output[-4000:]
    assert "Traceback" not in output and "SignalException" not in output, output[-4000:]
    assert "signal received" in output
    latest = (ckpt / "latest").read_text().strip()
    state = json.loads((ckpt / latest / "train_state.json").read_text())
    assert state["step"] >= 3 and latest == f"iter_{state['step']:07d}"  # the slow save after the signal completed
    assert all((ckpt / latest / "loader").glob("dp-*.json")) and len(list((ckpt / latest / "loader").glob("dp-*.json"))) == 2
