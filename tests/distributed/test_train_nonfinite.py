"""NaN/Inf loss: the step is skipped (no update) and reported; repeated ones stop the run with a clear message."""

from __future__ import annotations

import pytest

from tests.dist_utils import RankFailed, run_distributed


def _train_with_nan_on(nan_steps: list[int], ckpt_dir: str, limit: int):
    import torch

    from megatron_vlm.training import loop, providers
    from megatron_vlm.training.config import load_recipe

    calls = {"n": 0}
    real_forward = providers.GptProvider.forward

    def forward(self, model, batch):  # 2 micro-batches per step: call n belongs to step n // 2 + 1
        out = real_forward(self, model, batch)
        step = calls["n"] // 2 + 1
        calls["n"] += 1
        return out * float("nan") if step in nan_steps else out

    providers.GptProvider.forward = forward
    recipe = load_recipe(None, [
        "model.kind=gpt", "train.data_source=synthetic", "data.max_seq_length=64", "train.global_batch_tokens=128",
        "train.tokens=768", "train.precision=fp32", "train.lr=1e-3", f"train.max_nonfinite_steps={limit}",
        f"checkpoint.dir={ckpt_dir}", "checkpoint.save_interval=0", "logging.wandb_mode=disabled",
    ])
    result = loop.train(recipe)
    return [(m["skipped"], m["loss"], m["grad_norm"]) for m in result.history], torch.__version__


def test_nan_step_is_skipped_and_reported(tmp_path):
    history, _ = run_distributed(_train_with_nan_on, 1, [2], str(tmp_path), 3, timeout_s=240)[0]
    assert [h[0] for h in history] == [False, True, False, False, False, False]
    assert history[1][1] != history[1][1]  # the reported loss is NaN
    assert all(h[1] == h[1] for i, h in enumerate(history) if i != 1)


def test_repeated_nan_stops_the_run_with_a_clear_message(tmp_path):
    with pytest.raises(RankFailed, match="2 consecutive steps with NaN/Inf loss or gradients"):
        run_distributed(_train_with_nan_on, 1, [3, 4], str(tmp_path), 2, timeout_s=240)
