"""Real PDFs through pool -> synth (template) -> qa-check -> review -> build -> stats, printing each
command and the counts a QA note needs (records per task, facts by verdict, qa-check groups, build
and stats totals, where the evidence sits).

    PYTHONPATH=. python benchmarks/qa_real_pdfs.py --input /work/realpdfs --workdir /tmp/qa_real \\
        --tokenizer ../shared/reference/qwen2_5_vl_tokenizer [--recipe examples/recipes/small_144dpi.yaml] [--reuse-pool]

Every stage runs as its CLI in a subprocess, as a user would run it; a stage that fails stops the
run with its exit status. The review page is WORKDIR/review/index.html.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def stage(*argv: str, ok: tuple[int, ...] = (0,)) -> None:
    cmd = [sys.executable, "tools/preprocess_data.py", *argv]
    print(f"\n$ python tools/preprocess_data.py {shlex.join(argv)}", flush=True)
    start = time.monotonic()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    lines = (result.stdout + result.stderr).strip().splitlines()
    print("\n".join(lines[-12:]))
    print(f"[{time.monotonic() - start:.0f} s, exit {result.returncode}]", flush=True)
    if result.returncode not in ok:
        sys.exit(result.returncode)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="directory of PDFs")
    parser.add_argument("--workdir", required=True, help="where pool/, qa/, review/, shards/ go")
    parser.add_argument("--tokenizer", required=True, help="Qwen2.5-VL tokenizer directory")
    parser.add_argument("--recipe", default="examples/recipes/small_144dpi.yaml")
    parser.add_argument("--per-segment", default="2", help="QA pairs per segment and task")
    parser.add_argument("--reuse-pool", action="store_true", help="keep WORKDIR/pool if it is there")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    pool, qa, review, shards = work / "pool", work / "qa", work / "review", work / "shards"
    if not (args.reuse_pool and (pool / "manifest.jsonl").is_file()):
        stage("pool", "--input", args.input, "--output", str(pool), "--workers", "1")
    for path in (qa, shards):
        if path.exists():
            subprocess.run(["rm", "-rf", str(path)], check=True)
    stage("synth", "--pool", str(pool), "--output", str(qa), "--teacher", "template", "--per-segment", args.per_segment, "--quiet")
    summary = json.loads((qa / "summary.json").read_text())
    print("facts by kind and verdict:", json.dumps(summary["teacher_usage"].get("facts", {}), indent=1))
    print("rejected:", summary["rejected"], " failed:", summary["failed"])
    stage("qa-check", str(qa), "--pool", str(pool), ok=(0, 1))  # 1: some records break a rule (listed above)
    stage("review", "--pool", str(pool), "--qa", str(qa), "--output", str(review), "--num", "40")
    stage("build", "--pool", str(pool), "--qa", str(qa), "--recipe", args.recipe, "--output", str(shards), "--tokenizer", args.tokenizer)
    stage("stats", str(shards), "--check")
    print(f"\nreview page: {review / 'index.html'}; report: {shards / 'report'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
