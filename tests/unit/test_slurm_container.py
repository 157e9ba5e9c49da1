"""The Dockerfile: NGC PyTorch base, and its install step keeps the image's torch.

The image cannot be built here (no Docker, no network); what can be checked is the Python it runs
to list the dependencies it installs: every install_requires entry of setup.py except torch.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.setup_args import setup_kwargs

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_base_is_ngc_pytorch():
    assert re.search(r"^ARG BASE_IMAGE=nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3$", DOCKERFILE, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", DOCKERFILE, re.M)


def test_requirements_step_lists_everything_but_torch(tmp_path):
    script = re.search(r"RUN python - > /tmp/requirements.txt <<'PY'\n(.*?)\nPY\n", DOCKERFILE, re.S).group(1)
    (tmp_path / "setup.py").write_text((REPO / "setup.py").read_text())
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    listed = out.stdout.splitlines()

    captured = setup_kwargs()
    expected = [r for r in captured["install_requires"] if re.match(r"[A-Za-z0-9_.-]+", r).group(0) != "torch"]
    assert listed == expected and len(expected) == len(captured["install_requires"]) - 1
    assert any(r.startswith("megatron-core") for r in listed)


def test_install_pins_the_images_torch_and_skips_deps():
    assert "torch=={torch.__version__}" in DOCKERFILE and "-c /tmp/constraints.txt" in DOCKERFILE
    assert re.search(r"pip install --no-deps --no-build-isolation -e \.", DOCKERFILE)
    assert "pip install torch" not in DOCKERFILE
