#!/usr/bin/env bash
# Runs once per srun task: turns Slurm's per-task variables into what torch.distributed reads,
# then execs the Python entry point. Used by train.sbatch and evaluate.sbatch; not run by hand.
#
#   task.sh torchrun ENTRY...   one task per node: torchrun with --node-rank from SLURM_NODEID
#   task.sh srun ENTRY...       one task per GPU: RANK/LOCAL_RANK/WORLD_SIZE from SLURM_PROCID etc.
#   task.sh single ENTRY...     one plain process
#
# ENTRY is what follows `python`, e.g. `-m megatron_vlm.train --config RECIPE.yaml`.
set -euo pipefail

mode="${1:?usage: task.sh torchrun|srun|single ENTRY...}"
shift
python_bin="${PYTHON:-python}"

case "$mode" in
    torchrun)
        # Slurm's --signal=USR1@T reaches every process of the step. The trainer ranks save a
        # checkpoint on it and exit 0; torchrun itself must not die of it (its default action),
        # or srun would kill the ranks mid-save. An ignored signal stays ignored across exec, and
        # the trainer installs its own handler.
        trap '' USR1
        exec "$python_bin" -m torch.distributed.run \
            --nnodes "${SLURM_NNODES:-${NNODES:-1}}" \
            --node-rank "${SLURM_NODEID:-0}" \
            --nproc-per-node "${GPUS_PER_NODE:?GPUS_PER_NODE not set}" \
            --master-addr "${MASTER_ADDR:?MASTER_ADDR not set}" \
            --master-port "${MASTER_PORT:?MASTER_PORT not set}" \
            --max-restarts 0 \
            "$@"
        ;;
    srun)
        export RANK="${SLURM_PROCID:?SLURM_PROCID not set}"
        export LOCAL_RANK="${SLURM_LOCALID:?SLURM_LOCALID not set}"
        export WORLD_SIZE="${SLURM_NTASKS:?SLURM_NTASKS not set}"
        export LOCAL_WORLD_SIZE="${GPUS_PER_NODE:-${SLURM_NTASKS_PER_NODE:-1}}"
        export GROUP_RANK="${SLURM_NODEID:-0}"
        exec "$python_bin" "$@"
        ;;
    single)
        exec "$python_bin" "$@"
        ;;
    *)
        echo "error: unknown launch mode '$mode' (torchrun, srun or single)" >&2
        exit 2
        ;;
esac
