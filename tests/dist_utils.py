"""Run a function on N gloo ranks on CPU, for tests.

``run_distributed(fn, world_size, *args)`` spawns ``world_size`` processes with a free port,
sets the torchrun environment variables, calls ``fn(*args)`` in each, and returns the list of
per-rank return values (which must pickle). A failure on any rank raises ``RankFailed`` with that
rank's traceback; a run over ``timeout_s`` kills every rank and fails. ``fn`` must be importable
(a module-level function), because the ranks are spawned, not forked.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = str(Path(__file__).resolve().parents[1])


class RankFailed(AssertionError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(fn, args, rank, world_size, port, queue, env):
    os.environ.update(env)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    try:
        import torch

        torch.set_num_threads(1)
        result = fn(*args)
        queue.put((rank, True, result))
    except BaseException:  # noqa: BLE001 - the parent reports it
        queue.put((rank, False, traceback.format_exc()))
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001
            pass


def run_distributed(fn: Callable[..., Any], world_size: int, *args, timeout_s: float = 300.0, env=None) -> list:
    """Run ``fn(*args)`` on ``world_size`` gloo ranks; return per-rank results in rank order."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(fn, args, r, world_size, port, queue, dict(env or {})), daemon=False)
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    failures: dict[int, str] = {}
    import queue as queue_mod
    import time

    deadline = time.monotonic() + timeout_s
    try:
        while len(results) + len(failures) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RankFailed(
                    f"timed out after {timeout_s:.0f}s; ranks finished: {sorted(results)}, failed: {sorted(failures)}"
                )
            try:
                rank, ok, payload = queue.get(timeout=min(remaining, 1.0))
            except queue_mod.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
                missing = [r for r in dead if r not in results and r not in failures]
                if missing:
                    codes = [procs[r].exitcode for r in missing]
                    raise RankFailed(f"rank(s) {missing} died with exit code(s) {codes}") from None
                continue
            if ok:
                results[rank] = payload
            else:
                failures[rank] = payload
                break  # one failure is enough; the others may hang on a collective
    finally:
        # After a failure or a timeout the other ranks may be stuck in a collective: kill them now.
        grace = 5 if len(results) == world_size else 0
        for p in procs:
            p.join(timeout=grace)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    if failures:
        rank = min(failures)
        raise RankFailed(f"rank {rank} failed:\n{failures[rank]}")
    return [results[r] for r in range(world_size)]
