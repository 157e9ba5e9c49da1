"""Starting from an HF directory (converted on the fly) gives the same model as starting from the Megatron
checkpoint it was exported from: same first-step loss and grad norm (LR 0), unlike a fresh init."""

from __future__ import annotations

import pytest

from tests.dist_utils import run_distributed


def _runs(tmp: str):
    from pathlib import Path

    from megatron_vlm.checkpoint.convert import mcore_to_hf
    from megatron_vlm.parallel import destroy
    from megatron_vlm.training.config import load_recipe
    from megatron_vlm.training.loop import train

    def recipe(name: str, *extra: str):
        return load_recipe(None, [
            "model.kind=qwen2_5_vl", "model.flavor=debug", "train.data_source=synthetic", "data.max_seq_length=128",
            "train.global_batch_tokens=128", "train.tokens=1280", "train.precision=fp32", "train.lr=1e-3",
            f"checkpoint.dir={Path(tmp) / name}", "logging.wandb_mode=disabled", *extra,
        ])

    train(recipe("a", "train.max_steps=2"))  # weights that differ from any fresh init
    mcore_to_hf(str(Path(tmp) / "a"), str(Path(tmp) / "hf"))
    destroy()  # the converter sets up its own single-process groups
    first = {}
    for name, source in (("fresh", ""), ("from_hf", str(Path(tmp) / "hf")), ("from_mcore", str(Path(tmp) / "a"))):
        result = train(recipe(name, "train.max_steps=1", "train.lr=0", f"checkpoint.init_from={source}"))
        first[name] = (result.history[0]["loss"], result.history[0]["grad_norm"])
    return first


@pytest.mark.slow(15)
def test_init_from_hf_equals_init_from_megatron(tmp_path):
    first = run_distributed(_runs, 1, str(tmp_path), timeout_s=400)[0]
    assert first["from_hf"][0] == pytest.approx(first["from_mcore"][0], rel=1e-6)
    assert first["from_hf"][1] == pytest.approx(first["from_mcore"][1], rel=1e-5)
    assert abs(first["from_hf"][0] - first["fresh"][0]) > 1e-3
