"""Assignment of images to CP ranks (balanced by patch count) and embedding placement."""

from __future__ import annotations

import pytest
import torch

from megatron_vlm.parallel.cp_vision import assign_images_to_ranks, encode_images_cp, place_embeddings


def test_assignment_hand_computed():
    # largest first: 24 -> r0, 16 -> r1, 12 -> r1 (16 < 24), 10 -> r0 (28 > 24)... loads 34 / 28
    assert assign_images_to_ranks([16, 12, 24, 10], 2) == [1, 1, 0, 0]
    assert assign_images_to_ranks([5], 3) == [0]
    assert assign_images_to_ranks([], 2) == []
    assert assign_images_to_ranks([4, 4, 4, 4], 4) == [0, 1, 2, 3]


@pytest.mark.parametrize("cp", [2, 3, 8])
def test_assignment_balanced_and_spread(cp):
    g = torch.Generator().manual_seed(cp)
    counts = (torch.randint(1, 50, (40,), generator=g) * 4).tolist()
    owner = assign_images_to_ranks(counts, cp)
    loads = [sum(c for c, o in zip(counts, owner) if o == r) for r in range(cp)]
    # greedy largest-first: no rank exceeds the average by more than the largest image
    assert max(loads) - sum(counts) / cp <= max(counts)
    assert len(set(owner)) == cp


def test_single_rank_encode_and_place():
    grids = torch.tensor([[1, 2, 2], [1, 4, 2]])
    pixels = torch.randn(12, 3)

    def encode(px, grid):
        assert torch.equal(grid, grids)
        return px.reshape(-1, 12)[:, :5]

    full = encode_images_cp(encode, pixels, grids, hidden_size=5)
    assert torch.equal(full, pixels.reshape(-1, 12)[:, :5])
    tokens = torch.tensor([1, 7, 2, 7, 7])
    embeds = torch.zeros(5, 5)
    placed = place_embeddings(embeds, tokens, 7, full, torch.tensor([2, 0, 1]))
    assert torch.equal(placed[[1, 3, 4]], full[[2, 0, 1]])
    assert torch.equal(placed[[0, 2]], embeds[[0, 2]])
    with pytest.raises(ValueError, match="local slots"):
        place_embeddings(embeds, tokens, 7, full, torch.tensor([0]))
