#!/usr/bin/env python
"""Build the Qwen3-VL tokenizer (tokenizer.json + config + chat template) from the reference files.

    python tools/build_tokenizer.py --reference ../shared/reference --output runs/qwen3vl_tokenizer

Argument parsing only; the logic is megatron_vlm.models.qwen3_vl.tokenizer.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="directory holding qwen2_5_vl_tokenizer/ and qwen3_vl/")
    parser.add_argument("--output", required=True, help="new directory for the tokenizer")
    args = parser.parse_args(argv)
    from megatron_vlm.models.qwen3_vl.tokenizer import build_tokenizer

    try:
        out = build_tokenizer(args.reference, args.output)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"build_tokenizer: error: {err}", file=sys.stderr)
        return 2
    print(f"build_tokenizer: wrote the Qwen3-VL tokenizer to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
