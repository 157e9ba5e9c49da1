"""Process groups and the device (state.py), the CPU shims (cpu_compat.py); context parallelism:
the micro-batch split (context_parallel.py), attention (cp_attention.py, cp_te.py), vision (cp_vision.py)."""

from megatron_vlm.parallel.state import Device, LayoutError, ParallelLayout, destroy, device, initialize

__all__ = ["Device", "LayoutError", "ParallelLayout", "destroy", "device", "initialize"]
