"""The context-parallel split of a packed micro-batch, against hand-computed layouts and
Transformer Engine's THD CP convention (per-rank real-token counts derived the way TE does)."""

from __future__ import annotations

import pytest
import torch

from megatron_vlm.models.family import get_family
from megatron_vlm.parallel.context_parallel import cp_partition, split_batch_for_cp, unsplit

QWEN = get_family("qwen2_5_vl")
IDS = dict(image_token_id=QWEN.tokens.image_pad, video_token_id=QWEN.tokens.video_pad)

IMG = QWEN.tokens.image_pad


def test_hand_computed_partition_with_padding_tail():
    # Sub-sequences of 5 and 3 real tokens, then an 8-token padding tail; T=16, CP=2 (4 chunks).
    # 5 -> padded 8, 3 -> padded 4, so the tail shrinks to 4 and the total stays 16.
    # Padded positions: seq0 0..7 (real 0..4), seq1 8..11 (real 8..10 <- tokens 5..7),
    # tail 12..15 (<- tokens 8..11). Rank 0 keeps chunks 0 and 3, rank 1 chunks 1 and 2.
    part = cp_partition(torch.tensor([0, 5, 8, 16]), cp_size=2, trim_last=True)
    assert part.cu_seqlens.tolist() == [0, 5, 8, 12]
    assert part.cu_seqlens_padded.tolist() == [0, 8, 12, 16]
    assert part.source_index[0].tolist() == [0, 1, -1, -1, 5, -1, 8, 11]
    assert part.source_index[1].tolist() == [2, 3, 4, -1, 6, 7, 9, 10]
    assert part.local_cu_seqlens_padded().tolist() == [0, 4, 6, 8]
    assert part.local_cu_seqlens(0).tolist() == [0, 2, 3, 5]
    assert part.local_cu_seqlens(1).tolist() == [0, 3, 5, 7]


def test_full_pack_keeps_every_token_and_grows():
    # The last sub-sequence is real: nothing may be dropped; 5 -> 8 and 6 -> 8, total 16 > T=11.
    part = cp_partition(torch.tensor([0, 5, 11]), cp_size=2, trim_last=False)
    assert part.cu_seqlens.tolist() == [0, 5, 11]
    assert part.cu_seqlens_padded.tolist() == [0, 8, 16]
    # seq1 padded positions 8..15 hold tokens 5..10 then 2 pads; chunks of 2.
    assert part.source_index[0].tolist() == [0, 1, -1, -1, 5, 6, -1, -1]
    assert part.source_index[1].tolist() == [2, 3, 4, -1, 7, 8, 9, 10]


def _te_real_counts(cu_seqlens, cu_seqlens_padded, cp, rank):
    """Per-sub-sequence real tokens on a rank, the way TE derives them from the two global
    boundary tensors: each half holds padded/(2cp) slots, real ones first."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    half = (cu_seqlens_padded[1:] - cu_seqlens_padded[:-1]) // (2 * cp)
    first = (lengths - rank * half).clamp(min=0).minimum(half)
    second = (lengths - (2 * cp - 1 - rank) * half).clamp(min=0).minimum(half)
    return (first + second).tolist()


@pytest.mark.parametrize("cp", [1, 2, 3, 4])
@pytest.mark.parametrize("bounds", [[0, 1, 2, 30, 64], [0, 7, 19, 20, 33, 64], [0, 64], [0, 3, 61]])
def test_partition_properties(cp, bounds):
    cu = torch.tensor(bounds)
    part = cp_partition(cu, cp, trim_last=True)
    total_padded = int(part.cu_seqlens_padded[-1])
    assert total_padded % (2 * cp) == 0
    assert part.source_index.shape == (cp, total_padded // cp)
    real = part.source_index[part.source_index >= 0]
    # every kept token appears exactly once; only the tail's end may be dropped
    assert real.unique().numel() == real.numel()
    kept = int(part.cu_seqlens[-1])
    assert sorted(real.tolist()) == list(range(kept))
    assert kept >= bounds[-2]  # no real (non-tail) sub-sequence lost a token
    lp = part.local_cu_seqlens_padded().tolist()
    for rank in range(cp):
        src = part.source_index[rank]
        counts = [int((src[a:b] >= 0).sum()) for a, b in zip(lp[:-1], lp[1:])]
        assert counts == _te_real_counts(part.cu_seqlens, part.cu_seqlens_padded, cp, rank)
        # within each half, real tokens come first and are consecutive in the original order
        for a, b in zip(lp[:-1], lp[1:]):
            for half in (src[a : (a + b) // 2], src[(a + b) // 2 : b]):
                real_half = half[half >= 0]
                assert (half[: real_half.numel()] >= 0).all()
                if real_half.numel() > 1:
                    assert (real_half.diff() == 1).all()


def test_local_length_multiple_for_sequence_parallel():
    # CP=2 with TP=3 sequence parallelism: T_pad must be a multiple of lcm(4, 6) = 12.
    part = cp_partition(torch.tensor([0, 5, 8, 16]), 2, trim_last=True, local_multiple=3)
    assert part.cu_seqlens_padded.tolist() == [0, 8, 12, 24]  # tail padded 8 -> 12, nothing trimmed
    assert part.cu_seqlens.tolist() == [0, 5, 8, 16]
    assert part.local_len == 12
    part = cp_partition(torch.tensor([0, 5, 11]), 2, local_multiple=3)
    assert part.cu_seqlens_padded.tolist() == [0, 8, 24]  # 8 + 12 = 20 -> 24


def test_load_balance_chunks_are_mirrored():
    part = cp_partition(torch.tensor([0, 32]), cp_size=4)
    # 8 chunks of 4: rank r holds chunk r and chunk 7-r
    for r in range(4):
        assert part.source_index[r].tolist() == [*range(4 * r, 4 * r + 4), *range(4 * (7 - r), 4 * (8 - r))]


def _batch():
    # Sample A: 3 text, image of 6 pad tokens, 2 text (11 tokens); sample B: 5 text; tail: 8 pads.
    tokens = torch.tensor([[1, 2, 3] + [IMG] * 6 + [4, 5] + [6, 7, 8, 9, 10] + [0] * 8])
    T = tokens.shape[1]
    labels = torch.arange(T)[None] + 1000
    loss_mask = torch.zeros(1, T)
    loss_mask[0, 9:16] = 1
    position_ids = torch.stack([torch.arange(T), torch.arange(T) + 100, torch.arange(T) + 200])[:, None]
    return {
        "tokens": tokens,
        "labels": labels,
        "loss_mask": loss_mask,
        "position_ids": position_ids,
        "cu_seqlens": torch.tensor([0, 11, 16, 24], dtype=torch.int32),
        "pixel_values": torch.randn(24, QWEN.image.patch_dim),
        "image_grid_thw": torch.tensor([[1, 4, 6]]),
    }


def test_split_batch_shapes_pads_and_roundtrip():
    batch = _batch()
    cp = 2
    shards = [split_batch_for_cp(batch, cp, r, **IDS) for r in range(cp)]
    T = batch["tokens"].shape[1]
    for s in shards:
        assert s["tokens"].shape == (1, T // cp)
        assert s["position_ids"].shape == (3, 1, T // cp)
        assert s["cu_seqlens_padded"].tolist() == [0, 12, 20, 24]
        assert s["pixel_values"] is batch["pixel_values"]
        pad = s["cp_source_index"] < 0
        assert (s["labels"][0, pad] == -100).all() and (s["loss_mask"][0, pad] == 0).all()
        assert (s["tokens"][0, pad] == 0).all() and (s["position_ids"][:, 0, pad] == 0).all()
    part = shards[0]["cp_partition"]
    kept = 20  # the 8-token tail lost the 4 tokens the other sub-sequences needed as padding
    assert part.cu_seqlens.tolist() == [0, 11, 16, 20]
    for key, dim in (("tokens", 1), ("labels", 1), ("loss_mask", 1), ("position_ids", 2)):
        back = unsplit([s[key] for s in shards], part, dim=dim, fill=-7)
        assert torch.equal(back.narrow(dim, 0, kept), batch[key].narrow(dim, 0, kept)), key
        assert (back.narrow(dim, kept, T - kept) == -7).all(), key
    # Image rows: the 6 image tokens are tokens 3..8 = rows 0..5; seq A padded to 12, chunks of 3:
    # rank 0 holds tokens 0,1,2 and 9,10,pad; rank 1 holds 3,4,5 and 6,7,8 -> rows 0..5.
    assert shards[0]["image_token_rows"].tolist() == []
    assert shards[1]["image_token_rows"].tolist() == [0, 1, 2, 3, 4, 5]


def test_image_rows_follow_token_order_across_ranks():
    batch = _batch()
    shards = [split_batch_for_cp(batch, 3, r, **IDS) for r in range(3)]
    rows = torch.cat([s["image_token_rows"] for s in shards])
    assert sorted(rows.tolist()) == list(range(6))
    for s in shards:
        local_img = (s["tokens"][0] == IMG).nonzero().squeeze(1)
        src = s["cp_source_index"][local_img]
        # row = number of image tokens before the source token in the full sequence
        expected = [int((batch["tokens"][0, :i] == IMG).sum()) for i in src.tolist()]
        assert s["image_token_rows"].tolist() == expected


def test_tail_with_loss_is_not_trimmed():
    batch = _batch()
    batch["loss_mask"][0, -1] = 1.0
    s = split_batch_for_cp(batch, 2, 0, **IDS)
    assert s["cu_seqlens"].tolist() == [0, 11, 16, 24]
    assert s["cu_seqlens_padded"].tolist() == [0, 12, 20, 28]


def test_bad_cu_seqlens():
    with pytest.raises(ValueError, match="increase strictly"):
        cp_partition(torch.tensor([0, 4, 4, 8]), 2)


@pytest.mark.parametrize("cp", [2, 4])
def test_variable_length_pack_splits_without_growing_or_trimming(cp):
    """A variable-length pack (sub-sequences padded to 2*CP, length a multiple of 8*CP, not the max
    length) splits into T/CP slots per rank and unsplits to every one of its T tokens."""
    from megatron_vlm.data.packing import Sample, pack

    def sample(name, n, first):
        ids = torch.arange(first, first + n)
        return Sample(name, "reasoning", ids, ids % 3 == 0, torch.zeros(0, QWEN.image.patch_dim), torch.zeros(0, 3, dtype=torch.int64))

    batch = pack([sample("a", 13, 1), sample("b", 6, 50)], QWEN, 256, pad_multiple=2 * cp, length_multiple=8 * cp)
    T = batch["tokens"].shape[1]
    assert T < 256 and T % (8 * cp) == 0 and batch["sample_ids"][-1] == "padding"
    shares = [split_batch_for_cp(batch, cp, r, **IDS) for r in range(cp)]
    part = shares[0]["cp_partition"]
    assert part.cu_seqlens_padded.tolist() == part.cu_seqlens.tolist() == batch["cu_seqlens"].tolist()
    for s in shares:
        assert s["tokens"].shape == (1, T // cp)
    for key, dim in (("tokens", 1), ("labels", 1), ("loss_mask", 1), ("position_ids", 2)):
        assert torch.equal(unsplit([s[key] for s in shares], part, dim=dim), batch[key]), key
