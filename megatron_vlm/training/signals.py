"""SIGTERM and SIGUSR1 (Slurm preemption and ``--signal=USR1@T``) ask the run to stop after a save.

    stop = StopSignal()        # first thing in the command, before the heavy imports
    ...
    if stop.requested(dev):    # collective: every rank asks at the same point and they agree

A signal only sets a flag, whenever it arrives (start-up, loading, a step, a save); the training
loop asks at its safe points: before the first step, after each step (then saves) and after each
periodic save. So no signal cuts a save short: ``latest`` moves only after a complete save
(training/checkpointing.py).

Slurm signals every process of a step, helpers included. Helper processes a rank starts must
therefore outlive these signals: :func:`children_ignore_stop_signals` for processes started by
exec (Megatron's checkpoint writer starts a multiprocessing Manager that way; killed, the save
after the signal fails with BrokenPipeError; it also gets :func:`die_with_parent`, so a SIGKILLed
rank does not leave it behind), and the loader's DataLoader workers (data/loader.py). Forked
helpers inherit the handler below and only set a flag of their own.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


class StopSignal:
    """Installs handlers for SIGTERM/SIGUSR1 that record the signal; ``requested`` agrees across ranks."""

    def __init__(self):
        self.received: int | None = None
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def requested(self, device) -> bool:
        """Whether any rank received a stop signal. Collective over the default process group
        (``device``: where this rank's collectives run)."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self.received is not None else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def die_with_parent() -> None:
    """Linux: this process is killed (SIGKILL) when the process that started it dies. A helper that
    ignores the stop signals would otherwise outlive a SIGKILLed rank, holding its memory, until
    someone kills it by hand. Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@contextlib.contextmanager
def children_ignore_stop_signals() -> Iterator[None]:
    """Processes started inside ignore SIGTERM and SIGUSR1 (an ignored signal stays ignored across
    exec); this process keeps them: one arriving meanwhile is held (blocked) and delivered after."""
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
