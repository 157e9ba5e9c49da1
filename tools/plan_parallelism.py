#!/usr/bin/env python
"""List the TP/PP/CP/DP layouts that fit a model on a GPU budget, with per-GPU memory, and the steps
the token budget implies.

    python tools/plan_parallelism.py --flavor 7B --seq-length 131072 --gpus 64 --gpu-memory 80
    python tools/plan_parallelism.py --flavor 72B --gpus 256 --recompute full --json plan.json
    python tools/plan_parallelism.py --family qwen3_vl --flavor 8B --gpus 64 --freeze-vision

Argument parsing only; the estimate lives in megatron_vlm.planner.
"""

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_vlm.models.family import DEFAULT_FAMILY, FAMILIES, get_family  # noqa: E402
from megatron_vlm.planner import PlanRequest, budget, format_plan, plan  # noqa: E402
from megatron_vlm.utils import atomic  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default=DEFAULT_FAMILY, choices=FAMILIES, help="model family (a recipe's model.kind)")
    p.add_argument("--flavor", default="7B", help="a flavor of the family (models/<family>/config.py)")
    p.add_argument("--seq-length", type=int, default=131072)
    p.add_argument("--gpus", type=int, default=64, help="total GPUs")
    p.add_argument("--gpus-per-node", type=int, default=8, help="tensor parallelism stays within a node")
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GB per GPU")
    p.add_argument("--reserve", type=float, default=6.0, help="GB per GPU kept for CUDA/NCCL/fragmentation")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp8", "fp32"])
    p.add_argument("--recompute", default="selective", choices=["none", "selective", "full"])
    p.add_argument("--freeze-vision", action="store_true", help="ViT and merger frozen")
    p.add_argument("--no-vision-cp", action="store_true",
                   help="every CP rank encodes every image (default: images shared out over CP ranks)")
    p.add_argument("--global-batch-tokens", type=int, default=4 * 1024 * 1024)
    p.add_argument("--token-budget", type=float, default=5e9)
    p.add_argument("--top", type=int, default=10, help="layouts to print")
    p.add_argument("--json", help="also write every layout with its breakdown to this file")
    a = p.parse_args(argv)
    flavors = get_family(a.family).flavor_names()
    if a.flavor not in flavors:
        p.error(f"--flavor {a.flavor!r} is not a {a.family} flavor; known: {', '.join(flavors)}")
    for name in ("seq_length", "gpus", "gpus_per_node", "gpu_memory", "global_batch_tokens", "token_budget"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")

    req = PlanRequest(
        flavor=a.flavor, family=a.family, seq_length=a.seq_length, num_gpus=a.gpus, gpu_memory_gb=a.gpu_memory,
        gpus_per_node=a.gpus_per_node, precision=a.precision, recompute=a.recompute,
        train_vision=not a.freeze_vision, vision_cp=not a.no_vision_cp, global_batch_tokens=a.global_batch_tokens,
        token_budget=int(a.token_budget), reserve_gb=a.reserve,
    )
    entries = plan(req)
    if not entries:
        print(f"error: no buildable layout for {a.gpus} GPUs (check --gpus against --gpus-per-node and the batch)",
              file=sys.stderr)
        return 1
    print(format_plan(req, entries, a.top))
    if a.json:
        rows = [{"layout": asdict(e.layout), "memory_gb": e.memory.as_gb(), "micro_batches": e.micro_batches,
                 "fits": e.fits} for e in entries]
        atomic.write_text(a.json, json.dumps({"request": asdict(req), "budget": asdict(budget(req)), "layouts": rows},
                                             indent=1, sort_keys=True))
        print(f"wrote {len(rows)} layouts to {a.json}")
    return 0 if any(e.fits for e in entries) else 1


if __name__ == "__main__":
    sys.exit(main())
