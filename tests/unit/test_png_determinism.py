"""The pool's PNG bytes are the same in every process (issue 18: with ISA-L they differed for the
same pixels in about 1 process in 30). 100 fresh interpreters each dirty their heap differently,
then encode the same small page; all must give identical bytes, which decode to the pixels."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from megatron_vlm.data.png import png_bytes

REPO = Path(__file__).resolve().parents[2]
PROCESSES = 100
PAGE = """
def page():
    # A small text-like page, grey and in colour: white with dark strokes and a tinted band.
    rng = np.random.default_rng(5)
    grey = np.full((90, 120), 255, np.uint8)
    for _ in range(60):
        y, x = rng.integers(0, 84), rng.integers(0, 114)
        grey[y : y + 6, x : x + 5] = rng.integers(0, 200)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgb[10:20, :, :2] = 200
    return [grey, rgb]
"""
CHILD = r"""
import hashlib, os, random, sys
import numpy as np
rng = random.Random(int(sys.argv[1]))
keep = []  # leave freed and live blocks of many sizes behind, different in every process
for _ in range(rng.randint(0, 300)):
    keep.append(bytearray(os.urandom(rng.randint(1, 200_000))))
    if rng.random() < 0.5:
        keep.pop(rng.randrange(len(keep)))
from megatron_vlm.data.png import png_bytes
""" + PAGE + r"""
for pixels in page():
    print(hashlib.sha256(png_bytes(pixels)).hexdigest())
"""
namespace = {"np": np}
exec(PAGE, namespace)
page = namespace["page"]


@pytest.mark.slow(seconds=30)
def test_png_bytes_are_the_same_in_fresh_processes():
    expected = [hashlib.sha256(png_bytes(p)).hexdigest() for p in page()]
    for pixels in page():
        with Image.open(BytesIO(png_bytes(pixels))) as im:
            assert np.array_equal(np.asarray(im), pixels)
    seen: dict[tuple, int] = {}
    for start in range(0, PROCESSES, 4):  # four fresh interpreters at a time
        procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(i)], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(start, start + 4)]
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            key = tuple(out.split())
            seen[key] = seen.get(key, 0) + 1
    assert seen == {tuple(expected): PROCESSES}
