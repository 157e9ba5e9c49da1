"""The MFU FLOPs model (training.flops) against hand-computed counts for tiny shapes, and its matmul part against
torch's FLOP counter on our model's forward + backward for every choice of frozen parts (so the formula's matmul
weights are exactly the model's matrices, and its frozen-part multipliers what autograd really runs)."""

from __future__ import annotations

import pytest

from megatron_vlm.training.flops import FlopsModel, LlmShape, VitShape

# LLM: 1 layer, hidden 4, 2 query heads + 1 kv head of dim 2, SwiGLU width 6, vocab 10.
LLM = LlmShape(num_layers=1, hidden_size=4, num_heads=2, num_kv_heads=1, head_dim=2, ffn_hidden_size=6, vocab_size=10)
# ViT: 2 blocks (1 full attention), width 4, SwiGLU 6, patches of 12 values, 2x2 merge, windows of 2x2 merged tokens.
VIT = VitShape(depth=2, hidden_size=4, intermediate_size=6, patch_dim=12, spatial_merge_size=2, window=2,
               num_full_blocks=1, out_hidden_size=4)


def test_llm_counts_real_tokens_and_causal_pairs_per_sample():
    # weights per token: q 4x4=16, k 4x2=8, v 4x2=8, o 4x4=16, gate/up/down 3x4x6=72, LM head 4x10=40 -> 160
    assert LLM.matmul_weights_per_token() == 160
    # samples of 3 and 5 real tokens: 8 tokens; causal pairs 3*4/2 + 5*6/2 = 6 + 15 = 21
    # matmuls 6 * 160 * 8 = 7680; attention 3 (fwd+bwd) * 4 * 1 layer * 2 heads * 2 dims * 21 = 1008
    assert FlopsModel(LLM).llm_flops([3, 5]) == 7680 + 1008
    # one sample of 8 tokens: same matmuls, 36 pairs (not 21): attention follows the samples, not the pack
    assert FlopsModel(LLM).llm_flops([8]) == 7680 + 48 * 36
    assert FlopsModel(LLM).step_flops([]) == 0


def test_vit_counts_patches_windows_and_what_the_recipe_freezes():
    # per patch: 2 blocks x (qkv 3x4x4=48 + proj 4x4=16 + SwiGLU 3x4x6=72 = 136) = 272; patch embedding 12x4 = 48
    assert VIT.block_weights_per_patch() == 272
    # per merged token: 2x2 patches joined (16 wide): 16x16 + 16x4 = 320
    assert VIT.merger_weights_per_token() == 320
    # image [1, 6, 4]: 24 patches, merged grid 3x2 = 6 tokens. Full attention: 24^2 = 576 pairs.
    # Windows of 2x2 merged: a 2x2 window (16 patches) and a 1x2 one (8 patches): 256 + 64 = 320 pairs.
    assert VIT.attention_pairs([1, 6, 4]) == (576, 320)
    grids = [[1, 6, 4]]
    pairs = 1 * 576 + 1 * 320  # one full-attention block, one window block
    # all trained: blocks 6x, patch embedding 4x (pixels need no gradient), merger 6x, attention 3x forward
    trained = 6 * 272 * 24 + 4 * 48 * 24 + 6 * 320 * 6 + 3 * 4 * 4 * pairs
    assert trained == 39168 + 4608 + 11520 + 43008
    assert FlopsModel(LLM, VIT).vit_flops(grids) == trained
    # frozen tower, trained merger: tower forward only; merger all three (its norm's weight needs the input grad)
    frozen_vit = 2 * 272 * 24 + 2 * 48 * 24 + 6 * 320 * 6 + 1 * 4 * 4 * pairs
    assert FlopsModel(LLM, VIT, vit_trained=False).vit_flops(grids) == frozen_vit == 41216
    # trained tower, frozen merger: merger forward + input grad
    frozen_merger = 6 * 272 * 24 + 4 * 48 * 24 + 4 * 320 * 6 + 3 * 4 * 4 * pairs
    assert FlopsModel(LLM, VIT, merger_trained=False).vit_flops(grids) == frozen_merger
    # both frozen: everything forward only
    frozen = 2 * 272 * 24 + 2 * 48 * 24 + 2 * 320 * 6 + 1 * 4 * 4 * pairs
    assert FlopsModel(LLM, VIT, vit_trained=False, merger_trained=False).vit_flops(grids) == frozen == 33536
    # the whole step: LLM on the samples plus ViT on every image (a second image adds the same again)
    model = FlopsModel(LLM, VIT)
    assert model.step_flops([3, 5], grids * 2) == 7680 + 1008 + 2 * trained


def test_windows_tile_from_the_top_left_with_smaller_edge_windows():
    vit = VitShape(depth=1, hidden_size=4, intermediate_size=4, patch_dim=12, spatial_merge_size=2, window=4,
                   num_full_blocks=0, out_hidden_size=4)
    # merged grid 5x9 with 4x4 windows: rows [4, 1], cols [4, 4, 1] -> each window r*c merged tokens, x4 patches
    windows = [4 * r * c for r in (4, 1) for c in (4, 4, 1)]
    assert vit.attention_pairs([1, 10, 18]) == ((10 * 18) ** 2, sum(n * n for n in windows))
    assert vit.attention_pairs([2, 10, 18]) == (2 * (10 * 18) ** 2, 2 * sum(n * n for n in windows))  # per frame


def test_vit_geometry_from_the_published_config():
    from megatron_vlm.models.qwen2_5_vl.config import flavor

    # 7B: window 112 px / 2 merge / 14 px patches = 4 merged tokens; full attention in blocks 7, 15, 23, 31
    big = FlopsModel.from_qwen(flavor("7B"), freeze_vision=True)
    assert (big.vit.window, big.vit.num_full_blocks, big.vit_trained, big.merger_trained) == (4, 4, False, True)
    assert (big.llm.num_layers, big.llm.head_dim, big.vit.patch_dim) == (28, 128, 1176)


def test_gpt_recipe_has_no_vision_part():
    from megatron_vlm.training.config import load_recipe
    from megatron_vlm.training.flops import flops_model_for
    from megatron_vlm.training.providers import get_provider

    recipe = load_recipe(None, ["model.kind=gpt", "model.flavor=debug"])
    model = flops_model_for(recipe, get_provider(recipe))
    # debug GPT: 2 layers, hidden 64, 4 heads (dim 16), 2 kv groups, SwiGLU 128, vocab 256
    per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128
    assert model.vit is None and model.llm.matmul_weights_per_token() == 2 * per_layer + 64 * 256
    assert model.step_flops([4], [[1, 2, 2]]) == pytest.approx(model.llm_flops([4]))


@pytest.fixture(scope="module")
def megatron_one_rank():
    from tests.qwen_utils import single_rank_fixture

    yield from single_rank_fixture()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("freeze_vision,freeze_merger", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_flops_equal_torch_flop_counter_on_our_model(megatron_one_rank, family, freeze_vision, freeze_merger):
    """What autograd really runs: a frozen tower costs its forward only, a trained one all three matmuls.
    Qwen3-VL: plain-MLP blocks, no windows, and the DeepStack mergers (frozen with the merger)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from megatron_vlm.models.common.attention import packed_seq_params
    from megatron_vlm.training.providers import is_merger_parameter
    from tests.qwen_utils import IMAGE, VIDEO

    if family == "qwen3_vl":
        from megatron_vlm.models.qwen3_vl.model import Qwen3VLModel as Model
        from megatron_vlm.models.qwen3_vl.position_ids import packed_mrope_position_ids
        from tests.qwen3_utils import sample, tiny_config
    else:
        from megatron_vlm.models.qwen2_5_vl.model import Qwen2_5_VLModel as Model
        from megatron_vlm.models.qwen2_5_vl.position_ids import packed_mrope_position_ids
        from tests.qwen_utils import tiny_config
        from tests.unit.test_qwen_model import sample

    cfg = tiny_config()
    model = Model(cfg, spec="local", attention_backend="torch").train()
    for name, param in model.named_parameters():  # as the trainer's provider freezes them
        if name.startswith("vision."):
            param.requires_grad_(not (freeze_merger if is_merger_parameter(name) else freeze_vision))
    samples = [sample([[1, 4, 6]], seed=4), sample([], seed=5, text=9), sample([[1, 6, 8], [1, 10, 18]], seed=6)]
    ids = torch.cat([s[0] for s in samples])
    lengths = [len(s[0]) for s in samples]
    cu = torch.tensor([0, *lengths]).cumsum(0)
    grids = torch.cat([s[1] for s in samples if s[1] is not None])
    pixels = torch.cat([s[2] for s in samples if s[2] is not None])
    positions = packed_mrope_position_ids(ids, cu, grids, image_token_id=IMAGE, video_token_id=VIDEO)
    counter = FlopCounterMode(display=False)
    with counter:
        loss = model(ids[None], positions[:, None], labels=torch.roll(ids, -1)[None], pixel_values=pixels,
                     image_grid_thw=grids, packed_seq_params=packed_seq_params(cu))
        loss.sum().backward()
    measured = sum(n for op, n in counter.get_flop_counts()["Global"].items() if str(op) in ("aten.mm", "aten.addmm"))
    parts = FlopsModel.from_qwen(cfg, freeze_vision, freeze_merger).parts(lengths, grids.tolist())
    assert measured == parts["llm_matmul"] + parts["vit_matmul"]
