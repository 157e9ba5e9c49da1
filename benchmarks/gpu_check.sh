#!/usr/bin/env bash
# One-shot GPU check: what the CPU suite cannot show, in one run of at most ~8 minutes on one
# H100/H200 (no internet needed). From the repository root:
#
#   bash benchmarks/gpu_check.sh                 # all stages: a b c d
#   bash benchmarks/gpu_check.sh --stages b,d    # some of them
#
# It prints the versions (Python, torch/CUDA, megatron-core, Transformer Engine, flash-attn, apex,
# DALI, transformers, the GPU, the NGC image if any), then each stage's PASS / FAIL / SKIP with a
# one-line reason (benchmarks/gpu_check.py holds the stages and says what each checks):
#   a. bf16 train of the debug model for 20 steps, save, resume: equal losses
#   b. rope angle error at position 131,071 against float64
#   c. throughput of a 7B-width, 4-layer Qwen2.5-VL on packed 32K sequences with images (tokens/s,
#      MFU) beside HF transformers SDPA on the same documents unpacked
#   d. the tests under tests/gpu
# Exit status 1 if a stage failed (or the whole run passed GPU_CHECK_TIMEOUT_S, default 480).
#
# It runs without Transformer Engine, flash-attn or DALI (their stages and tests SKIP) and uses
# them where installed. A machine without megatron-core (or another package) takes wheels from
# $GPU_CHECK_WHEELS (default .whl/), installed with --no-index into a private directory, e.g. made
# beforehand on a machine with a registry for the GPU machine's Python 3.12:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl megatron-core==0.16.1
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
WHEELS=${GPU_CHECK_WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  site=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_site.XXXXXX")
  echo "[gpu_check] installing $(find "$WHEELS" -maxdepth 1 -name '*.whl' | wc -l) wheel(s) from $WHEELS into $site"
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$WHEELS"/*.whl; then
    echo "[gpu_check] FAIL: the wheels in $WHEELS did not install" >&2
    exit 1
  fi
  export PYTHONPATH="$site:$PYTHONPATH"
fi
limit=${GPU_CHECK_TIMEOUT_S:-480}
timeout --signal=TERM --kill-after=15 "$limit" "$PY" benchmarks/gpu_check.py "$@"
status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  echo "[gpu_check] FAIL: the run passed its limit of $limit s (GPU_CHECK_TIMEOUT_S)" >&2
  exit 1
fi
exit "$status"
