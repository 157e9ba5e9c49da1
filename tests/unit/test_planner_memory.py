"""The planner's memory estimate against peak memory measured on CPU runs of small Megatron GPT models.

Measured (benchmarks/planner_memory.py): each rank's resident-set high-water mark over a second
training step, minus its resident set before the model was built, with glibc serving large
allocations by mmap so RSS follows live tensors. That covers weights, grads, Adam states,
activations and logits of Megatron's local spec in fp32. Not measured here: Transformer Engine /
flash kernels, bf16, the vision tower, pipeline schedules (no GPU on CI).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")


@pytest.mark.slow
@pytest.mark.parametrize("names", [["tp1", "full-recompute", "long-seq"], ["tp2"]], ids=["tp1", "tp2"])
def test_estimate_within_20_percent_of_measured_peak(names):
    from benchmarks.planner_memory import run_cases

    for r in run_cases(names):
        print(f"{r['case']}: measured {r['measured_peak_mb']:.1f} MB, planner {r['estimated_mb']:.1f} MB ({r['error']:+.1%})")
        assert abs(r["error"]) <= 0.20, r
