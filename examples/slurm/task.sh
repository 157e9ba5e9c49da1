#!/usr/bin/env bash
# Runs once per srun task: turns Slurm's per-task variables into what torch.distributed reads,
# then execs the Python entry point. Used by train.sbatch and evaluate.sbatch; not run by hand.
#
#   task.sh torchrun ENTRY...   one task per node: torchrun (megatron_vlm.launch) with --node-rank from SLURM_NODEID
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
        # megatron_vlm.launch is torchrun (same options) that leaves SIGTERM and SIGUSR1 to the
        # ranks: Slurm's preemption SIGTERM and --signal=USR1@T reach every process of the step;
        # the ranks finish the step, save and exit 0, and so does the launcher. Plain torchrun
        # would SIGKILL them --shutdown-timeout seconds after a SIGTERM (mid-save) and exit 1.
        # USR1 is ignored until the launcher installs its handler (an ignored signal stays ignored
        # across exec). --shutdown-timeout still applies to SIGINT/SIGHUP/SIGQUIT and to the other
        # ranks after one failed (docs/training.md, Preemption).
        trap '' USR1
        exec "$python_bin" -m megatron_vlm.launch \
            --nnodes "${SLURM_NNODES:-${NNODES:-1}}" \
            --node-rank "${SLURM_NODEID:-0}" \
            --nproc-per-node "${GPUS_PER_NODE:?GPUS_PER_NODE not set}" \
            --master-addr "${MASTER_ADDR:?MASTER_ADDR not set}" \
            --master-port "${MASTER_PORT:?MASTER_PORT not set}" \
            --max-restarts 0 \
            --shutdown-timeout "${MVLM_SHUTDOWN_TIMEOUT:-60}" \
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
