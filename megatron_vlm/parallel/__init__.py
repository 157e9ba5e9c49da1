"""Process groups and the CPU compatibility layer. See state.py and cpu_compat.py."""

from megatron_vlm.parallel.cpu_compat import enable_cpu_compat
from megatron_vlm.parallel.state import ParallelLayout, destroy, initialize

__all__ = ["ParallelLayout", "destroy", "enable_cpu_compat", "initialize"]
