#!/usr/bin/env python
"""Benchmark checkpoint conversion: wall time and peak RSS against the size of the weights.

    python benchmarks/bench_convert.py [--config ../shared/reference/hf_configs/Qwen2.5-VL-7B-Instruct] \
        [--workdir /tmp/bench-convert] [--keep]

Writes a random HF checkpoint of that shape (bf16), converts it HF -> Megatron -> HF with
tools/convert_checkpoint.py, each conversion in its own process, and prints the wall time and
peak resident memory of each (from the kernel's rusage for that process) next to the weights'
size. The goal is peak RSS below 1.3x the weights. Checks the round trip is bit-identical.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak RSS in GB) of that process."""
    print(f"$ {shlex.join(cmd)}", flush=True)
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"command failed with exit code {code}: {shlex.join(cmd)}")
    return wall, usage.ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO.parent / "shared/reference/hf_configs/Qwen2.5-VL-7B-Instruct")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-convert"))
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints afterwards")
    args = parser.parse_args()

    py = sys.executable
    hf_src, mcore, hf_out = (args.workdir / n for n in ("hf-random", "mcore", "hf-export"))
    if not (hf_src / "config.json").is_file():
        run_measured([py, "benchmarks/make_random_hf_checkpoint.py", "--config", str(args.config), "--output", str(hf_src)])
    weights_gb = sum(f.stat().st_size for f in hf_src.glob("*.safetensors")) / 1e9
    for path in (mcore, hf_out):
        shutil.rmtree(path, ignore_errors=True)
    rows = []
    cmd = [py, "tools/convert_checkpoint.py", "hf-to-mcore", "--hf", str(hf_src), "--output", str(mcore)]
    rows.append(("hf-to-mcore", *run_measured(cmd)))
    cmd = [py, "tools/convert_checkpoint.py", "mcore-to-hf", "--mcore", str(mcore), "--output", str(hf_out)]
    rows.append(("mcore-to-hf", *run_measured(cmd)))

    identical = subprocess.run(
        [py, "-c", "import sys; from megatron_vlm.checkpoint.hf_io import HFReader; import torch; "
         "a, b = HFReader(sys.argv[1]), HFReader(sys.argv[2]); assert a.names() == b.names(); "
         "assert all(torch.equal(a.get(n).view(torch.uint8), b.get(n).view(torch.uint8)) for n in a.names())",
         str(hf_src), str(hf_out)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    ).returncode == 0

    print(f"\ncommand: python {shlex.join(sys.argv)}")
    print(f"checkpoint: {args.config.name}, weights {weights_gb:.2f} GB (bf16 safetensors)")
    print(f"{'stage':<12} {'wall s':>8} {'peak RSS GB':>12} {'RSS / weights':>14}")
    for stage, wall, rss in rows:
        print(f"{stage:<12} {wall:8.1f} {rss:12.2f} {rss / weights_gb:13.2f}x")
    print(f"round trip bit-identical: {identical}")
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
