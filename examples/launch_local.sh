#!/usr/bin/env bash
# Training on one node without Slurm: the same entry point and environment as
# examples/slurm/train.sbatch, with torchrun --standalone over this machine's GPUs.
#
#   bash examples/launch_local.sh examples/recipes/mmprolong_7b.yaml [key=value ...]
#   NPROC=4 bash examples/launch_local.sh RECIPE.yaml          # fewer processes
#
# NPROC defaults to the number of visible GPUs (1 on a CPU machine). No hyperparameters here.
set -euo pipefail

recipe="${1:-}"
if [[ -z "$recipe" ]]; then
    echo "usage: bash examples/launch_local.sh RECIPE.yaml [key=value ...]" >&2
    exit 2
fi
shift
MVLM_REPO="${MVLM_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
# shellcheck source=examples/slurm/common.sh
source "${MVLM_REPO}/examples/slurm/common.sh"
mvlm_require_file "$recipe" recipe

if [[ -z "${NPROC:-}" ]]; then
    NPROC=1
    if command -v nvidia-smi >/dev/null 2>&1; then
        NPROC="$(nvidia-smi --list-gpus | wc -l)"
        [[ "$NPROC" -ge 1 ]] || NPROC=1
    fi
fi
read -r -a entry <<< "${MVLM_TRAIN_ENTRY:--m megatron_vlm.train}"
echo "[megatron-vlm] local launch: ${NPROC} processes, recipe=${recipe} overrides=$*"
# megatron_vlm.launch: torchrun whose SIGTERM/SIGUSR1 go to the ranks (save, exit 0); see examples/slurm/task.sh.
exec "$PYTHON" -m megatron_vlm.launch --standalone --nproc-per-node "$NPROC" --max-restarts 0 \
    "${entry[@]}" --config "$recipe" "$@"
