"""Our Qwen3-VL (local spec, one rank) gives HF's logits: text, images, video, packed samples; meta-device shapes.

Tolerance: float32 with random weights. The two models compute the same sums in a different order
(fused QKV/gate-up matmuls, SDPA vs eager softmax, F.interpolate vs HF's gathered bilinear taps for
the position grid), which moves the logits by ~1e-6; we allow 2e-5 absolute. A wrong layout (an
mRoPE axis not interleaved, a QK-norm missing, the position grid in raster instead of block order,
a DeepStack tap on the wrong layer, a crossed sample boundary) moves them by 1e-3 or more.
Position ids come from HF's own ``get_rope_index`` (the data side's ids are tested against it
separately), so this file tests the model alone.
"""

from __future__ import annotations

import pytest
import torch

from megatron_vlm.models.common.attention import packed_seq_params
from tests.qwen3_utils import hf_model, hf_positions, our_model, sample, tiny_config
from tests.qwen_utils import single_rank_fixture
from tests.unit.test_qwen_model import hf_logits

TOL = dict(rtol=0, atol=2e-5)


@pytest.fixture(scope="module", autouse=True)
def _megatron():
    yield from single_rank_fixture()


@pytest.fixture(scope="module")
def models():
    cfg = tiny_config()
    hf = hf_model(cfg)
    return cfg, hf, our_model(cfg, hf)


def our_logits(hf, model, ids, grid=None, pixels=None, video=False):
    pos = hf_positions(hf, ids, None if video else grid, grid if video else None)
    kwargs = {}
    if grid is not None:
        kwargs = {"pixel_values_videos": pixels, "video_grid_thw": grid} if video else {"pixel_values": pixels, "image_grid_thw": grid}
    with torch.no_grad():
        return model(ids[None], pos[:, None], **kwargs)[0]


def test_text_only_batch(models):
    _, hf, ours = models
    ids = torch.randint(0, 240, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(input_ids=ids).logits
        got = ours(ids, torch.arange(20).expand(3, 2, 20))
    torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize(
    "grids",
    [[[1, 4, 6]], [[1, 6, 4], [1, 10, 18], [1, 4, 8]]],
    ids=["one-image", "three-non-square-images"],
)
def test_images(models, grids):
    _, hf, ours = models
    ids, grid, pixels = sample(grids, seed=2)
    torch.testing.assert_close(our_logits(hf, ours, ids, grid, pixels), hf_logits(hf, ids, grid, pixels), **TOL)


def test_video(models):
    _, hf, ours = models
    ids, grid, pixels = sample([[3, 4, 6]], seed=3, video=True)  # temporal grid 3 = six frames
    got = our_logits(hf, ours, ids, grid, pixels, video=True)
    torch.testing.assert_close(got, hf_logits(hf, ids, grid, pixels, video=True), **TOL)


def test_deepstack_and_position_grid_matter(models):
    """The parity above would hide nothing if taps or the grid did nothing: zeroing them moves the logits."""
    cfg, hf, ours = models
    ids, grid, pixels = sample([[1, 6, 4]], seed=4)
    base = our_logits(hf, ours, ids, grid, pixels)
    for name in ("vision.deepstack_mergers.2.mlp.linear_fc2.bias", "vision.pos_embed.weight"):
        param = dict(ours.named_parameters())[name]
        saved = param.detach().clone()
        with torch.no_grad():
            param.zero_()
        moved = (our_logits(hf, ours, ids, grid, pixels) - base).abs().max()
        with torch.no_grad():
            param.copy_(saved)
        assert moved > 1e-3, name


def test_packed_samples_equal_each_alone(models):
    _, hf, ours = models
    samples = [sample([[1, 4, 6]], seed=4), sample([], seed=5, text=9), sample([[1, 6, 8], [1, 4, 4]], seed=6)]
    ids = torch.cat([s[0] for s in samples])
    cu = torch.tensor([0] + [len(s[0]) for s in samples]).cumsum(0)
    grids = torch.cat([s[1] for s in samples if s[1] is not None])
    pixels = torch.cat([s[2] for s in samples if s[2] is not None])
    pos = torch.cat([hf_positions(hf, *s[:2]) for s in samples], dim=1)
    with torch.no_grad():
        got = ours(ids[None], pos[:, None], pixel_values=pixels, image_grid_thw=grids, packed_seq_params=packed_seq_params(cu))[0]
    for (s_ids, s_grid, s_pix), start, end in zip(samples, cu[:-1].tolist(), cu[1:].tolist()):
        torch.testing.assert_close(got[start:end], hf_logits(hf, s_ids, s_grid, s_pix), **TOL)


def test_loss_is_per_token_cross_entropy(models):
    _, hf, ours = models
    ids, grid, pixels = sample([[1, 4, 6]], seed=7)
    labels = torch.roll(ids, -1)
    pos = hf_positions(hf, ids, grid)
    with torch.no_grad():
        loss = ours(ids[None], pos[:, None], labels=labels[None], pixel_values=pixels, image_grid_thw=grid)
    expected = torch.nn.functional.cross_entropy(hf_logits(hf, ids, grid, pixels), labels, reduction="none")
    torch.testing.assert_close(loss[0], expected, **TOL)


def test_tied_embeddings():
    cfg = tiny_config(tied=True)
    hf = hf_model(cfg, seed=8)
    ours = our_model(cfg, hf)
    ids, grid, pixels = sample([[1, 10, 18]], seed=9, text=30)
    torch.testing.assert_close(our_logits(hf, ours, ids, grid, pixels), hf_logits(hf, ids, grid, pixels), **TOL)


def _hf_meta(cfg):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from megatron_vlm.models.qwen3_vl.config import to_hf_config

    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**to_hf_config(cfg)))
    return model.state_dict(), sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["debug", "2B", "4B", "8B", "32B"])
def test_meta_model_matches_hf_shapes_and_count(name):
    from megatron_vlm.checkpoint.hf_names_qwen3_vl import hf_to_mcore
    from megatron_vlm.models.qwen3_vl.config import flavor
    from megatron_vlm.models.qwen3_vl.model import Qwen3VLModel

    cfg = flavor(name)
    hf_state, hf_count = _hf_meta(cfg)
    with torch.device("meta"):
        ours = Qwen3VLModel(cfg, attention_backend="torch", perform_initialization=False)
    our_shapes = {n: tuple(p.shape) for n, p in ours.named_parameters()}
    assert our_shapes == {n: tuple(t.shape) for n, t in hf_to_mcore(hf_state, cfg).items()}
    assert sum(p.numel() for p in ours.parameters()) == hf_count
