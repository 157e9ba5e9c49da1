"""torchrun for preemptible jobs: the same arguments, and SIGTERM/SIGUSR1 end the run with exit 0.

    python -m megatron_vlm.launch --nproc-per-node 8 [torchrun options] -m megatron_vlm.train --config RECIPE.yaml

Plain torchrun turns SIGTERM into an error: it forwards the signal to the ranks, SIGKILLs them
after ``--shutdown-timeout`` (30 s by default, which can cut a large checkpoint save short) and
exits 1 with a traceback, although the ranks saved a checkpoint and exited 0 (docs/training.md).
This launcher runs torchrun's own ``main`` with SIGTERM taken out of the signals it handles, and
forwards SIGTERM and SIGUSR1 to the ranks itself: each rank finishes its step, saves, and exits
0; torchrun then sees every rank succeed and so does the launcher. There is no deadline here:
the only one is the scheduler's (Slurm's ``--signal`` lead time, KillWait or GraceTime). SIGINT,
SIGHUP and SIGQUIT keep torchrun's behaviour (forward, wait ``--shutdown-timeout``, kill). A rank
that fails still fails the launch, as under torchrun.
"""

from __future__ import annotations

import glob
import os
import signal
import sys

FORWARDED = (signal.SIGTERM, signal.SIGUSR1)
TORCHRUN_HANDLES = "SIGINT,SIGHUP,SIGQUIT"


def child_pids() -> list[int]:
    """Direct children of this process (the ranks torchrun started), from /proc."""
    pids = []
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        try:
            with open(path) as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:  # the thread ended meanwhile
            continue
    return pids


def _forward(signum, frame) -> None:
    for pid in child_pids():
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def torchrun_args(argv: list[str]) -> list[str]:
    """torchrun's arguments with SIGTERM and SIGUSR1 left to this launcher (refuses an explicit choice)."""
    if any(a.startswith(("--signals-to-handle", "--signals_to_handle")) for a in argv):
        raise SystemExit("megatron_vlm.launch: error: --signals-to-handle is set by this launcher "
                         f"({TORCHRUN_HANDLES}; SIGTERM and SIGUSR1 are forwarded to the ranks)")
    return [f"--signals-to-handle={TORCHRUN_HANDLES}", *argv]


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.run import main as torchrun_main

    args = torchrun_args(sys.argv[1:] if argv is None else list(argv))
    for sig in FORWARDED:
        signal.signal(sig, _forward)
    torchrun_main(args)  # raises (ChildFailedError, after torchrun's report) when a rank failed
    return 0


if __name__ == "__main__":
    sys.exit(main())
