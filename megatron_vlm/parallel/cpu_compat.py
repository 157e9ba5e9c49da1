"""Every workaround that lets Megatron-Core run without CUDA (tests, CI, the CPU quick start), in
one place, switched on by ``initialize()`` for a CPU device and off again by ``destroy()``.

Megatron-Core assumes CUDA in four places that matter for a training step:
``torch.cuda.current_device()``, the CUDA RNG state behind the model-parallel RNG tracker, tensors
created with ``device="cuda"`` (or ``device=torch.cuda.current_device()``), and its optimizer's
``param.type() == "torch.cuda.FloatTensor"`` checks. ``enable()`` redirects the first three to the
CPU; ``cuda_type_names()`` is the context in which CPU tensors answer with CUDA type names (the
optimizer's build and step, and the optimizer state in a checkpoint). ``disable()`` puts back
everything ``enable()`` changed.

The device rewrite is a ``TorchFunctionMode``. A mode is switched off while its own handler
runs, so ``loss.backward()`` (which the mode sees) would run every ``autograd.Function.backward``
without it, e.g. Megatron's sequence-parallel reduce-scatter, which allocates on
``torch.cuda.current_device()``. The autograd entry point is therefore wrapped to run with the
mode on. Nothing here runs on import.
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

_saved: list[tuple[object, str, object]] = []  # (owner, attribute, original) for disable()
_mode: TorchFunctionMode | None = None


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


class _CudaTypeNames(TorchFunctionMode):
    """CPU tensors report ``torch.cuda.*`` type names (Megatron's optimizer checks them)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") == "type" and len(args) == 1 and not kwargs and isinstance(out, str):
            if out.startswith("torch.") and not out.startswith("torch.cuda."):
                return "torch.cuda." + out[len("torch."):]
        return out


def _patch(owner, name: str, value) -> None:
    _saved.append((owner, name, getattr(owner, name)))
    setattr(owner, name, value)


def _autograd_with_mode(mode: TorchFunctionMode, engine_run_backward):
    """torch.autograd's engine entry point, run with ``mode`` on (see the module docstring)."""
    from torch.overrides import _get_current_function_mode_stack

    def run_backward_with_mode(*args, **kwargs):
        if any(m is mode for m in _get_current_function_mode_stack()):
            return engine_run_backward(*args, **kwargs)
        with mode:
            return engine_run_backward(*args, **kwargs)

    return run_backward_with_mode


def enable() -> None:
    """Redirect Megatron-Core's CUDA assumptions to the CPU, until ``disable()``. Idempotent."""
    global _mode
    if _mode is not None:
        return
    import torch.autograd as autograd
    from megatron.core.tensor_parallel import random as mcore_random

    cpu_state, set_cpu_state = torch.random.get_rng_state, torch.random.set_rng_state
    _patch(torch.cuda, "current_device", lambda: 0)
    _patch(torch.cuda, "get_rng_state", lambda device=None, **_: cpu_state())
    _patch(torch.cuda, "set_rng_state", lambda state, device=None, **_: set_cpu_state(state))
    _patch(torch.cuda, "manual_seed", torch.random.manual_seed)
    _patch(torch.cuda.random, "get_rng_state", lambda device=None, **_: cpu_state())
    _patch(torch.cuda, "synchronize", lambda *a, **k: None)
    _patch(torch.cuda, "empty_cache", lambda: None)
    _patch(mcore_random, "_get_cuda_rng_state", lambda *a, **k: cpu_state())
    _patch(mcore_random, "_set_cuda_rng_state", lambda state, *a, **k: set_cpu_state(state))
    mode = _CudaToCpuMode()
    _patch(autograd, "_engine_run_backward", _autograd_with_mode(mode, autograd._engine_run_backward))
    mode.__enter__()
    _mode = mode


def disable() -> None:
    """Undo ``enable()``: the original torch.cuda / Megatron functions, no device rewrite."""
    global _mode
    if _mode is None:
        return
    _mode.__exit__(None, None, None)
    _mode = None
    while _saved:
        owner, name, original = _saved.pop()
        setattr(owner, name, original)


def enabled() -> bool:
    return _mode is not None


def cuda_type_names():
    """While the shims are on: a context in which CPU tensors report CUDA type names; else a no-op."""
    return _CudaTypeNames() if enabled() else contextlib.nullcontext()
