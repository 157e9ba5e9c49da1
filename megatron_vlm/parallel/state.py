"""One place that starts torch.distributed and Megatron-Core's model-parallel groups, and
records the device this process computes on.

``ParallelLayout`` names the layout (tp, pp, cp, vpp; dp follows from the world size).
``initialize(layout, device=...)`` chooses the ``Device`` (CUDA with nccl, or CPU with gloo and
the CPU shims of cpu_compat.py on), starts the process group and calls
``parallel_state.initialize_model_parallel``; ``device()`` is what every other module asks
instead of ``torch.cuda.is_available()``. ``destroy()`` tears it all down (shims off) so tests
can run several layouts in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import torch
import torch.distributed as dist

from megatron_vlm.utils import options


@dataclass(frozen=True)
class ParallelLayout:
    """A model-parallel layout (also the recipe's ``parallel`` section). Data parallelism is whatever
    the world size leaves over."""

    tp: int = 1
    """Tensor-parallel size (attention heads and MLP columns split across ranks)."""
    pp: int = 1
    """Pipeline-parallel size (layers split into stages)."""
    cp: int = 1
    """Context-parallel size (each sequence split into 2*cp load-balanced chunks)."""
    vpp: int | None = None
    """Virtual pipeline stages per rank (interleaved schedule); None for the plain 1F1B schedule."""
    sequence_parallel: bool = False
    """Shard activations outside attention/MLP along the sequence across the TP group (with tp > 1)."""
    distributed_optimizer: bool = True
    """Shard optimizer state and master weights across data-parallel ranks (ZeRO-1)."""

    RULES = options.at_least(1, "tp", "pp", "cp", "vpp")

    @property
    def shards_sequence(self) -> bool:
        """Sequence parallelism in effect: asked for, and a TP group to shard over."""
        return self.sequence_parallel and self.tp > 1

    def transformer_config_kwargs(self) -> dict:
        """Megatron TransformerConfig arguments for this layout: the sizes, sequence parallelism, and
        the p2p settings the interleaved schedule needs to be correct.

        At PP=2 with virtual stages the previous and the next stage are the same rank, and a batched
        send/recv cannot tell a forward activation from a backward gradient (same shape;
        Megatron-LM issue #750): they were silently swapped. Unbatched, overlapped p2p sends the two
        directions on two different process groups.
        """
        kwargs = dict(
            tensor_model_parallel_size=self.tp, pipeline_model_parallel_size=self.pp, context_parallel_size=self.cp,
            virtual_pipeline_model_parallel_size=self.vpp, sequence_parallel=self.shards_sequence,
        )
        if self.vpp and self.pp == 2:
            kwargs.update(overlap_p2p_comm=True, batch_p2p_comm=False)
        return kwargs

    def dp(self, world_size: int) -> int:
        """The data-parallel size; LayoutError (one line) when the world size does not fit."""
        model_parallel = self.tp * self.pp * self.cp
        if world_size % model_parallel:
            raise LayoutError(
                f"world size {world_size} is not divisible by tp*pp*cp = {self.tp}*{self.pp}*{self.cp}; start a "
                f"multiple of {model_parallel} processes (python -m megatron_vlm.launch --nproc-per-node {model_parallel} ...)"
            )
        return world_size // model_parallel


class LayoutError(ValueError):
    """A parallel layout that the processes started cannot form; the message is one line."""


DEVICE_ENV = "MEGATRON_VLM_DEVICE"


@dataclass(frozen=True)
class Device:
    """Where this process computes: a CUDA device (process groups over nccl) or the CPU (gloo)."""

    type: Literal["cuda", "cpu"]
    """`cuda` or `cpu`."""
    index: int = 0
    """The CUDA device index (LOCAL_RANK under torchrun); 0 on CPU."""

    @property
    def is_cuda(self) -> bool:
        return self.type == "cuda"

    @property
    def backend(self) -> str:
        """The torch.distributed backend for this device."""
        return "nccl" if self.is_cuda else "gloo"

    @property
    def torch_device(self) -> torch.device:
        return torch.device("cuda", self.index) if self.is_cuda else torch.device("cpu")


_device: Device | None = None
_layout: ParallelLayout | None = None


def choose_device(want: str | None = None) -> Device:
    """``want`` (`auto`, `cuda` or `cpu`; None reads $MEGATRON_VLM_DEVICE, default `auto`) as a Device.
    `auto` is CUDA when it is available; `cpu` holds even on a machine with CUDA."""
    want = want or os.environ.get(DEVICE_ENV) or "auto"
    if want not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be auto, cuda or cpu, got {want!r}")
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return Device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but CUDA is not available")
    return Device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def device() -> Device:
    """The device ``initialize()`` chose; before it (or after ``destroy()``), what `auto` would choose."""
    return _device or choose_device()


def layout() -> ParallelLayout:
    """The layout ``initialize()`` set up; a single process (all sizes 1) before it."""
    return _layout or ParallelLayout()


def initialize(layout: ParallelLayout, seed: int = 1234, timeout_s: float = 600.0, device: str | None = None) -> Device:
    """Start torch.distributed from the torchrun environment (if needed) and Megatron's groups on
    the chosen device (see ``choose_device``); returns it. On CPU the cpu_compat shims go on."""
    global _device, _layout
    from megatron.core import parallel_state, tensor_parallel

    from megatron_vlm.parallel import cpu_compat

    chosen = choose_device(device)
    if chosen.is_cuda:
        torch.cuda.set_device(chosen.index)
    else:
        cpu_compat.enable()
    _device = chosen
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        dist.init_process_group(
            backend=chosen.backend,
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
    _layout = layout
    return chosen


def destroy() -> None:
    """Tear down Megatron's groups and the default process group; the CPU shims go off."""
    global _device, _layout
    from megatron.core import parallel_state

    from megatron_vlm.parallel import cpu_compat

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
    cpu_compat.disable()
    _device, _layout = None, None
