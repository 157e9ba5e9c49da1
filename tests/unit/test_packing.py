"""Packed sequences: no attention or label crosses a sample boundary; mRoPE restarts per sample."""

from __future__ import annotations

import random
import types

import pytest
import torch

from megatron_vlm.data.packing import IGNORE_INDEX, Sample, choose_best_fit, pack, packing_efficiency
from megatron_vlm.data.tokens import encode_instance, load_tokenizer
from megatron_vlm.models.family import get_family
from megatron_vlm.models.qwen2_5_vl.position_ids import mrope_position_ids
from tests.shards_fixtures import one_thread  # noqa: F401  (autouse fixture)

QWEN = get_family("qwen2_5_vl")


def _samples(tok_dir, n, seed=0):
    tokenizer = load_tokenizer(tok_dir)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        grids = [[1, 2 * rng.randint(1, 4), 2 * rng.randint(1, 5)] for _ in range(rng.randint(0, 3))]
        image_tokens = [h * w // 4 for _, h, w in grids]
        q = " ".join(rng.choice(["revenue", "page", "table", "2021", "total", "what"]) for _ in range(rng.randint(2, 12)))
        a = str(rng.randint(0, 10**rng.randint(1, 6)))
        enc = encode_instance(tokenizer, QWEN, q + "?", a, image_tokens)
        pixels = torch.randn(sum(h * w for _, h, w in grids), QWEN.image.patch_dim)
        grid_t = torch.tensor(grids, dtype=torch.int64).reshape(-1, 3)
        out.append(Sample(f"s{i}", rng.choice(["extract-single", "reasoning"]), enc.input_ids, enc.target_mask, pixels, grid_t))
    return out


def test_best_fit_hand_example():
    # longest (8) first; 2 left: 5 and 3 do not fit, 2 does.
    assert choose_best_fit([5, 3, 8, 2], 10) == [2, 3]
    assert choose_best_fit([4, 4, 4], 10) == [0, 1]
    assert choose_best_fit([11, 3], 10) == [1]
    assert choose_best_fit([], 10) == []


def test_best_fit_rule_against_a_direct_reading():
    """Longest first, then repeatedly the longest remaining that fits: checked on random buffers."""
    rng = random.Random(0)
    for _ in range(300):
        lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 12))]
        cap = rng.randint(30, 120)
        got = choose_best_fit(lengths, cap)
        assert len(set(got)) == len(got) and sum(lengths[i] for i in got) <= cap
        left = [i for i in range(len(lengths)) if i not in got]
        space = cap - sum(lengths[i] for i in got)
        assert all(lengths[i] > space for i in left)  # nothing else fits
        for a, b in zip(got, got[1:]):  # chosen in non-increasing length
            assert lengths[a] >= lengths[b]


@pytest.mark.parametrize("pad_multiple, length_multiple", [(1, None), (4, None), (1, 16), (4, 32)])
def test_no_crossing_and_mrope_per_sample(qwen_tokenizer_dir, pad_multiple, length_multiple):
    samples = _samples(qwen_tokenizer_dir, 7)
    max_length = 4 * max(len(s) for s in samples)
    max_length += -max_length % (length_multiple or pad_multiple)
    chosen = choose_best_fit([len(s) + -len(s) % pad_multiple for s in samples], max_length)
    picked = [samples[i] for i in chosen]
    batch = pack(picked, QWEN, max_length, pad_multiple, length_multiple=length_multiple)

    tokens, labels = batch["tokens"][0], batch["labels"][0]
    cu = batch["cu_seqlens"].tolist()
    used = sum(len(s) + -len(s) % pad_multiple for s in picked)
    # Fixed: always max_length. Variable: the used length rounded up to length_multiple.
    expected = max_length if length_multiple is None else used + -used % length_multiple
    assert cu[0] == 0 and cu[-1] == expected == tokens.shape[0] and batch["cu_seqlens"].dtype == torch.int32
    assert batch["labels"].shape == batch["loss_mask"].shape == (1, expected)
    assert batch["position_ids"].shape == (3, 1, expected)
    if length_multiple is not None:
        assert expected <= max_length and expected % length_multiple == 0 and expected - used < length_multiple
    assert all((b - a) % pad_multiple == 0 for a, b in zip(cu, cu[1:]))
    grids = iter(batch["image_grid_thw"])
    for k, s in enumerate(picked):
        a, b, n = cu[k], cu[k + 1], len(s)
        assert b - a >= n
        # The sample's tokens fill the start of its own sub-sequence; the rest of it is padding.
        assert torch.equal(tokens[a : a + n], s.input_ids)
        assert (tokens[a + n : b] == QWEN.tokens.pad).all()
        # Labels computed on the sample alone: next token where it is an answer target.
        alone = torch.full((n,), IGNORE_INDEX)
        for i in range(n - 1):
            if s.target_mask[i + 1]:
                alone[i] = s.input_ids[i + 1]
        assert torch.equal(labels[a : a + n], alone)
        assert (labels[a + n : b] == IGNORE_INDEX).all() and labels[b - 1] == IGNORE_INDEX
        # mRoPE ids of the sub-sequence equal the model's reference function on the sample alone.
        own = torch.stack([next(grids) for _ in range(s.image_grid_thw.shape[0])]) if s.image_grid_thw.numel() else None
        ref, _ = mrope_position_ids(s.input_ids, own)
        assert torch.equal(batch["position_ids"][:, 0, a : a + n], ref)
    assert (labels[cu[len(picked)] :] == IGNORE_INDEX).all()
    assert torch.equal(batch["loss_mask"][0], (labels != IGNORE_INDEX).float())
    tail = ["padding"] if cu[len(picked)] < expected else []
    assert batch["sample_ids"] == [s.id for s in picked] + tail and batch["sample_tasks"][-1] == (tail or [picked[-1].task])[0]
    assert len(batch["sample_tasks"]) == len(cu) - 1 == len(batch["sample_num_tokens"])
    assert batch["pixel_values"].shape[0] == sum(s.pixel_values.shape[0] for s in picked)
    assert packing_efficiency(batch) == sum(len(s) for s in picked) / expected


def _text_sample(name: str, n: int) -> Sample:
    ids = torch.arange(100, 100 + n)
    return Sample(name, "reasoning", ids, ids >= 100 + n - 2, torch.zeros(0, QWEN.image.patch_dim), torch.zeros(0, 3, dtype=torch.int64))


def test_variable_length_layout_and_efficiency_by_hand():
    # Samples of 5 and 3 tokens, pad_multiple 2: sub-sequences of 6 and 4 (10 tokens); variable
    # length with multiple 8 ends the sequence at 16 (a 6-token padding tail); fixed at 64.
    a, b = _text_sample("a", 5), _text_sample("b", 3)
    var = pack([a, b], QWEN, 64, pad_multiple=2, length_multiple=8)
    assert var["cu_seqlens"].tolist() == [0, 6, 10, 16] and var["tokens"].shape == (1, 16)
    assert var["sample_ids"] == ["a", "b", "padding"] and var["sample_num_tokens"] == [5, 3, 0]
    assert (var["tokens"][0, 10:] == QWEN.tokens.pad).all() and var["position_ids"][0, 0, 10:].tolist() == list(range(6))
    assert packing_efficiency(var) == 8 / 16
    fixed = pack([a, b], QWEN, 64, pad_multiple=2)
    assert fixed["cu_seqlens"].tolist() == [0, 6, 10, 64] and packing_efficiency(fixed) == 8 / 64
    # Same samples, same tokens, labels and positions: the variable sequence is the fixed one cut short.
    for key in ("tokens", "labels", "loss_mask"):
        assert torch.equal(var[key], fixed[key][:, :16]), key
    assert torch.equal(var["position_ids"], fixed["position_ids"][:, :, :16])
    # A pack that ends on a multiple has no padding tail; the length is capped at max_length.
    full = pack([_text_sample("c", 16)], QWEN, 64, pad_multiple=2, length_multiple=8)
    assert full["cu_seqlens"].tolist() == [0, 16] and full["sample_ids"] == ["c"] and packing_efficiency(full) == 1.0
    capped = pack([_text_sample("d", 20)], QWEN, 24, pad_multiple=2, length_multiple=16)
    assert capped["cu_seqlens"].tolist() == [0, 20, 24]
    with pytest.raises(ValueError, match="length_multiple 6 is not a multiple of pad_multiple 4"):
        pack([a], QWEN, 64, pad_multiple=4, length_multiple=6)


def test_block_diagonal_attention_equals_each_sample_alone(qwen_tokenizer_dir):
    """Causal attention masked by cu_seqlens gives each sample the output it has alone."""
    samples = _samples(qwen_tokenizer_dir, 3, seed=1)
    max_length = sum(len(s) for s in samples) + 5
    batch = pack(samples, QWEN, max_length)
    torch.manual_seed(0)
    emb = torch.randn(152000, 4)
    cu = batch["cu_seqlens"].tolist()
    seg = torch.zeros(max_length, dtype=torch.long)
    for k, (a, b) in enumerate(zip(cu, cu[1:])):
        seg[a:b] = k
    x = emb[batch["tokens"][0]]
    mask = (seg[:, None] == seg[None, :]) & torch.ones(max_length, max_length, dtype=torch.bool).tril()
    packed_out = torch.softmax((x @ x.T).masked_fill(~mask, float("-inf")), -1) @ x
    for k, s in enumerate(samples):
        xs = emb[s.input_ids]
        causal = torch.ones(len(s), len(s), dtype=torch.bool).tril()
        alone = torch.softmax((xs @ xs.T).masked_fill(~causal, float("-inf")), -1) @ xs
        torch.testing.assert_close(packed_out[cu[k] : cu[k] + len(s)], alone)


def test_overfull_pack_is_refused(qwen_tokenizer_dir):
    samples = _samples(qwen_tokenizer_dir, 2)
    with pytest.raises(ValueError, match="more than"):
        pack(samples, QWEN, len(samples[0]) + len(samples[1]) - 1)


@pytest.mark.parametrize("overrides, message", [
    (["parallel.cp=4", "data.seq_length_multiple=4"], "must be a multiple of 8"),  # 2 x cp
    (["parallel.cp=2", "parallel.tp=8", "parallel.sequence_parallel=true", "data.seq_length_multiple=8"],
     "must be a multiple of 16"),  # cp x tp
])
def test_trainer_refuses_variable_lengths_the_layout_cannot_split(overrides, message):
    from megatron_vlm.training.config import RecipeError, load_recipe
    from megatron_vlm.training.loop import build_data

    recipe = load_recipe(None, ["train.data_source=synthetic", "data.max_seq_length=256", *overrides])
    with pytest.raises(RecipeError, match=message):
        build_data(recipe, None, 0, 1)
    fixed = load_recipe(None, ["train.data_source=synthetic", "data.max_seq_length=256", "data.variable_seq_length=false",
                                *overrides])
    provider = types.SimpleNamespace(vocab_size=lambda recipe: 256, family=QWEN)
    assert next(build_data(fixed, provider, 0, 1))["tokens"].shape == (1, fixed.data.max_seq_length)
