#!/usr/bin/env python
"""Convert Qwen2.5-VL checkpoints between HF and Megatron (dist checkpoint), streaming, on CPU.

    python tools/convert_checkpoint.py hf-to-mcore --hf HF_DIR --output MCORE_DIR [--tp N --pp N] [--dtype bfloat16]
    python tools/convert_checkpoint.py mcore-to-hf --mcore MCORE_DIR --output HF_DIR [--hf-template HF_DIR]
        [--layout new|old] [--dtype bfloat16] [--max-shard-gb 2]

Argument parsing only; the work is megatron_vlm.checkpoint.convert. Exits 2 with a one-line
reason when the inputs do not fit together; nothing is written then.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="direction", required=True)
    imp = sub.add_parser("hf-to-mcore", help="HF directory -> Megatron dist checkpoint")
    imp.add_argument("--hf", required=True, help="HF model directory (config.json + safetensors)")
    imp.add_argument("--output", required=True, help="new Megatron checkpoint directory")
    imp.add_argument("--tp", type=int, default=1, help="suggested tensor-parallel size (checked against the model)")
    imp.add_argument("--pp", type=int, default=1, help="suggested pipeline-parallel size (checked against the model)")
    exp = sub.add_parser("mcore-to-hf", help="Megatron dist checkpoint (or trainer run dir) -> HF directory")
    exp.add_argument("--mcore", required=True, help="checkpoint dir, or a run dir with a 'latest' pointer")
    exp.add_argument("--output", required=True, help="new HF model directory")
    exp.add_argument("--hf-template", help="HF dir whose config/tokenizer/processor files to use")
    exp.add_argument("--layout", choices=["new", "old"], default="new",
                     help="HF tensor naming: new = model.language_model.* (transformers >= 4.52), old = model.*")
    exp.add_argument("--max-shard-gb", type=float, default=2.0)
    for p in (imp, exp):
        p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="cast (default: keep as stored)")
        p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    args = parser.parse_args(argv)

    from megatron_vlm.checkpoint.convert import ConversionError, hf_to_mcore, mcore_to_hf
    from megatron_vlm.checkpoint.safe_load import CheckpointError

    try:
        if args.direction == "hf-to-mcore":
            hf_to_mcore(args.hf, args.output, tp=args.tp, pp=args.pp, dtype=args.dtype, overwrite=args.overwrite)
        else:
            mcore_to_hf(args.mcore, args.output, hf_template=args.hf_template, layout=args.layout,
                        dtype=args.dtype, max_shard_gb=args.max_shard_gb, overwrite=args.overwrite)
    except (ConversionError, CheckpointError, FileNotFoundError) as exc:
        print(f"convert_checkpoint: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
