"""TE's THD context-parallel attention equals our local CP attention on the same split batch
(outputs and q/k/v gradients, bf16, GQA, uneven sub-sequences with padding), on 2 GPUs.
Skipped without 2 GPUs and Transformer Engine."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.dist_utils import run_distributed

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs"),
    pytest.mark.skipif(importlib.util.find_spec("transformer_engine") is None, reason="needs Transformer Engine"),
]
BOUNDS = [0, 3, 130, 261, 262, 512]
HQ, HKV, D = 8, 2, 64


def _rank_fn():
    import torch.distributed as dist

    from megatron_vlm.parallel.context_parallel import cp_partition
    from megatron_vlm.parallel.cp_attention import cp_attention_thd
    from megatron_vlm.parallel.cp_te import make_te_attention, te_cp_attention

    dist.init_process_group("nccl")
    rank = dist.get_rank()
    torch.cuda.set_device(rank)
    part = cp_partition(torch.tensor(BOUNDS), 2)
    index = part.source_index[rank].cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    full = [torch.randn(BOUNDS[-1], h, D, device="cuda", generator=g, dtype=torch.bfloat16) for h in (HQ, HKV, HKV, HQ)]
    q, k, v, dout = (x[index.clamp(min=0)] * (index >= 0)[:, None, None] for x in full)
    results = []
    te = make_te_attention(HQ, D, HKV, None, dist.group.WORLD)
    for fn in (lambda a, b, c: te_cp_attention(te, a, b, c, part.cu_seqlens, part.cu_seqlens_padded),
               lambda a, b, c: cp_attention_thd(a, b, c, part.cu_seqlens, part.cu_seqlens_padded)):  # fmt: skip
        a, b, c = (x.clone().requires_grad_(True) for x in (q, k, v))
        out = fn(a, b, c)
        out.backward(dout)
        real = index >= 0
        results.append([t[real].float().cpu().numpy() for t in (out, a.grad, b.grad, c.grad)])
    return results


def test_te_cp_attention_matches_local():
    for te, ours in run_distributed(_rank_fn, 2, timeout_s=300):
        for name, x, y in zip(("out", "dq", "dk", "dv"), te, ours):
            torch.testing.assert_close(torch.from_numpy(x), torch.from_numpy(y), atol=2e-2, rtol=2e-2, msg=name)
