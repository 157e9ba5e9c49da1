#!/usr/bin/env bash
# The README's main command: set up, then run the CPU smoke job on 2 gloo ranks.
# (Placeholder until the trainer lands: a tiny Megatron GPT at TP=2 with sequence parallelism.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
# shellcheck disable=SC1091
source "${VENV:-.venv}/bin/activate"
torchrun --nproc-per-node 2 -m megatron_vlm.smoke
