#!/usr/bin/env python
"""Write a randomly initialised HF Qwen2.5-VL checkpoint of a published shape, shard by shard.

    python benchmarks/make_random_hf_checkpoint.py --config ../shared/reference/hf_configs/Qwen2.5-VL-7B-Instruct \
        --output /tmp/qwen7b-random [--dtype bfloat16] [--shard-gb 4]

Tensor names and shapes come from transformers' own model built on the meta device, so the file
set is exactly what `from_pretrained` expects; values are small random numbers. Memory use is one
shard. Used by benchmarks/bench_convert.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_vlm.checkpoint.hf_io import ShardedSafetensorsWriter, atomic_output_dir  # noqa: E402


def hf_shapes(config_dir: Path) -> dict[str, tuple[int, ...]]:
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    config = AutoConfig.from_pretrained(config_dir)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="directory with config.json (and processor files)")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--shard-gb", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    shapes = hf_shapes(args.config)
    config = json.loads((args.config / "config.json").read_text())
    if config.get("tie_word_embeddings"):
        shapes.pop("lm_head.weight", None)  # tied: HF saves only the embedding
    total = sum(torch.Size(s).numel() for s in shapes.values())
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    with atomic_output_dir(args.output, overwrite=True) as out:
        writer = ShardedSafetensorsWriter(out, max_shard_bytes=int(args.shard_gb * 1024**3))
        done = 0
        for i, (name, shape) in enumerate(sorted(shapes.items())):
            t = torch.empty(shape, dtype=torch.float32)
            t.normal_(0.0, 0.02, generator=gen) if len(shape) > 1 else t.fill_(1.0)
            writer.add(name, t.to(dtype))
            done += t.numel()
            if i % 50 == 0:
                print(f"\r[make] {done / total:6.1%} of {total / 1e9:.2f}B params", end="", flush=True)
        writer.close()
        for name in ("config.json", "preprocessor_config.json", "generation_config.json"):
            if (args.config / name).is_file():
                shutil.copy2(args.config / name, out / name)
    print(f"\n[make] wrote {total / 1e9:.2f}B params ({writer.total_bytes / 1e9:.2f} GB {args.dtype}) "
          f"to {args.output} in {time.time() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
