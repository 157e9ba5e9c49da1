"""One place that starts torch.distributed and Megatron-Core's model-parallel groups.

``ParallelLayout`` names the layout (tp, pp, cp, vpp; dp follows from the world size).
``initialize(layout)`` picks nccl with CUDA and gloo without (turning on the CPU compatibility
layer in that case), then calls ``parallel_state.initialize_model_parallel``. ``destroy()``
tears both down so tests can run several layouts in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParallelLayout:
    """A model-parallel layout. Data parallelism is whatever the world size leaves over."""

    tp: int = 1
    """Tensor-parallel size (attention heads and MLP columns split across ranks)."""
    pp: int = 1
    """Pipeline-parallel size (layers split into stages)."""
    cp: int = 1
    """Context-parallel size (each sequence split into 2*cp load-balanced chunks)."""
    vpp: int | None = None
    """Virtual pipeline stages per rank (interleaved schedule); None for the plain 1F1B schedule."""
    sequence_parallel: bool = False
    """Shard activations outside attention/MLP along the sequence across the TP group."""

    def dp(self, world_size: int) -> int:
        model_parallel = self.tp * self.pp * self.cp
        if world_size % model_parallel:
            raise ValueError(
                f"world size {world_size} is not divisible by tp*pp*cp = {self.tp}*{self.pp}*{self.cp}"
            )
        return world_size // model_parallel


def initialize(layout: ParallelLayout, seed: int = 1234, timeout_s: float = 600.0) -> None:
    """Start torch.distributed from the torchrun environment (if needed) and Megatron's groups.

    Without CUDA this uses gloo and enables :func:`enable_cpu_compat`.
    """
    from megatron.core import parallel_state, tensor_parallel

    from megatron_vlm.parallel.cpu_compat import enable_cpu_compat

    use_cuda = torch.cuda.is_available()
    if not use_cuda:
        enable_cpu_compat()
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=timeout_s),
        )
    layout.dp(dist.get_world_size())  # validates divisibility with a clear message
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        context_parallel_size=layout.cp,
        virtual_pipeline_model_parallel_size=layout.vpp,
    )
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def destroy() -> None:
    """Tear down Megatron's groups and the default process group."""
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
