#!/usr/bin/env python
"""Measure peak memory of small Megatron GPT training steps on CPU and compare with the planner.

    PYTHONPATH=$PWD python benchmarks/planner_memory.py            # every case
    PYTHONPATH=$PWD python benchmarks/planner_memory.py --case tp2

What is measured: each rank is a fresh process (gloo, Megatron's local spec, fp32, torch Adam with
persistent gradient tensors like Megatron's DDP buffer). glibc is told to serve every allocation
over 64 KiB with mmap, so freed tensors leave the resident set and RSS follows live tensor
memory. The rank's resident set is read before the model is built (baseline); after a first
step (Adam moments now exist) the kernel's high-water mark (VmHWM) is reset through
/proc/self/clear_refs, a second step runs, and peak = VmHWM - baseline. That peak holds weights +
grads + optimizer states + activations + logits, plus whatever torch itself allocates (thread
pools, small-object caches), which the planner does not model. Linux only.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Small enough for a 2-core CI box, big enough that model tensors dominate the process noise.
CASES = {
    "tp1": dict(tp=1, layers=3, hidden=512, heads=8, kv_heads=2, ffn=1376, vocab=8192, seq=1024, recompute="none"),
    "tp2": dict(tp=2, layers=3, hidden=512, heads=8, kv_heads=2, ffn=1376, vocab=8192, seq=1024, recompute="none"),
    "full-recompute": dict(tp=1, layers=3, hidden=512, heads=8, kv_heads=2, ffn=1376, vocab=8192, seq=1024,
                           recompute="full"),
    "long-seq": dict(tp=1, layers=2, hidden=256, heads=4, kv_heads=2, ffn=688, vocab=4096, seq=2048, recompute="none"),
}


def _malloc_to_mmap() -> None:
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 * 1024)
    libc.mallopt(m_trim_threshold, 64 * 1024)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(case: dict) -> dict:
    """Run on one rank (inside run_distributed or torchrun); returns bytes measured on this rank."""
    _malloc_to_mmap()
    import torch
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    from megatron_vlm.parallel import ParallelLayout, destroy, initialize

    torch.set_num_threads(1)
    initialize(ParallelLayout(tp=case["tp"]))
    recompute = {} if case["recompute"] == "none" else dict(
        recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1
    )
    cfg = TransformerConfig(
        num_layers=case["layers"], hidden_size=case["hidden"], num_attention_heads=case["heads"],
        num_query_groups=case["kv_heads"], ffn_hidden_size=case["ffn"], gated_linear_unit=True,
        activation_func=torch.nn.functional.silu, normalization="RMSNorm", add_bias_linear=False,
        add_qkv_bias=True, tensor_model_parallel_size=case["tp"], use_cpu_initialization=True,
        hidden_dropout=0.0, attention_dropout=0.0, **recompute,
    )
    seq = case["seq"]
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, case["vocab"], (1, seq), generator=gen)
    labels = torch.randint(0, case["vocab"], (1, seq), generator=gen)
    positions = torch.arange(seq).unsqueeze(0)

    base = _rss()
    model = GPTModel(
        config=cfg, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
        vocab_size=case["vocab"], max_sequence_length=seq, position_embedding_type="rope",
        share_embeddings_and_output_weights=False,
    )
    after_model = _rss()
    params = sum(p.numel() for p in model.parameters())
    for p in model.parameters():  # persistent gradients, as Megatron's DDP grad buffer
        p.grad = torch.zeros_like(p)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, foreach=False)

    def step() -> float:
        loss = model(tokens, positions, None, labels=labels).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        return loss.item()

    step()
    steady = _rss()
    _reset_hwm()
    step()
    peak = _hwm()
    destroy()
    return {"params": params, "weights": after_model - base, "steady": steady - base, "peak": peak - base}


def measure_cases(cases: list[dict]) -> list[dict]:
    """Several cases one after another in one process (each is measured from its own baseline)."""
    return [measure(case) for case in cases]


def estimate(case: dict):
    """The planner's estimate for a case (fp32, local kernels, plain Adam, no vision)."""
    from megatron_vlm.planner import Layout, Shapes, Training, estimate_memory

    shapes = Shapes(case["vocab"], case["hidden"], case["ffn"], case["layers"], case["heads"], case["kv_heads"])
    layout = Layout(tp=case["tp"], sequence_parallel=False)
    train = Training(seq_length=case["seq"], precision="fp32", recompute=case["recompute"], kernels="local",
                     distributed_optimizer=False, include_vision=False, micro_batches=1)
    return estimate_memory(shapes, layout, train)


def run_cases(names: list[str]) -> list[dict]:
    """Measure the named cases (same-TP cases share their processes) and compare with the planner."""
    sys.path.insert(0, str(REPO))
    from tests.dist_utils import run_distributed

    results = {}
    for tp in sorted({CASES[n]["tp"] for n in names}):
        group = [n for n in names if CASES[n]["tp"] == tp]
        per_rank = run_distributed(measure_cases, tp, [CASES[n] for n in group], timeout_s=600)
        for i, name in enumerate(group):
            ranks = [r[i] for r in per_rank]
            est = estimate(CASES[name])
            peak = max(r["peak"] for r in ranks)
            results[name] = {
                "case": name, **CASES[name], "measured_peak_mb": peak / 2**20, "estimated_mb": est.total / 2**20,
                "error": est.total / peak - 1, "ranks": ranks,
                "estimate_breakdown_mb": {k: v * 1024 for k, v in est.as_gb().items()},
            }
    return [results[n] for n in names]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=sorted(CASES), action="append", help="default: all")
    a = p.parse_args()
    print(f"command: PYTHONPATH=$PWD python benchmarks/planner_memory.py {' '.join('--case ' + c for c in a.case or [])}")
    for r in run_cases(a.case or list(CASES)):
        name = r["case"]
        b = r["estimate_breakdown_mb"]
        print(f"{name:>15}: measured peak {r['measured_peak_mb']:7.1f} MB, planner {r['estimated_mb']:7.1f} MB "
              f"({r['error']:+.1%}); estimate: weights {b['weights']:.1f} grads {b['grads']:.1f} "
              f"optim {b['optimizer']:.1f} activ {b['activations']:.1f} logits {b['logits']:.1f}; "
              f"rank0 measured weights {r['ranks'][0]['weights'] / 2**20:.1f} steady {r['ranks'][0]['steady'] / 2**20:.1f}")
        print(json.dumps({k: v for k, v in r.items() if k != "estimate_breakdown_mb"}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
