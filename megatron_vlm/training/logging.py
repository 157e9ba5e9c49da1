"""What a run reports: console progress with ETA, a metrics file, and Weights & Biases (rank 0 only).

Per step: loss (mean per target token over the global batch), loss per task type, learning rate,
grad norm, tokens/s (real tokens: the samples' own, no packing or CP padding), an MFU estimate
(model FLOPs from :mod:`megatron_vlm.training.flops` / step time / (devices x
``logging.peak_tflops``)), peak memory, and the samples' lengths (a W&B histogram). Every step
also goes to ``CKPT_DIR/metrics.jsonl`` (one JSON object per line, with the ids of the samples
the step trained on), which tests and plots read; a resumed run first drops the rows of steps
after its checkpoint, which it trains again, so every step has one row.

W&B never stops a run: without ``WANDB_API_KEY`` (and no ``wandb login``) it runs offline
(``wandb sync`` later); if it cannot start at all, the run goes on without it and says so once.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

from megatron_vlm.parallel.state import device
from megatron_vlm.training.config import Recipe, recipe_to_dict


def peak_memory_gib() -> float:
    if device().is_cuda:
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RunLogger:
    """Rank-0 sink for step metrics. Other ranks get a logger whose methods do nothing."""

    def __init__(self, recipe: Recipe, total_steps: int, active: bool, wandb_run_id: str | None = None,
                 start_step: int = 0):
        self.recipe, self.total_steps, self.active = recipe, total_steps, active
        self.interval = max(1, recipe.logging.log_interval)
        self.wandb = None
        self.wandb_run_id = wandb_run_id
        self.start_time = time.monotonic()
        self.start_step: int | None = None
        self.metrics_file = None
        if not active:
            return
        ckpt_dir = Path(recipe.checkpoint.dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        keep_metrics_before(ckpt_dir / "metrics.jsonl", start_step)
        self.metrics_file = open(ckpt_dir / "metrics.jsonl", "a")  # noqa: SIM115 - open for the run
        self._start_wandb(ckpt_dir)

    def _start_wandb(self, ckpt_dir: Path) -> None:
        mode = self.recipe.logging.wandb_mode
        if mode == "disabled" or os.environ.get("WANDB_MODE") == "disabled":
            return
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") or _has_netrc_key() else "offline"
        try:
            import wandb

            self.wandb = wandb.init(
                project=self.recipe.logging.wandb_project,
                name=self.recipe.logging.wandb_run_name or ckpt_dir.resolve().name,
                dir=str(ckpt_dir), mode=mode, id=self.wandb_run_id, resume="allow",
                config=recipe_to_dict(self.recipe),
            )
            self.wandb_run_id = self.wandb.id
            self.console(f"W&B {mode}: run {self.wandb.id} (files under {ckpt_dir}/wandb)")
        except Exception as err:  # noqa: BLE001 - logging must never stop training
            self.wandb = None
            self.console(f"W&B unavailable ({type(err).__name__}: {err}); continuing without it")

    def console(self, message: str) -> None:
        if self.active:
            print(f"[train] {message}", flush=True)

    def log_step(self, step: int, metrics: dict, sample_ids: list[str], seq_lengths: list[int]) -> None:
        """Record step ``step`` (1-based, after the update)."""
        if not self.active:
            return
        if self.start_step is None:
            self.start_step, self.start_time = step - 1, time.monotonic() - metrics.get("step_time_s", 0.0)
        record = {"step": step, **metrics, "sample_ids": sample_ids}
        self.metrics_file.write(json.dumps(record, sort_keys=True) + "\n")
        self.metrics_file.flush()
        if self.wandb is not None:
            try:
                import wandb

                payload = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
                if seq_lengths:
                    payload["seq_length"] = wandb.Histogram(seq_lengths)
                self.wandb.log(payload, step=step)
            except Exception as err:  # noqa: BLE001
                self.console(f"W&B log failed ({err}); continuing without it")
                self.wandb = None
        if step % self.interval == 0 or step == self.total_steps:
            done = step - self.start_step
            elapsed = time.monotonic() - self.start_time
            eta = elapsed / max(done, 1) * (self.total_steps - step)
            parts = [f"step {step}/{self.total_steps}", f"loss {metrics['loss']:.4f}"]
            parts += [f"lr {metrics['lr']:.2e}", f"grad norm {metrics.get('grad_norm', float('nan')):.3f}"]
            parts += [f"{metrics['tokens_per_s']:,.0f} tok/s"]
            if metrics.get("mfu"):
                parts.append(f"MFU {100 * metrics['mfu']:.1f}%")
            if metrics.get("skipped"):
                parts.append("SKIPPED (non-finite)")
            parts.append(f"ETA {_format_duration(eta)}")
            self.console(" | ".join(parts))

    def close(self) -> None:
        if self.metrics_file:
            self.metrics_file.close()
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception:  # noqa: BLE001
                pass


def keep_metrics_before(path: Path, start_step: int) -> None:
    """Drop the rows of steps after ``start_step`` (a killed run's steps that a resume redoes) and a
    torn last line, so each step has one row; rewritten aside and renamed (utils/atomic)."""
    if not path.is_file():
        return
    kept, changed = [], False
    for line in path.read_text().splitlines():
        try:
            keep = json.loads(line)["step"] <= start_step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        changed |= not keep
    if changed:
        from megatron_vlm.utils import atomic

        atomic.write_text(path, "".join(line + "\n" for line in kept))


def _has_netrc_key() -> bool:
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def warn(message: str) -> None:
    print(f"[train] warning: {message}", file=sys.stderr, flush=True)
