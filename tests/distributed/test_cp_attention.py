"""Local CP attention on 2 gloo ranks equals single-rank block-diagonal causal attention
(an explicit float64 softmax written here), for outputs and q/k/v gradients: GQA, fp32 and
bf16, sub-sequences shorter than 2*CP tokens, uneven lengths, with and without a padding tail;
with the built-in masked kernel, with a caller's square kernel (``attend``), and in the form
the model uses (padded boundaries only)."""

from __future__ import annotations

import pytest
import torch

from megatron_vlm.parallel.context_parallel import cp_partition, unsplit
from tests.dist_utils import run_distributed

HQ, HKV, D = 4, 2, 8
CASES = [
    # (cu_seqlens, last sub-sequence is a padding tail that may be trimmed)
    ([0, 1, 4, 13, 14, 30, 40], True),
    ([0, 3, 17, 22], False),
    ([0, 25], False),
]


def _inputs(total: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(total, HQ, D, generator=g, dtype=torch.float64)
    k = torch.randn(total, HKV, D, generator=g, dtype=torch.float64)
    v = torch.randn(total, HKV, D, generator=g, dtype=torch.float64)
    dout = torch.randn(total, HQ, D, generator=g, dtype=torch.float64)
    return q, k, v, dout


def reference_attention(q, k, v, cu_seqlens):
    """Block-diagonal causal attention over the full packed sequence, float64."""
    out = torch.zeros_like(q)
    group = q.shape[1] // k.shape[1]
    bounds = cu_seqlens.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        n = b - a
        kk = k[a:b].repeat_interleave(group, dim=1)
        vv = v[a:b].repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q[a:b], kk) / D**0.5
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
        out[a:b] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), vv)
    return out


def square_kernel(q, k, v, cu_seqlens, causal):
    """A single-rank kernel with the model's ``attend`` signature (explicit softmax)."""
    assert causal
    return reference_attention(q, k, v, cu_seqlens)


MODES = [("float32", 1e-5, "masked"), ("bfloat16", 3e-2, "masked"), ("float32", 1e-5, "kernel"),
         ("float32", 1e-5, "padded_only"), ("float32", 1e-5, "masked_2_rows")]  # fmt: skip
MODES_3 = [("float32", 1e-5, "masked"), ("float32", 1e-5, "kernel")]


def _rank_fn(modes):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    return {(d, m): _run_cases(d, m) for d, _, m in modes}


def _run_cases(dtype_name: str, mode: str):
    import torch.distributed as dist

    from megatron_vlm.parallel.cp_attention import cp_attention_thd

    cp, rank = dist.get_world_size(), dist.get_rank()
    dtype = getattr(torch, dtype_name)
    results = []
    for seed, (bounds, trim) in enumerate(CASES):
        cu = torch.tensor(bounds, dtype=torch.int32)
        part = cp_partition(cu, cp, trim_last=trim)
        index = part.source_index[rank]
        garbage = torch.Generator().manual_seed(100 + rank)
        local = []
        for full in _inputs(bounds[-1], seed):
            x = full[index.clamp(min=0)].clone()
            x[index < 0] = torch.randn(x[index < 0].shape, generator=garbage, dtype=x.dtype) * 50
            local.append(x.to(dtype))
        q, k, v, dout = local
        for t in (q, k, v):
            t.requires_grad_(True)
        if mode == "padded_only":  # the model's form: pads count as tokens; they get no loss
            dout[index < 0] = 0
            out = cp_attention_thd(q, k, v, part.cu_seqlens_padded)
        else:
            attend = square_kernel if mode == "kernel" else None
            rows = 2 if mode == "masked_2_rows" else 4096  # queries per SDPA call
            out = cp_attention_thd(q, k, v, part.cu_seqlens, part.cu_seqlens_padded, attend=attend, rows_per_call=rows)
        out.backward(dout)
        # numpy: tensors would travel by shared-memory handles that die with the rank
        results.append([t.detach().double().numpy() for t in (out, q.grad, k.grad, v.grad)])
    return results


@pytest.fixture(scope="module")
def two_rank_results():
    return run_distributed(_rank_fn, 2, MODES, timeout_s=180)


@pytest.mark.parametrize("dtype_name,tol,mode", MODES)
def test_cp_attention_matches_single_rank(two_rank_results, dtype_name, tol, mode):
    _check([r[(dtype_name, mode)] for r in two_rank_results], tol, mode)


@pytest.mark.slow
def test_cp3_attention_matches_single_rank():
    """Three ranks: every rank's chunk pair (0|5, 1|4, 2|3) differs from the CP=2 ones."""
    per_rank = run_distributed(_rank_fn, 3, MODES_3, timeout_s=180)
    for dtype_name, tol, mode in MODES_3:
        _check([r[(dtype_name, mode)] for r in per_rank], tol, mode)


def _check(per_rank, tol, mode):
    cp = len(per_rank)
    for case_i, (bounds, trim) in enumerate(CASES):
        cu = torch.tensor(bounds, dtype=torch.int32)
        part = cp_partition(cu, cp, trim_last=trim)
        kept = int(part.cu_seqlens[-1])
        q, k, v, dout = _inputs(bounds[-1], case_i)
        for t in (q, k, v):
            t.requires_grad_(True)
        ref_cu = torch.tensor([*bounds[:-1], kept]) if trim else cu
        ref = reference_attention(q[:kept], k[:kept], v[:kept], ref_cu)
        ref.backward(dout[:kept])
        expected = [ref.detach(), q.grad[:kept], k.grad[:kept], v.grad[:kept]]
        for j, name in enumerate(("out", "dq", "dk", "dv")):
            per = [torch.from_numpy(per_rank[r][case_i][j]) for r in range(cp)]
            got = unsplit(per, part)[:kept]
            torch.testing.assert_close(got, expected[j], atol=tol, rtol=tol, msg=f"case {bounds}: {name}")
            # pad slots produce nothing and receive nothing
            for r in range(cp):
                pad = part.source_index[r] < 0
                if mode == "padded_only" and name == "out":
                    continue
                assert (per[r][pad] == 0).all(), f"case {bounds}: {name} at pad slots"
