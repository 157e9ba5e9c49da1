"""tests/run.sh's scheduling: under two pytest-xdist workers, the tests that share a module-scoped
fixture run on one worker, so the fixture (in this suite often a multi-process run) is built once.
(With pytest 9, pytest-xdist 3.8's loadgroup silently scattered them and every worker built it.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

MODULE = '''
import os
import pytest

@pytest.fixture(scope="module")
def shared():
    with open(os.environ["BUILT_LOG"], "a") as f:
        f.write(os.environ.get("PYTEST_XDIST_WORKER", "main") + "\\n")
    return 1
'''


def test_a_module_fixture_is_built_once_under_two_workers(tmp_path):
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n")
    uses = "".join(f"\n@pytest.mark.slow({n})\ndef test_uses_{n}(shared):\n    assert shared == 1\n" for n in (1, 5, 9))
    plain = "".join(f"\n@pytest.mark.slow({n})\ndef test_plain_{n}():\n    pass\n" for n in (2, 6, 8))
    (tmp_path / "test_shared.py").write_text(MODULE + uses + plain)
    (tmp_path / "test_other.py").write_text("".join(f"def test_{i}():\n    pass\n" for i in range(6)))
    log = tmp_path / "built.log"
    env = dict(os.environ, BUILT_LOG=str(log), PYTHONPATH=str(REPO))
    args = ((REPO / "tests" / "run.sh").read_text().split("python -m pytest tests ")[1].split('"$@"')[0]
            .replace('"${PYTEST_WORKERS:-2}"', "2").split())
    done = subprocess.run([sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider", "-o", "markers=slow",
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "12 passed" in done.stdout, done.stdout[-2000:]
    assert log.read_text().splitlines() in (["gw0"], ["gw1"]), log.read_text()  # built once, on one worker
