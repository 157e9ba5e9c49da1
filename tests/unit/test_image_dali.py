"""The dali image backend's contract, on CPU, with a stand-in ``nvidia.dali`` in ``sys.modules``.

The stand-in follows the parts of DALI's Python API that ``image_dali`` uses (``pipeline_def``,
``fn.external_source(name=...)`` fed by ``Pipeline.feed_input``, ``fn.decoders.image``,
``fn.resize``, ``run()`` returning TensorLists with ``as_cpu().at(i)``) and does the work with
PIL, so its pixels equal the pil backend's. It records every pipeline built (GPU, batch size).
What is checked:

- each rank decodes on its own GPU (``device_id`` passed down, else ``LOCAL_RANK``), not on 0;
- one pipeline per (process, GPU), reused across calls and micro-batches, not one per sample;
- a corrupt image is a bad sample (counted by the loader), a backend that fails on images PIL
  decodes, or DALI missing, is ``ImageBackendError``: fatal, with its reason, also across a
  DataLoader worker;
- the loader's workers start with ``spawn`` once CUDA is initialised (never forked after), and
  the loader pickles for them mid-iteration.
Real DALI against PIL on a GPU: tests/gpu/test_dali.py.
"""

from __future__ import annotations

import io
import pickle
import random
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from megatron_vlm.data import image_dali
from megatron_vlm.data.image_processing import ImageBackendError, process_images
from megatron_vlm.models.family import get_family
from tests.shards_fixtures import (
    build_shards,
    one_thread,  # noqa: F401  (autouse fixture)
)

QWEN = get_family("qwen2_5_vl").image


class _Node:
    def __init__(self, compute):
        self.compute = compute  # feeds -> list of per-sample values


class _TensorList:
    def __init__(self, arrays):
        self.arrays = arrays

    def as_cpu(self):
        return self

    def at(self, i):
        return self.arrays[i]


class FakeDali:
    """State of the stand-in: pipelines built, and an error that every run() raises when set."""

    def __init__(self):
        self.builds: list[tuple[int, int]] = []
        self.runs = 0
        self.fail_with: Exception | None = None

    def module(self) -> types.ModuleType:
        fake = self
        dali = types.ModuleType("nvidia.dali")
        dali.types = types.SimpleNamespace(UINT8="u8", FLOAT="f32", RGB="rgb", INTERP_CUBIC="cubic")

        class Pipeline:
            def __init__(self, graph, batch_size, device_id, **kw):
                self.graph, self.batch_size, self.device_id, self.feeds, self.out = graph, batch_size, device_id, {}, None

            def build(self):
                self.out = self.graph()
                fake.builds.append((self.device_id, self.batch_size))

            def feed_input(self, name, data):
                assert len(data) <= self.batch_size
                self.feeds[name] = list(data)

            def run(self):
                fake.runs += 1
                if fake.fail_with is not None:
                    raise fake.fail_with
                return (_TensorList(self.out.compute(self.feeds)),)

        def pipeline_def(**kw):
            return lambda graph: lambda: Pipeline(graph, **kw)

        def decode(node, device, output_type):
            assert device == "mixed" and output_type == "rgb"
            return _Node(lambda feeds: [np.array(Image.open(io.BytesIO(b.tobytes())).convert("RGB")) for b in node.compute(feeds)])

        def resize(images, resize_x, resize_y, interp_type, antialias):
            def compute(feeds):
                out = []
                for a, w, h in zip(images.compute(feeds), resize_x.compute(feeds), resize_y.compute(feeds)):
                    img = Image.fromarray(a)
                    if (int(h), int(w)) != a.shape[:2]:
                        img = img.resize((int(w), int(h)), resample=Image.Resampling.BICUBIC)
                    out.append(np.array(img))
                return out

            return _Node(compute)

        dali.fn = types.SimpleNamespace(
            external_source=lambda name, dtype: _Node(lambda feeds: feeds[name]),
            decoders=types.SimpleNamespace(image=decode),
            resize=resize,
        )
        dali.pipeline_def = pipeline_def
        return dali


@pytest.fixture
def fake_dali(monkeypatch):
    fake = FakeDali()
    nvidia = types.ModuleType("nvidia")
    nvidia.dali = fake.module()
    monkeypatch.setitem(sys.modules, "nvidia", nvidia)
    monkeypatch.setitem(sys.modules, "nvidia.dali", nvidia.dali)
    monkeypatch.setattr(image_dali, "_DECODERS", {})
    return fake


def _png(h: int, w: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_one_pipeline_per_gpu_reused_and_equal_to_pil(fake_dali, monkeypatch):
    datas = [_png(60 + i, 90 - i, i) for i in range(40)]  # more than one run's batch
    want, want_grid = process_images(datas, QWEN, backend="pil")
    for _ in range(3):
        got, grid = process_images(datas, QWEN, backend="dali", device_id=1)
        assert torch.equal(got, want) and torch.equal(grid, want_grid)
    assert fake_dali.builds == [(1, image_dali.MAX_BATCH)]  # built once, on this rank's GPU
    assert fake_dali.runs == 3 * 2
    monkeypatch.setenv("LOCAL_RANK", "3")  # no device given, CUDA not started here: the rank's own
    process_images(datas[:2], QWEN, backend="dali")
    assert fake_dali.builds[-1] == (3, image_dali.MAX_BATCH)


def test_bad_image_is_the_samples_fault_a_failing_backend_is_fatal(fake_dali):
    good = [_png(56, 56, 0), _png(30, 40, 1)]
    truncated = good[1][: len(good[1]) // 2]  # its header reads, its pixels do not
    with pytest.raises(OSError) as bad:
        process_images([good[0], truncated], QWEN, backend="dali", device_id=0)
    assert not isinstance(bad.value, ImageBackendError)

    fake_dali.fail_with = RuntimeError("nvJPEG error: CUDA driver version is insufficient")
    with pytest.raises(ImageBackendError, match="DALI failed on GPU 0 .*nvJPEG error"):
        process_images(good, QWEN, backend="dali", device_id=0)
    fake_dali.fail_with = None
    builds = len(fake_dali.builds)
    process_images(good, QWEN, backend="dali", device_id=0)
    assert len(fake_dali.builds) == builds + 1  # the failed pipeline was not reused


@pytest.fixture(scope="module")
def shards(tmp_path_factory, qwen_tokenizer_dir):
    from megatron_vlm.data.recipe import DataRecipe

    root = tmp_path_factory.mktemp("dali")
    recipe = DataRecipe(tokenizer=str(qwen_tokenizer_dir), max_seq_length=512, length_distribution="custom",
                        length_histogram={"0-513": 1}, token_budget=12 * 150, samples_per_shard=4)
    counts = [random.Random(5).randint(1, 4) for _ in range(6)]
    build_shards(root, counts, recipe, page_px=(84, 140), docs_per_tar=3)
    return root / "shards"


def _loader(shard_dir, tokenizer, **kw):
    from megatron_vlm.data.loader import PackedLoader

    return PackedLoader(shard_dir, tokenizer, "qwen2_5_vl", pack_buffer=4, epochs=1, image_backend="dali", **kw)


def test_loader_dali_missing_or_without_gpu_stops_in_one_line(shards, qwen_tokenizer_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # not installed
    with pytest.raises(ImageBackendError, match="needs NVIDIA DALI"):
        _loader(shards, qwen_tokenizer_dir, num_workers=0)
    monkeypatch.setitem(sys.modules, "nvidia.dali", types.ModuleType("nvidia.dali"))
    with pytest.raises(ImageBackendError, match="needs a CUDA GPU"):
        _loader(shards, qwen_tokenizer_dir, num_workers=0)


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_backend_failure_is_fatal_bad_image_is_counted(shards, qwen_tokenizer_dir, fake_dali, monkeypatch, workers):
    from megatron_vlm.data.loader import scan_shard

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the check at construction passes
    loader = _loader(shards, qwen_tokenizer_dir, num_workers=workers)
    assert loader.image_device == 0
    total = sum(len([s for s in b["sample_ids"] if s != "padding"]) for b in loader)
    assert total > 0 and sum(loader.skipped.values()) == 0

    name = sorted(p.name for p in shards.glob("*.tar"))[0]
    broken = shards.parent / f"broken-{workers}"
    import shutil

    shutil.copytree(shards, broken)
    entries, _ = scan_shard(broken / name)
    off, size = entries[0].images[0]
    with open(broken / name, "r+b") as f:  # keep the PNG header, zero the pixel data
        f.seek(off + 64)
        f.write(b"\x00" * (size - 64))
    loader = _loader(broken, qwen_tokenizer_dir, num_workers=workers)
    assert sum(len([s for s in b["sample_ids"] if s != "padding"]) for b in loader) == total - 1
    assert dict(loader.skipped) == {"corrupt-image": 1}

    fake_dali.fail_with = RuntimeError("CUDA error: initialization error")
    loader = _loader(shards, qwen_tokenizer_dir, num_workers=workers)
    with pytest.raises(ImageBackendError, match="initialization error"):
        next(loader)


def test_workers_spawn_after_cuda_init_and_the_loader_pickles(shards, qwen_tokenizer_dir, monkeypatch):
    from megatron_vlm.data.loader import PackedDataset, PackedLoader, worker_start_method

    assert worker_start_method() is None  # CPU: the platform default
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert worker_start_method() == "spawn"
    monkeypatch.undo()
    loader = PackedLoader(shards, qwen_tokenizer_dir, "qwen2_5_vl", num_workers=0, pack_buffer=4, epochs=1)
    next(loader)  # the live iterator must not travel to a spawned worker
    copy = pickle.loads(pickle.dumps(PackedDataset(loader))).loader
    assert copy._it is None and copy.stream_states == loader.stream_states
