#!/usr/bin/env bash
# Shared by every sbatch script in examples/slurm/: the repository location, the rendezvous
# address taken from the allocation, the NCCL/InfiniBand environment of H100 clusters, and the
# optional pyxis/enroot container. Sourced, never run. It holds no hyperparameters.
# Submit from the repository root after `mkdir -p logs` (the scripts log to logs/%x-%j.out).
#
# Settings (environment variables, all optional):
#   MVLM_REPO          repository root (default: found from this file; under sbatch it is
#                      SLURM_SUBMIT_DIR, so submit from the repository root)
#   CONTAINER_IMAGE    run every task in this image through pyxis (srun --container-image);
#                      e.g. a squashfs from `enroot import dockerd://megatron-vlm:latest`
#   CONTAINER_MOUNTS   extra pyxis mounts, comma-separated SRC:DST (the repo is always mounted)
#   GPUS_PER_NODE      GPUs (processes) per node (default: SLURM_GPUS_ON_NODE, else 8)
#   MASTER_PORT        rendezvous port (default: 20000 + SLURM_JOB_ID % 20000)
#   PYTHON             Python interpreter inside the task (default: python)
#   MVLM_SHUTDOWN_TIMEOUT  torchrun --shutdown-timeout (default 60 s): how long the other ranks get
#                      after SIGINT/SIGHUP/SIGQUIT or a failed rank; SIGTERM/SIGUSR1 never time out
#                      (megatron_vlm.launch lets the ranks save; Slurm's KillWait/GraceTime is the limit)
#   NCCL_* / UCX_*     anything already set wins over the defaults below
# shellcheck shell=bash

if [[ -z "${MVLM_REPO:-}" ]]; then
    if [[ -n "${SLURM_SUBMIT_DIR:-}" && -f "${SLURM_SUBMIT_DIR}/setup.py" ]]; then
        MVLM_REPO="$SLURM_SUBMIT_DIR"
    else
        MVLM_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    fi
fi
export MVLM_REPO
export PYTHON="${PYTHON:-python}"
export PYTHONPATH="${MVLM_REPO}${PYTHONPATH:+:$PYTHONPATH}"

# Rendezvous from the allocation: the first node of the job hosts the store.
if [[ -z "${MASTER_ADDR:-}" ]]; then
    if [[ -n "${SLURM_JOB_NODELIST:-}" ]] && command -v scontrol >/dev/null 2>&1; then
        # Not `| head -n 1`: under pipefail, scontrol dies of SIGPIPE on long node lists.
        hosts="$(scontrol show hostnames "$SLURM_JOB_NODELIST")"
        MASTER_ADDR="${hosts%%$'\n'*}"
    else
        MASTER_ADDR="127.0.0.1"
    fi
fi
export MASTER_ADDR
export MASTER_PORT="${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}"
export NNODES="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
if [[ -z "${GPUS_PER_NODE:-}" ]]; then
    GPUS_PER_NODE="${SLURM_GPUS_ON_NODE:-8}"
fi
export GPUS_PER_NODE

# NCCL over InfiniBand/RoCE on H100 (DGX/HGX-like) nodes. Only defaults: a cluster's own values win.
export NCCL_IB_TIMEOUT="${NCCL_IB_TIMEOUT:-22}"          # tolerate transient link flaps at scale
export NCCL_IB_QPS_PER_CONNECTION="${NCCL_IB_QPS_PER_CONNECTION:-4}"
export NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-^lo,docker,veth}"  # bootstrap on a real interface
export NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}"        # NVLink SHARP off unless the fabric is known to support it
export NCCL_ASYNC_ERROR_HANDLING="${NCCL_ASYNC_ERROR_HANDLING:-1}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"  # a hung collective ends the job
export CUDA_DEVICE_MAX_CONNECTIONS="${CUDA_DEVICE_MAX_CONNECTIONS:-1}"  # Megatron's TP/SP comm-compute overlap needs 1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
export NVTE_FWD_LAYERNORM_SM_MARGIN="${NVTE_FWD_LAYERNORM_SM_MARGIN:-16}"
export NVTE_BWD_LAYERNORM_SM_MARGIN="${NVTE_BWD_LAYERNORM_SM_MARGIN:-16}"
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"

# srun options for the container (empty without CONTAINER_IMAGE). The repository is mounted at
# the same path inside, so paths in recipes and on the command line mean the same thing there.
# shellcheck disable=SC2034  # used by the scripts that source this file
SRUN_CONTAINER_ARGS=()
if [[ -n "${CONTAINER_IMAGE:-}" ]]; then
    mounts="${MVLM_REPO}:${MVLM_REPO}${CONTAINER_MOUNTS:+,$CONTAINER_MOUNTS}"
    # shellcheck disable=SC2034
    SRUN_CONTAINER_ARGS=(
        "--container-image=${CONTAINER_IMAGE}"
        "--container-mounts=${mounts}"
        "--container-workdir=${MVLM_REPO}"
        "--no-container-mount-home"
    )
fi

mvlm_require_file() {
    # Exit with a one-line reason when a required file argument is missing.
    if [[ -z "${1:-}" || ! -f "$1" ]]; then
        echo "error: ${2:-file} '${1:-}' not found" >&2
        exit 2
    fi
}

mvlm_log_job() {
    # One line about the job, so the log says where it ran.
    echo "[megatron-vlm] job ${SLURM_JOB_ID:-local} nodes=${NNODES} gpus/node=${GPUS_PER_NODE}" \
        "master=${MASTER_ADDR}:${MASTER_PORT} container=${CONTAINER_IMAGE:-none} repo=${MVLM_REPO}"
}
