"""A run killed mid-way and resumed gives the same losses, step for step (bitwise on CPU), with no sample
repeated or skipped; a kill during a save leaves the previous checkpoint as `latest`; loss falls.

All on 2 gloo ranks (DP=2, 2 micro-batches each) with the tiny GPT on the fixed synthetic dataset
(16 micro-batches, so the data repeats every 4 steps).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.dist_utils import RankFailed, run_distributed

STEPS = 8


def _recipe(ckpt_dir: str, extra=()):
    from megatron_vlm.training.config import load_recipe

    return load_recipe(None, [
        "model.kind=gpt", "train.data_source=synthetic", "data.max_seq_length=64",
        "train.global_batch_tokens=256", f"train.tokens={256 * STEPS}", "train.precision=fp32",
        "train.lr=3e-3", "train.warmup_steps=1", "train.weight_decay=0.01",
        f"checkpoint.dir={ckpt_dir}", "checkpoint.save_interval=4", "logging.wandb_mode=disabled", *extra,
    ])


def _train(ckpt_dir: str, kill_after_step: int | None = None, kill_in_save_of_step: int | None = None):
    from megatron_vlm.training import checkpointing, loop

    if kill_after_step is not None:  # SIGKILL both ranks right after this step: no chance to clean up
        log_step = loop.RunLogger.log_step

        def log_then_die(self, step, *args, **kwargs):
            log_step(self, step, *args, **kwargs)
            if step == kill_after_step:
                os.kill(os.getpid(), signal.SIGKILL)

        loop.RunLogger.log_step = log_then_die
    if kill_in_save_of_step is not None:  # die after the shards are written, before `latest` moves
        from megatron.core import dist_checkpointing

        real_save = dist_checkpointing.save

        def save_then_die(state, directory, *args, **kwargs):
            real_save(state, directory, *args, **kwargs)
            if directory.endswith(f"iter_{kill_in_save_of_step:07d}"):
                os.kill(os.getpid(), signal.SIGKILL)

        dist_checkpointing.save = save_then_die
    result = loop.train(_recipe(ckpt_dir))
    return {"start": result.start_step, "losses": [m["loss"] for m in result.history],
            "latest": str(checkpointing.latest_checkpoint(ckpt_dir))}


def _samples_per_step(ckpt_dir: Path) -> dict[int, list[str]]:
    """The last record of every step in metrics.jsonl (a killed run's extra steps are redone on resume)."""
    steps = {}
    for line in (ckpt_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        steps[record["step"]] = sorted(record["sample_ids"])
    return steps


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("straight")
    result = run_distributed(_train, 2, str(ckpt), timeout_s=300)[0]
    records = [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines()]
    return result, _samples_per_step(ckpt), records


def test_loss_falls_on_the_fixed_dataset(uninterrupted):
    losses = uninterrupted[0]["losses"]
    assert len(losses) == STEPS
    # steps s and s+4 see the same micro-batches: the second time the loss must be lower
    for s in range(4):
        assert losses[s + 4] < losses[s] - 0.05, losses


def test_throughput_counts_real_tokens_not_padding(uninterrupted):
    """tokens/s is over the samples' tokens: step s holds micro-batches 4(s-1)..4s-1 of the stream,
    whose tokens outside the padding tail are counted here from the dataset itself."""
    from megatron_vlm.training.synthetic import synthetic_micro_batch

    for record in uninterrupted[2]:
        step = record["step"]
        real = 0
        for i in range(4 * (step - 1), 4 * step):
            batch = synthetic_micro_batch(i, seq_length=64, vocab_size=256, seed=1234, num_batches=16)
            cu = batch["cu_seqlens"].tolist()
            real += sum(b - a for a, b, task in zip(cu, cu[1:], batch["sample_tasks"]) if task != "padding")
        assert record["tokens"] == real < 4 * 64
        assert record["tokens_per_s"] == pytest.approx(real / record["step_time_s"])
        assert record["consumed_tokens"] == step * 4 * 64  # the budget counts sequence slots


@pytest.mark.slow(30)
def test_killed_run_resumes_bitwise_with_the_exact_stream(tmp_path, uninterrupted):
    straight, straight_samples, _ = uninterrupted
    with pytest.raises(RankFailed, match="died"):
        run_distributed(_train, 2, str(tmp_path), 6, timeout_s=300)
    assert (tmp_path / "latest").read_text().strip() == "iter_0000004"
    resumed = run_distributed(_train, 2, str(tmp_path), timeout_s=300)[0]
    assert resumed["start"] == 4
    assert resumed["losses"] == straight["losses"][4:]  # bitwise: same floats, not approx
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # one row per step: the killed run's steps 5-6 were redone, not repeated
    samples = _samples_per_step(tmp_path)
    assert samples == straight_samples
    all_ids = [s for step in sorted(samples) for s in samples[step]]
    assert len(all_ids) == len(set(all_ids))  # no sample twice
    micro_batches = {s.split("-")[0] for s in all_ids}
    assert micro_batches == {f"mb{i}" for i in range(STEPS * 4)}  # none skipped: 4 micro-batches a step


@pytest.mark.slow(30)
def test_kill_during_save_keeps_previous_latest(tmp_path, uninterrupted):
    with pytest.raises(RankFailed, match="died"):
        run_distributed(_train, 2, str(tmp_path), None, 8, timeout_s=300)
    assert (tmp_path / "latest").read_text().strip() == "iter_0000004"
    assert (tmp_path / "iter_0000008").is_dir() and not (tmp_path / "iter_0000008" / "train_state.json").exists()
    resumed = run_distributed(_train, 2, str(tmp_path), timeout_s=300)[0]
    assert resumed["start"] == 4
    assert resumed["losses"] == uninterrupted[0]["losses"][4:]
    assert resumed["latest"].endswith("iter_0000008")
