"""Rope angle error of a model built the way the trainer builds it, against float64.

    python benchmarks/rope_error.py [--kind qwen2_5_vl] [--flavor debug] [--num-layers 1] [--precision bf16]
                                    [--rope-theta 4e6] [--positions 100 131071 524287] [--max-error 0.02]

Builds one model chunk through ``training.loop.build_model`` (provider -> Float16Module with
bf16 -> DDP) on one rank (gloo on CPU, NCCL on a GPU, on its device), asks the LLM's rope module
for the angles of text tokens at ``--positions`` and prints, per position, the largest
|angle - position x inv_freq_fp64| over the frequencies, and the dtype of every ``inv_freq``.
With ``--max-error`` it exits 1 when the error at 131,071 (or the last position below it) is
larger; benchmarks/gpu_check.sh uses it that way. Prints the command that produced the figures.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

import torch


def reference_inv_freq(theta: float, dim: int) -> torch.Tensor:
    """1 / theta^(2i/dim), i < dim/2, in float64."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


def text_rope(model):
    """(rope module, angles(positions) -> [N, head_dim], theta, head_dim) of a built chunk."""
    if hasattr(model, "language_model"):  # Qwen2.5-VL
        rope, text = model.language_model.rotary_pos_emb, model.cfg.text
        return rope, lambda ids: rope(ids)[:, 0, 0], text.rope_theta, text.head_dim
    rope = model.rotary_pos_emb  # Megatron GPTModel with mRoPE
    return rope, lambda ids: rope(ids, model.config.mrope_section)[:, 0, 0], None, model.config.kv_channels


def measure(kind: str, flavor: str, precision: str, rope_theta: float, positions: list[int],
            num_layers: int | None = None) -> dict:
    """Build as the trainer does and return {"inv_freq_dtypes": [...], "errors": {position: rad}, "device": str}.

    Needs the process group started (see ``main``)."""
    from megatron_vlm.training.config import load_recipe
    from megatron_vlm.training.loop import build_model
    from megatron_vlm.training.providers import get_provider

    overrides = [f"model.kind={kind}", f"model.flavor={flavor}", f"train.precision={precision}",
                 f"model.rope_theta={rope_theta}", "train.data_source=synthetic", "logging.wandb_mode=disabled"]
    if num_layers:
        overrides.append(f"model.num_layers={num_layers}")
    recipe = load_recipe(None, overrides)
    chunks, _ = build_model(get_provider(recipe), recipe)
    model = chunks[0].module
    while hasattr(model, "module"):
        model = model.module
    _, angles_of, theta, dim = text_rope(model)
    theta = theta or rope_theta
    device = next(model.parameters()).device
    ids = torch.tensor(positions, dtype=torch.int64, device=device).view(1, 1, -1).expand(3, 1, -1)
    with torch.no_grad():
        angles = angles_of(ids).double().cpu()
    ref_inv = reference_inv_freq(theta, dim)
    expected = torch.tensor(positions, dtype=torch.float64)[:, None] * torch.cat([ref_inv, ref_inv])
    errors = (angles - expected).abs().amax(-1)
    dtypes = sorted({str(m.inv_freq.dtype) for m in model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)})
    return {"inv_freq_dtypes": dtypes, "errors": dict(zip(positions, errors.tolist())), "device": str(device),
            "head_dim": dim, "theta": theta}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", default="qwen2_5_vl")
    parser.add_argument("--flavor", default="debug")
    parser.add_argument("--num-layers", type=int, default=None)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--rope-theta", type=float, default=4e6)
    parser.add_argument("--positions", type=int, nargs="+", default=[100, 131_071, 524_287])
    parser.add_argument("--max-error", type=float, default=None, help="exit 1 if the error at <= 131,071 exceeds this")
    args = parser.parse_args(argv)
    print("command: python benchmarks/rope_error.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])), flush=True)

    from megatron_vlm.parallel import ParallelLayout, destroy, initialize

    if "RANK" not in os.environ:
        from tests.dist_utils import free_port

        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    initialize(ParallelLayout())
    try:
        result = measure(args.kind, args.flavor, args.precision, args.rope_theta, args.positions, args.num_layers)
    finally:
        destroy()
    print(f"{args.kind} {args.flavor} {args.precision} on {result['device']}: head_dim {result['head_dim']}, "
          f"theta {result['theta']:g}, inv_freq dtype(s) {', '.join(result['inv_freq_dtypes'])}")
    for position, error in result["errors"].items():
        print(f"  position {position:>9,}: largest angle error vs fp64 {error:.4g} rad")
    if args.max_error is not None:
        checked = [p for p in result["errors"] if p <= 131_071] or list(result["errors"])
        worst = result["errors"][max(checked)]
        if worst > args.max_error or result["inv_freq_dtypes"] != ["torch.float32"]:
            print(f"FAIL: angle error {worst:.4g} rad at position {max(checked):,} (limit {args.max_error}) "
                  f"or inv_freq not float32")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
