"""Our Qwen2.5-VL (local spec, one rank) gives HF's logits: text, images, video, packed samples, YaRN.

Tolerance: float32 with random weights, logits of std ~0.2. The two models compute the same
sums in a different order (fused QKV/gate-up matmuls, SDPA vs eager softmax), which moves the
logits by ~1e-7; we allow 2e-5 absolute. A wrong layout (rope axis, qkv grouping, window order,
a crossed sample boundary) moves them by 1e-3 or more.
"""

from __future__ import annotations

import pytest
import torch

from megatron_vlm.models.common.attention import packed_seq_params
from megatron_vlm.models.qwen2_5_vl.config import RopeScaling
from megatron_vlm.models.qwen2_5_vl.position_ids import mrope_position_ids, packed_mrope_position_ids
from tests.qwen_utils import END, IMAGE, START, VIDEO, hf_model, our_model, single_rank_fixture, tiny_config

TOL = dict(rtol=0, atol=2e-5)
IDS = dict(image_token_id=IMAGE, video_token_id=VIDEO)


@pytest.fixture(scope="module", autouse=True)
def _megatron():
    yield from single_rank_fixture()


@pytest.fixture(scope="module")
def models():
    cfg = tiny_config()
    hf = hf_model(cfg)
    return cfg, hf, our_model(cfg, hf)


def sample(grids: list[list[int]], seed: int, video: bool = False, text: int = 4):
    """Token ids with text between vision blocks, and random patches for the grids."""
    gen = torch.Generator().manual_seed(seed)
    pad = VIDEO if video else IMAGE
    ids = torch.randint(0, 240, (text,), generator=gen).tolist()
    for t, h, w in grids:
        ids += [START] + [pad] * (t * h * w // 4) + [END] + torch.randint(0, 240, (text,), generator=gen).tolist()
    grid = torch.tensor(grids, dtype=torch.long) if grids else None
    pixels = torch.randn(int(grid.prod(-1).sum()), 1176, generator=gen) if grids else None
    return torch.tensor(ids), grid, pixels


def hf_logits(hf, ids, grid=None, pixels=None, video=False):
    kind = "video" if video else "image"
    kwargs = {}
    if grid is not None:
        kwargs = {f"pixel_values{'_videos' if video else ''}": pixels, f"{kind}_grid_thw": grid}
        kwargs["mm_token_type_ids"] = ((ids == IMAGE) * 1 + (ids == VIDEO) * 2).int()[None]
    with torch.no_grad():
        return hf(input_ids=ids[None], **kwargs).logits[0]


def our_logits(model, ids, grid=None, pixels=None, video=False):
    pos, _ = mrope_position_ids(ids, None if video else grid, grid if video else None, **IDS)
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
    [
        [[1, 4, 6]],  # one image
        [[1, 6, 4], [1, 10, 18], [1, 4, 8]],  # three non-square; 5x9 merged tokens span 2x3 windows
    ],
    ids=["one-image", "three-images"],
)
def test_images(models, grids):
    _, hf, ours = models
    ids, grid, pixels = sample(grids, seed=2)
    torch.testing.assert_close(our_logits(ours, ids, grid, pixels), hf_logits(hf, ids, grid, pixels), **TOL)


def test_video(models):
    _, hf, ours = models
    ids, grid, pixels = sample([[3, 4, 6]], seed=3, video=True)  # temporal grid 3 = six frames
    got = our_logits(ours, ids, grid, pixels, video=True)
    torch.testing.assert_close(got, hf_logits(hf, ids, grid, pixels, video=True), **TOL)


def test_packed_samples_equal_each_alone(models):
    _, hf, ours = models
    samples = [sample([[1, 4, 6]], seed=4), sample([], seed=5, text=9), sample([[1, 6, 8], [1, 4, 4]], seed=6)]
    ids = torch.cat([s[0] for s in samples])
    lengths = [len(s[0]) for s in samples]
    cu = torch.tensor([0] + lengths).cumsum(0)
    grids = torch.cat([s[1] for s in samples if s[1] is not None])
    pixels = torch.cat([s[2] for s in samples if s[2] is not None])
    pos = packed_mrope_position_ids(ids, cu, grids, **IDS)
    with torch.no_grad():
        got = ours(ids[None], pos[:, None], pixel_values=pixels, image_grid_thw=grids, packed_seq_params=packed_seq_params(cu))[0]
    for (s_ids, s_grid, s_pix), start, end in zip(samples, cu[:-1].tolist(), cu[1:].tolist()):
        torch.testing.assert_close(got[start:end], hf_logits(hf, s_ids, s_grid, s_pix), **TOL)


def test_loss_is_per_token_cross_entropy(models):
    _, hf, ours = models
    ids, grid, pixels = sample([[1, 4, 6]], seed=7)
    labels = torch.roll(ids, -1)
    pos, _ = mrope_position_ids(ids, grid, **IDS)
    with torch.no_grad():
        loss = ours(ids[None], pos[:, None], labels=labels[None], pixel_values=pixels, image_grid_thw=grid)
    expected = torch.nn.functional.cross_entropy(hf_logits(hf, ids, grid, pixels), labels, reduction="none")
    torch.testing.assert_close(loss[0], expected, **TOL)


@pytest.mark.parametrize(
    "text",
    [
        dict(rope_theta=4e6),
        dict(rope_theta=4e6, rope_scaling=RopeScaling(type="yarn", factor=4.0, original_max_position_embeddings=16)),
    ],
    ids=["theta-4e6", "yarn"],
)
def test_rope_theta_and_yarn(text):
    cfg = tiny_config(**text)
    hf = hf_model(cfg, seed=8)
    ours = our_model(cfg, hf)
    ids, grid, pixels = sample([[1, 10, 18]], seed=9, text=30)
    torch.testing.assert_close(our_logits(ours, ids, grid, pixels), hf_logits(hf, ids, grid, pixels), **TOL)
