"""Run a function on N gloo ranks on CPU, for tests.

``run_distributed(fn, world_size, *args)`` spawns ``world_size`` processes (forked from a
fork server that has torch and Megatron-Core already imported) with a free port,
sets the torchrun environment variables, calls ``fn(*args)`` in each, and returns the list of
per-rank return values (which must pickle; tensors come back by value). A failure on any rank raises ``RankFailed`` with that
rank's traceback; a run over ``timeout_s`` kills every rank and fails. ``fn`` must be importable
(a module-level function), because the fork server does not share the caller's memory.

The ranks compute where ``device=`` says (default ``"cpu"``: gloo, even on a machine with a GPU, so
the CPU suite passes there too); ``megatron_vlm.parallel.initialize`` reads it from
``$MEGATRON_VLM_DEVICE``. GPU tests pass ``device="cuda"``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import random
import socket
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = str(Path(__file__).resolve().parents[1])


class RankFailed(AssertionError):
    pass


# Listening ports come from below Linux's ephemeral range (32768-60999): a port the kernel handed
# out with bind(0) is one it may hand the next outgoing connection too (gloo opens many), and the
# store then fails with EADDRINUSE before it listens (seen in CI: test_init_from, 1 run in ~900).
PORT_RANGE = (20000, 32000)


def free_port() -> int:
    """A port that was free a moment ago, drawn at random below the ephemeral range."""
    rng = random.Random(os.urandom(8))
    for _ in range(200):
        port = rng.randrange(*PORT_RANGE)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE} after 200 tries")


def _worker(fn, args, rank, world_size, port, queue, env, cwd):
    # The fork server started earlier: take the caller's environment and directory as of now.
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
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
        # Plain pickle, by value: torch's queue pickler would share tensors through file
        # descriptors that vanish when this process exits before the parent reads them.
        queue.put((rank, True, pickle.dumps(result)))
    except BaseException:  # noqa: BLE001 - the parent reports it
        queue.put((rank, False, traceback.format_exc()))
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001
            pass


# Imported once by the fork server; every rank then forks from it instead of importing torch and
# Megatron-Core afresh (~10 s of CPU per rank on the CI machine). The server has run no torch op,
# so forking it is safe, unlike forking the pytest process.
PRELOAD = [
    "torch",
    "torch.distributed",
    "megatron.core.parallel_state",
    "megatron.core.tensor_parallel",
    "megatron.core.models.gpt",
    "megatron.core.distributed",
    "megatron.core.pipeline_parallel",
    "megatron.core.dist_checkpointing",
    "tests.dist_utils",
]
_CTX = None


def _context():
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        if REPO not in sys.path:
            sys.path.insert(0, REPO)
        _CTX.set_forkserver_preload(PRELOAD)
    return _CTX


def run_distributed(fn: Callable[..., Any], world_size: int, *args, timeout_s: float = 300.0, env=None,
                    device: str = "cpu") -> list:
    """Run ``fn(*args)`` on ``world_size`` ranks on ``device`` (cpu: gloo; cuda: nccl); return per-rank results in rank order."""
    from megatron_vlm.parallel.state import DEVICE_ENV

    ctx = _context()
    child_env = {**os.environ, **(env or {}), DEVICE_ENV: device}
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(fn, args, r, world_size, port, queue, child_env, os.getcwd()), daemon=False)
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
                results[rank] = pickle.loads(payload)
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


def _tool_main(target: str, argv: list[str]) -> tuple[int, str, str]:
    """``target``'s main(argv) in this rank: (exit status, stdout, stderr)."""
    import contextlib
    import importlib
    import importlib.util
    import io

    if target.endswith(".py"):  # a script, relative to the repository
        spec = importlib.util.spec_from_file_location(Path(target).stem, Path(REPO) / target)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = module.main(argv)
        except SystemExit as exc:  # argparse errors
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def run_tool(target: str, argv: list[str], world_size: int = 1, timeout_s: float = 300.0) -> list[tuple[int, str, str]]:
    """A command's ``main(argv)`` (``target``: a script such as "tools/compare_hf.py", or a module such as
    "megatron_vlm.train") as torchrun would run it on ``world_size`` ranks, but forked from the fork server,
    whose torch and Megatron imports a new interpreter pays ~10 s of CPU for: (status, stdout, stderr) per
    rank. What a script does under ``if __name__ == "__main__"`` beyond ``sys.exit(main())`` is not run."""
    return run_distributed(_tool_main, world_size, target, list(argv), timeout_s=timeout_s)


def process_tree(root: int) -> list[int]:
    """root and all its descendants, from /proc (what Slurm's proctrack tracks for a step)."""
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat_file.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out
