"""Core attention (torch backend) against a dense softmax with a hand-built block-diagonal mask:
packed sub-sequences never see each other, GQA groups map query head h to K/V head h // group."""

from __future__ import annotations

import pytest
import torch

from megatron_vlm.models.common.attention import torch_attention


def dense_reference(q, k, v, bounds, causal):
    """softmax(q k^T / sqrt(d) + mask) v with the mask written out token by token."""
    T, hq, d = q.shape
    group = hq // k.shape[1]
    seg = torch.zeros(T, dtype=torch.long)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        seg[a:b] = i
    allowed = seg[:, None] == seg[None, :]
    if causal:
        allowed &= torch.arange(T)[:, None] >= torch.arange(T)[None, :]
    out = torch.empty_like(q)
    for h in range(hq):
        scores = q[:, h] @ k[:, h // group].T / d**0.5
        out[:, h] = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v[:, h // group]
    return out


@pytest.mark.parametrize("causal", [True, False])
def test_packed_gqa_attention_matches_dense_mask(causal):
    gen = torch.Generator().manual_seed(0)
    bounds = [0, 5, 6, 13, 20]
    q = torch.randn(20, 4, 8, generator=gen)
    k, v = torch.randn(20, 2, 8, generator=gen), torch.randn(20, 2, 8, generator=gen)
    got = torch_attention(q, k, v, torch.tensor(bounds), causal, 8**-0.5)
    torch.testing.assert_close(got, dense_reference(q, k, v, bounds, causal), rtol=1e-5, atol=1e-6)


def test_changing_one_sample_leaves_the_others_alone():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(12, 2, 4, generator=gen) for _ in range(3))
    cu = torch.tensor([0, 4, 12])
    before = torch_attention(q, k, v, cu, True, 0.5)
    k2, v2 = k.clone(), v.clone()
    k2[:4] += 1.0
    v2[:4] += 1.0
    after = torch_attention(q, k2, v2, cu, True, 0.5)
    torch.testing.assert_close(after[4:], before[4:], rtol=0, atol=0)
    assert not torch.allclose(after[:4], before[:4])
