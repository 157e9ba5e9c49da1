"""tools/compare_hf.py on CPU: a tiny random HF checkpoint with one non-square image and a real
prompt gives HF's logits (and exit 0); --atol below the difference exits 1; bad input exits 2.
Both families: Qwen2.5-VL and Qwen3-VL (its debug flavor with two DeepStack taps, so that at PP=2 the
layers they feed are on the first stage)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
import torch

from tests.dist_utils import REPO, free_port, run_tool

FAMILIES = ["qwen2_5_vl", "qwen3_vl"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, family):
    if family == "qwen3_vl":
        from megatron_vlm.models.qwen3_vl.config import flavor
        from tests.qwen3_utils import hf_model

        cfg = flavor("debug").replace(vision=dict(deepstack_visual_indexes=[0, 2]))
    else:
        from megatron_vlm.models.qwen2_5_vl.config import flavor
        from tests.qwen_utils import hf_model

        cfg = flavor("debug").replace(text=dict(tie_word_embeddings=True))  # real vocabulary, for the real tokenizer
    path = tmp_path_factory.mktemp("hf")
    hf_model(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tokenizer_dir(request, family):
    return request.getfixturevalue("qwen3_tokenizer_dir" if family == "qwen3_vl" else "qwen_tokenizer_dir")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from PIL import Image

    pixels = (torch.rand(90, 150, 3) * 255).to(torch.uint8).numpy()
    path = tmp_path_factory.mktemp("img") / "x.png"
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return path


def _run(args):
    """The CLI as a user runs it: a new interpreter."""
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", MASTER_PORT=str(free_port()))
    return subprocess.run([sys.executable, "tools/compare_hf.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow(15)
def test_compare_passes_and_fails_by_tolerance(hf_dir, image, tokenizer_dir):
    args = ["--hf", str(hf_dir), "--tokenizer", str(tokenizer_dir), "--image", str(image), "--prompt", "What is on this page?"]
    ok = _run(args + ["--atol", "1e-4"])
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "top-1 agreement 100.00%" in ok.stdout
    code, out, _ = run_tool("tools/compare_hf.py", args + ["--atol", "-1"])[0]  # same CLI, no new interpreter
    assert code == 1 and "FAIL" in out


def test_bad_input_is_one_line(tmp_path):
    bad = _run(["--hf", str(tmp_path)])
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "config.json" in bad.stderr


def test_compare_at_tp2_pp2(hf_dir, image, tokenizer_dir):
    args = ["--hf", str(hf_dir), "--tokenizer", str(tokenizer_dir), "--image", str(image), "--tp", "2", "--pp", "2",
            "--sequence-parallel", "--atol", "1e-4"]
    # main() on 4 ranks with torchrun's environment (tests/dist_utils.run_tool); rank 0 prints the report
    (code, out, err), *others = run_tool("tools/compare_hf.py", args, world_size=4, timeout_s=400)
    assert code == 0 and all(c == 0 for c, _, _ in others), out[-2000:] + err[-3000:]
    assert "tp=2 pp=2" in out and "top-1 agreement 100.00%" in out
