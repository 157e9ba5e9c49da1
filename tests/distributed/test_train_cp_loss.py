"""Context parallelism does not change the loss or the gradients: the trainer (training.loop.train) on
image-bearing packed micro-batches from the shard loader gives, at CP=2, the CP=1 loss and per-task losses
at every step, and the CP=1 gradients of every parameter (vision tower included) at step 1; so does
activation recompute (selective and full) on one rank. The same run
checks the logged tokens/s (real tokens only) and MFU (training.flops on the step's samples and images).

The shards are built in-test from a tiny pool (pages of 84x168 px: 18 LLM tokens, two ViT windows each),
so the micro-batches hold several sub-sequences of different lengths, each with 1-4 images, and some
image's tokens straddle the edge between the two CP ranks' chunks (checked below, on the same stream).
Each CP rank sums the token losses of its chunks and counts its target tokens; Megatron's
finalize_model_grads divides by the count summed over DP x CP, so the mean is over the whole batch.
The sequences are variable-length (the recipe default): each ends at a multiple of LENGTH_MULTIPLE,
not at max_seq_length, so the CP split sees totals other than the max length (checked on the stream).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from megatron_vlm.models.family import get_family
from tests.dist_utils import run_distributed
from tests.shards_fixtures import (
    build_shards,
    one_thread,  # noqa: F401  (autouse fixture)
)

QWEN = get_family("qwen2_5_vl").tokens

STEPS = 2
SEQ = 256
MICRO_BATCHES = 2
PEAK_TFLOPS = 1.0
LENGTH_MULTIPLE = 32  # data.seq_length_multiple: a multiple of 2 x CP


@pytest.fixture(scope="module")
def image_shards(tmp_path_factory, qwen_tokenizer_dir):
    from megatron_vlm.data.recipe import DataRecipe

    root = tmp_path_factory.mktemp("cp_img")
    rng = random.Random(3)
    counts = [rng.randint(1, 4) for _ in range(6)]
    recipe = DataRecipe(tokenizer=str(qwen_tokenizer_dir), max_seq_length=SEQ, length_distribution="custom",
                        length_histogram={f"0-{SEQ + 1}": 1}, token_budget=2000, samples_per_shard=64)
    build_shards(root, counts, recipe, page_px=(84, 168), docs_per_tar=6)
    return root / "shards"


@pytest.fixture(scope="module")
def stream(image_shards, qwen_tokenizer_dir):
    """The micro-batches the trainer reads (one DP rank, the recipe's loader settings), in order."""
    from megatron_vlm.data.loader import PackedLoader

    loader = PackedLoader(image_shards, qwen_tokenizer_dir, "qwen2_5_vl", num_workers=0, pack_buffer=8, max_length=SEQ,
                          seq_length_multiple=LENGTH_MULTIPLE)
    batches = [batch for _, batch in zip(range(STEPS * MICRO_BATCHES), loader)]
    lengths = [b["tokens"].shape[1] for b in batches]
    assert all(n % LENGTH_MULTIPLE == 0 for n in lengths) and min(lengths) < SEQ, lengths
    return batches


def _train(cp: int, shard_dir: str, tokenizer_dir: str, ckpt_dir: str, *extra: str):
    from megatron_vlm.training import checkpointing, loop
    from megatron_vlm.training.config import load_recipe

    kept: dict = {}
    build_model, optimizer_step = loop.build_model, loop.optimizer_step

    def build_and_keep(*args, **kwargs):
        kept["chunks"], config = build_model(*args, **kwargs)
        return kept["chunks"], config

    def step_after_keeping_grads(optimizer):
        if "grads" not in kept:  # step 1's reduced gradients, before the update
            kept["grads"] = {n: p.main_grad.numpy().copy() for n, p in kept["chunks"][0].module.named_parameters()}
        return optimizer_step(optimizer)

    loop.build_model, loop.optimizer_step = build_and_keep, step_after_keeping_grads
    checkpointing.save_checkpoint = lambda *args, **kwargs: ckpt_dir  # saving is not under test here
    recipe = load_recipe(None, [
        "model.kind=qwen2_5_vl", "model.flavor=debug", f"parallel.cp={cp}", "parallel.distributed_optimizer=false",
        "train.data_source=shards", f"data.shards={shard_dir}", f"data.tokenizer={tokenizer_dir}", "data.num_workers=0",
        "data.pack_buffer=8", f"data.max_seq_length={SEQ}", f"data.seq_length_multiple={LENGTH_MULTIPLE}",
        f"train.global_batch_tokens={SEQ * MICRO_BATCHES}",
        f"train.tokens={SEQ * MICRO_BATCHES * STEPS}", "train.precision=fp32", "train.lr=1e-3", "train.warmup_steps=1",
        f"checkpoint.dir={ckpt_dir}", "checkpoint.resume=false", "logging.wandb_mode=disabled", f"logging.peak_tflops={PEAK_TFLOPS}",
        *extra,
    ])
    result = loop.train(recipe)
    # the big vocab matrices as norms (the payload crosses a pipe), everything else whole
    grads = {n: np.linalg.norm(g).reshape(1) if g.size > 1_000_000 else g for n, g in kept["grads"].items()}
    return result.history, grads


@pytest.fixture(scope="module")
def cp1_run(image_shards, qwen_tokenizer_dir, tmp_path_factory):
    """The reference: one rank, no CP, no recompute: (history, step-1 gradients)."""
    args = (str(image_shards), str(qwen_tokenizer_dir), str(tmp_path_factory.mktemp("cp1")))
    (history, grads), = run_distributed(_train, 1, 1, *args, timeout_s=300)
    assert len(history) == STEPS
    return history, grads


def _assert_same_run(history, grads, ref_history, ref_grads):
    for step, (metrics, ref) in enumerate(zip(history, ref_history, strict=True), 1):
        assert metrics["target_tokens"] == ref["target_tokens"], step
        losses = {k: v for k, v in metrics.items() if k.startswith("loss")}
        assert losses.keys() == {k for k in ref if k.startswith("loss")}, step  # the same tasks present
        for key, value in losses.items():
            assert value == pytest.approx(ref[key], rel=1e-6), (step, key)
    for name, ref in ref_grads.items():
        torch.testing.assert_close(torch.from_numpy(grads[name]), torch.from_numpy(ref), rtol=1e-4, atol=1e-6,
                                   msg=name)


def test_cp2_matches_cp1_on_image_batches(image_shards, qwen_tokenizer_dir, stream, cp1_run, tmp_path):
    ref_history, ref_grads = cp1_run
    args = (str(image_shards), str(qwen_tokenizer_dir), str(tmp_path))
    for history, grads in run_distributed(_train, 2, 2, *args, timeout_s=300):
        _assert_same_run(history, grads, ref_history, ref_grads)
    # not vacuous: the images reached the loss, so every vision block has a gradient
    vision = [n for n in ref_grads if n.startswith("vision.") and n.endswith("weight")]
    assert vision and all(np.abs(ref_grads[n]).max() > 0 for n in vision)
    _check_tokens_and_mfu(ref_history, stream, world_size=1)
    _check_tokens_and_mfu(history, stream, world_size=2)


@pytest.mark.parametrize("recompute", ["selective", "full"])
def test_activation_recompute_changes_nothing(image_shards, qwen_tokenizer_dir, cp1_run, tmp_path, recompute):
    """model.recompute (selective: core attention; full: whole layers) recomputes in backward what it did
    not keep: the same losses and step-1 gradients as keeping every activation."""
    args = (str(image_shards), str(qwen_tokenizer_dir), str(tmp_path), f"model.recompute={recompute}")
    (history, grads), = run_distributed(_train, 1, 1, *args, timeout_s=300)
    _assert_same_run(history, grads, *cp1_run)


def _check_tokens_and_mfu(history, stream, world_size):
    """tokens/s counts the samples' own tokens (no padding); MFU is the FLOPs model on those samples and images."""
    from megatron_vlm.models.qwen2_5_vl.config import flavor
    from megatron_vlm.training.flops import FlopsModel

    model = FlopsModel.from_qwen(flavor("debug"))
    for step, metrics in enumerate(history):
        batches = stream[step * MICRO_BATCHES:(step + 1) * MICRO_BATCHES]
        lengths = [n for b in batches for n, task in zip(b["sample_num_tokens"], b["sample_tasks"]) if task != "padding"]
        grids = [g for b in batches for g in b["image_grid_thw"].tolist()]
        assert metrics["tokens"] == sum(lengths) < SEQ * MICRO_BATCHES
        assert metrics["tokens_per_s"] == pytest.approx(sum(lengths) / metrics["step_time_s"])
        flops = metrics["mfu"] * metrics["step_time_s"] * world_size * PEAK_TFLOPS * 1e12
        assert flops == pytest.approx(model.step_flops(lengths, grids), rel=1e-9)


def test_stream_has_images_straddling_the_cp_chunk_edge(stream):
    """The micro-batches the run above trained on hold an image whose tokens go to both CP ranks."""
    from megatron_vlm.models.qwen2_5_vl.position_ids import IMAGE_TOKEN_ID
    from megatron_vlm.parallel.context_parallel import split_batch_for_cp

    straddling = images = 0
    for batch in stream:
        tokens = batch["tokens"][0]
        is_image = tokens == IMAGE_TOKEN_ID
        image_ends = (batch["image_grid_thw"].prod(-1) // 4).cumsum(0)  # 2x2 merge: tokens per image
        image_of_token = torch.searchsorted(image_ends, is_image.long().cumsum(0) - 1, right=True)
        image_of_token[~is_image] = -1
        images += int(batch["image_grid_thw"].shape[0])
        owners: dict[int, set] = {}
        for rank in range(2):
            index = split_batch_for_cp(batch, 2, rank, image_token_id=QWEN.image_pad, video_token_id=QWEN.video_pad)["cp_source_index"]
            for i in image_of_token[index[index >= 0]].unique().tolist():
                owners.setdefault(i, set()).add(rank)
        straddling += sum(1 for i, ranks in owners.items() if i >= 0 and len(ranks) == 2)
    assert images >= 2 * STEPS * MICRO_BATCHES and straddling >= 1, (images, straddling)
