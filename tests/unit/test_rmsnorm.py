"""RMSNorm for the local spec: arithmetic vs hand-computed values and HF's Qwen2RMSNorm, SP flag, spec slots.

    python -m pytest tests/unit/test_rmsnorm.py -q
"""

from __future__ import annotations

import math

import pytest
import torch

from megatron_vlm.models.common.local_spec import local_layer_spec
from megatron_vlm.models.common.rmsnorm import RMSNorm


def _config(**kw):
    from megatron.core.transformer import TransformerConfig

    kw.setdefault("num_attention_heads", 2)
    return TransformerConfig(num_layers=1, hidden_size=4, **kw)


def test_matches_hand_computed_values():
    norm = RMSNorm(_config(), hidden_size=4, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 0.5, -2.0, 3.0]))
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 2.0]])
    # row 0: mean(x^2) = 30/4 = 7.5; row 1: mean(x^2) = 4/4 = 1
    r0 = 1 / math.sqrt(7.5 + 1e-6)
    r1 = 1 / math.sqrt(1.0 + 1e-6)
    expected = torch.tensor(
        [[1 * r0, 0.5 * 2 * r0, -2 * 3 * r0, 3 * 4 * r0], [0.0, 0.0, 0.0, 3 * 2 * r1]]
    )
    torch.testing.assert_close(norm(x), expected, rtol=1e-6, atol=1e-7)


def test_zero_centered_gamma_stores_gamma_minus_one():
    norm = RMSNorm(_config(layernorm_zero_centered_gamma=True), hidden_size=4, eps=1e-6)
    assert torch.equal(norm.weight.detach(), torch.zeros(4))
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(norm(x), x / math.sqrt(7.5 + 1e-6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_hf_qwen2_rmsnorm(dtype):
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(64, generator=gen).to(dtype)
    x = (torch.randn(3, 5, 64, generator=gen) * 7).to(dtype)
    ours = RMSNorm(_config(params_dtype=dtype), hidden_size=64, eps=1e-6)
    hf = Qwen2RMSNorm(64, eps=1e-6).to(dtype)
    with torch.no_grad():
        ours.weight.copy_(weight)
        hf.weight.copy_(weight)
    out = ours(x)
    assert out.dtype == dtype
    # Same order of operations (fp32 normalize, cast, scale), so bit-identical even in bf16.
    assert torch.equal(out, hf(x))


def test_weight_grad_matches_autograd_of_formula():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 16, generator=gen, requires_grad=True)
    w = torch.randn(16, generator=gen)
    norm = RMSNorm(_config(), hidden_size=16, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(w)
    norm(x).pow(2).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    w2 = w.clone().requires_grad_(True)
    (w2 * x2 / torch.sqrt(x2.pow(2).mean(-1, keepdim=True) + 1e-5)).pow(2).sum().backward()
    torch.testing.assert_close(norm.weight.grad, w2.grad)
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize("sp", [False, True])
def test_weight_carries_sequence_parallel_flag(sp):
    cfg = _config(tensor_model_parallel_size=2, sequence_parallel=sp)
    assert RMSNorm(cfg, hidden_size=4).weight.sequence_parallel is sp


@pytest.mark.parametrize("qk", [False, True])
def test_local_layer_spec_uses_rmsnorm_in_every_norm_slot(qk):
    from megatron.core.transformer.identity_op import IdentityOp

    spec = local_layer_spec(qk_layernorm=qk)
    assert spec.submodules.input_layernorm is RMSNorm
    assert spec.submodules.pre_mlp_layernorm is RMSNorm
    attn = spec.submodules.self_attention.submodules
    expected_qk = RMSNorm if qk else IdentityOp
    assert attn.q_layernorm is expected_qk and attn.k_layernorm is expected_qk
