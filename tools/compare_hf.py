"""Compare our Megatron model (Qwen2.5-VL or Qwen3-VL, by config.json) with HF transformers on the same images and prompt.

    python tools/compare_hf.py --hf HF_DIR [--mcore MCORE_DIR] [--image PNG ...] [--prompt TEXT]
    torchrun --nproc-per-node 4 tools/compare_hf.py --hf HF_DIR --tp 2 --pp 2

Prints max |delta logit| and top-1 agreement (float32 on both sides) and exits 1 when the
difference is above --atol. Weights come from HF_DIR through the name map, or from a Megatron
dist checkpoint with --mcore. The logic lives in megatron_vlm.models.common.compare.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hf", required=True, type=Path, help="HF directory (config.json + safetensors)")
    p.add_argument("--mcore", type=Path, help="Megatron dist checkpoint to test instead of HF_DIR's weights")
    p.add_argument("--tokenizer", type=Path, help="directory with tokenizer.json (default: HF_DIR)")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--cp", type=int, default=1)
    p.add_argument("--sequence-parallel", action="store_true", help="with --tp > 1")
    p.add_argument("--image", type=Path, nargs="*", default=[], help="images, placed before the prompt")
    p.add_argument("--prompt", default="Describe the image.")
    p.add_argument("--atol", type=float, default=1e-3, help="max |delta logit| allowed (float32)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron_vlm.models.common.compare import CompareError, build_inputs, compare, hf_logits, our_logits

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world % (args.tp * args.pp * args.cp):
        print(f"error: world size {world} is not a multiple of tp*pp*cp = {args.tp * args.pp * args.cp}"
              " (run under torchrun --nproc-per-node N)", file=sys.stderr)
        return 2
    if not (args.hf / "config.json").is_file():
        print(f"error: no config.json in {args.hf}", file=sys.stderr)
        return 2
    import torch.distributed as dist

    from megatron_vlm.checkpoint.hf_io import read_config
    from megatron_vlm.models.family import family_of_hf_config
    from megatron_vlm.parallel import ParallelLayout, destroy, initialize

    initialize(ParallelLayout(tp=args.tp, pp=args.pp, cp=args.cp, sequence_parallel=args.sequence_parallel))
    rank0 = dist.get_rank() == 0
    try:
        raw = read_config(args.hf)
        family = family_of_hf_config(raw)
        cfg = family.from_hf_config(raw)
        batch = build_inputs(cfg, family, args.tokenizer or args.hf, args.image, args.prompt)
        if rank0:
            print(f"[compare_hf] {batch['tokens'].shape[1]} tokens, {len(args.image)} image(s); "
                  f"ours at tp={args.tp} pp={args.pp} cp={args.cp} from {args.mcore or args.hf}", flush=True)
        ours = our_logits(cfg, family, batch, args.hf, args.mcore)
        code = 0
        if rank0:
            print("[compare_hf] running HF transformers (float32, eager attention)", flush=True)
            result = compare(ours, hf_logits(args.hf, batch))
            print(f"[compare_hf] {result.line()}  (atol {args.atol:g})", flush=True)
            code = 0 if result.max_abs_diff <= args.atol else 1
            if code:
                print(f"[compare_hf] FAIL: max |delta logit| {result.max_abs_diff:.3e} > {args.atol:g}", flush=True)
    except (CompareError, ValueError) as err:
        if rank0:
            print(f"error: {err}", file=sys.stderr)
        code = 2
    destroy()
    return code


if __name__ == "__main__":
    sys.exit(main())
