"""Let Megatron-Core run on a machine without CUDA (tests, CI, the CPU quick start).

Megatron-Core assumes CUDA in three places that matter for a forward/backward pass:
``torch.cuda.current_device()``, the CUDA RNG state behind the model-parallel RNG tracker,
and tensors created with ``device="cuda"`` (or ``device=torch.cuda.current_device()``).
``enable_cpu_compat()`` redirects all three to the CPU.

The device rewrite is a ``TorchFunctionMode``. A mode is switched off while its own handler
runs, so ``loss.backward()`` (which the mode sees) would run every ``autograd.Function.backward``
without it, e.g. Megatron's sequence-parallel reduce-scatter, which allocates on
``torch.cuda.current_device()``. The autograd entry point is therefore wrapped to run with the
mode on. It is explicit: nothing here runs on import, and on a machine with CUDA it is a no-op
unless ``force=True``.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

_ENABLED = False


def _to_cpu_device(device):
    if device is None:
        return None
    if isinstance(device, int):
        return torch.device("cpu")
    dev = torch.device(device)
    return torch.device("cpu") if dev.type == "cuda" else dev


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites ``device=cuda`` in factory calls and ``.cuda()`` / ``.to("cuda")`` to CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        name = getattr(func, "__name__", "")
        if name == "cuda":
            return args[0]
        if name == "to" and args:
            args = tuple(
                _to_cpu_device(a) if isinstance(a, (str, torch.device)) and torch.device(a).type == "cuda" else a
                for a in args
            )
        return func(*args, **kwargs)


class _CpuRngStates:
    """Stands in for the CUDA default generator: get/set/seed go to the CPU generator's state."""

    @staticmethod
    def get_rng_state(device=None, **_):
        return torch.random.get_rng_state()

    @staticmethod
    def set_rng_state(state, device=None, **_):
        torch.random.set_rng_state(state)

    @staticmethod
    def manual_seed(seed):
        torch.random.manual_seed(seed)


def _run_autograd_with_mode(mode: TorchFunctionMode) -> None:
    """Make torch.autograd.backward/grad (and so Tensor.backward) run the engine with ``mode`` on."""
    import torch.autograd as autograd
    from torch.overrides import _get_current_function_mode_stack

    engine_run_backward = autograd._engine_run_backward

    def run_backward_with_mode(*args, **kwargs):
        if any(m is mode for m in _get_current_function_mode_stack()):
            return engine_run_backward(*args, **kwargs)
        with mode:
            return engine_run_backward(*args, **kwargs)

    autograd._engine_run_backward = run_backward_with_mode


def enable_cpu_compat(force: bool = False) -> bool:
    """Redirect Megatron-Core's CUDA assumptions to the CPU. Returns True if it took effect.

    Idempotent. On a CUDA machine it does nothing unless ``force`` is set.
    """
    global _ENABLED
    if _ENABLED:
        return True
    if torch.cuda.is_available() and not force:
        return False

    torch.cuda.current_device = lambda: 0
    torch.cuda.get_rng_state = _CpuRngStates.get_rng_state
    torch.cuda.set_rng_state = _CpuRngStates.set_rng_state
    torch.cuda.manual_seed = _CpuRngStates.manual_seed
    torch.cuda.random.get_rng_state = _CpuRngStates.get_rng_state
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.empty_cache = lambda: None

    from megatron.core.tensor_parallel import random as mcore_random

    mcore_random._get_cuda_rng_state = lambda *a, **k: torch.random.get_rng_state()
    mcore_random._set_cuda_rng_state = lambda state, *a, **k: torch.random.set_rng_state(state)

    mode = _CudaToCpuMode()
    mode.__enter__()  # stays active for the life of the process
    _run_autograd_with_mode(mode)
    _ENABLED = True
    return True


def cpu_compat_enabled() -> bool:
    return _ENABLED
