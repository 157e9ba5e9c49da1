"""tests/dist_utils.run_distributed: per-rank results, a failing rank's traceback, timeouts, dead ranks.

    python -m pytest tests/unit/test_dist_utils.py -q
"""

from __future__ import annotations

import os
import time

import pytest

from tests.dist_utils import RankFailed, run_distributed


def _all_reduce_ranks(offset):
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t = torch.tensor([dist.get_rank() + 1.0])
    dist.all_reduce(t)
    return {"rank": dist.get_rank(), "world": dist.get_world_size(), "env_rank": int(os.environ["RANK"]),
            "sum": t.item(), "offset": offset, "tensor": torch.full((3,), float(dist.get_rank()))}


def _fail_on_rank_one():
    import torch.distributed as dist

    dist.init_process_group("gloo")
    if dist.get_rank() == 1:
        raise ValueError("boom on rank 1")
    dist.barrier()  # rank 0 waits here forever: the runner must not wait for it
    return "rank 0 finished"


def _hang(pid_dir):
    with open(os.path.join(pid_dir, f"{os.environ['RANK']}.pid"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)


def _die_hard():
    if os.environ["RANK"] == "1":
        os._exit(3)
    time.sleep(120)


def test_returns_per_rank_results_in_rank_order():
    results = run_distributed(_all_reduce_ranks, 3, 7, timeout_s=120)
    assert [r["rank"] for r in results] == [0, 1, 2]
    assert [r["env_rank"] for r in results] == [0, 1, 2]
    assert all(r["world"] == 3 and r["offset"] == 7 for r in results)
    assert all(r["sum"] == 1 + 2 + 3 for r in results)  # the ranks really talked to each other
    # tensors come back by value (the ranks have exited by the time they are read)
    assert [r["tensor"].tolist() for r in results] == [[0.0] * 3, [1.0] * 3, [2.0] * 3]


def test_failure_on_one_rank_raises_with_its_traceback():
    start = time.monotonic()
    with pytest.raises(RankFailed) as err:
        run_distributed(_fail_on_rank_one, 2, timeout_s=120)
    message = str(err.value)
    assert "rank 1 failed" in message
    assert "ValueError: boom on rank 1" in message
    assert "_fail_on_rank_one" in message  # the traceback, not just the exception
    assert time.monotonic() - start < 60  # did not wait for the rank stuck in the barrier


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_hang_hits_the_timeout_and_kills_every_rank(tmp_path):
    start = time.monotonic()
    with pytest.raises(RankFailed, match="timed out after 8s"):
        run_distributed(_hang, 2, str(tmp_path), timeout_s=8)
    assert time.monotonic() - start < 60
    pids = [int(p.read_text()) for p in sorted(tmp_path.glob("*.pid"))]
    assert len(pids) == 2
    assert not any(_alive(pid) for pid in pids)


def test_rank_that_dies_without_a_traceback_is_reported():
    with pytest.raises(RankFailed, match=r"rank\(s\) \[1\] died with exit code\(s\) \[3\]"):
        run_distributed(_die_hard, 2, timeout_s=120)


def _set_up_as_tests_do_beside_a_gpu():
    """What a distributed test does (initialize with the default device) on a machine where CUDA is
    available: is_available is patched True, so only the harness's explicit choice keeps it on CPU."""
    from unittest import mock

    import torch
    import torch.distributed as dist

    from megatron_vlm.parallel import ParallelLayout, destroy, initialize

    with mock.patch.object(torch.cuda, "is_available", return_value=True):
        chosen = initialize(ParallelLayout())
        t = torch.tensor([dist.get_rank() + 1.0])
        dist.all_reduce(t)
        out = {"backend": dist.get_backend(), "device": chosen.type, "sum": t.item()}
        destroy()
    return out


def test_ranks_choose_gloo_on_cpu_even_when_cuda_is_available():
    results = run_distributed(_set_up_as_tests_do_beside_a_gpu, 2, timeout_s=120)
    assert results == [{"backend": "gloo", "device": "cpu", "sum": 3.0}] * 2


def test_single_rank_fixture_chooses_gloo_on_cpu_even_when_cuda_is_available(monkeypatch):
    import torch
    import torch.distributed as dist

    from megatron_vlm.parallel import device
    from tests.qwen_utils import single_rank_fixture

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fixture = single_rank_fixture()
    next(fixture)
    try:
        assert dist.get_backend() == "gloo" and device().type == "cpu"
    finally:
        next(fixture, None)
    assert device().type == "cpu"  # outside initialize too: the suite's default ($MEGATRON_VLM_DEVICE, conftest)
