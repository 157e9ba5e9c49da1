"""Process groups and the CPU compatibility layer (state.py, cpu_compat.py); context parallelism:
the micro-batch split (context_parallel.py), attention (cp_attention.py, cp_te.py), vision (cp_vision.py)."""

from megatron_vlm.parallel.cpu_compat import enable_cpu_compat
from megatron_vlm.parallel.state import ParallelLayout, destroy, initialize

__all__ = ["ParallelLayout", "destroy", "enable_cpu_compat", "initialize"]
