"""The packed loader on shards built in-test: exact token agreement, split, resume, corrupt data."""

from __future__ import annotations

import json
import random

import pytest
import torch

from megatron_vlm.data.loader import PackedLoader, scan_shard
from megatron_vlm.data.recipe import DataRecipe
from tests.shards_fixtures import (
    build_shards,
    one_thread,  # noqa: F401  (autouse fixture)
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, qwen_tokenizer_dir):
    root = tmp_path_factory.mktemp("ld")
    rng = random.Random(3)
    counts = [rng.randint(1, 6) for _ in range(14)]
    recipe = DataRecipe(tokenizer=str(qwen_tokenizer_dir), max_seq_length=512, length_distribution="custom",
                        length_histogram={"0-513": 1}, token_budget=10**9, samples_per_shard=7)
    recipe.token_budget = 42 * 150  # about one pass over the 42 records
    index = build_shards(root, counts, recipe, page_px=(84, 140), docs_per_tar=5)
    return root / "shards", index


def _all_records(shard_dir, index):
    import webdataset as wds

    urls = [str(shard_dir / s["name"]) for s in index["shards"]]
    return {json.loads(s["json"])["id"]: json.loads(s["json"]) for s in wds.WebDataset(urls, shardshuffle=False)}


def test_token_counts_equal_build_for_every_sample(shards, qwen_tokenizer_dir):
    shard_dir, index = shards
    built = _all_records(shard_dir, index)
    loader = PackedLoader(shard_dir, qwen_tokenizer_dir, "qwen2_5_vl", num_workers=0, pack_buffer=8, epochs=1)
    seen = {}
    for batch in loader:
        cu = batch["cu_seqlens"].tolist()
        assert len(batch["sample_ids"]) == len(cu) - 1
        for k, (sid, n) in enumerate(zip(batch["sample_ids"], batch["sample_num_tokens"])):
            if sid == "padding":
                assert k == len(cu) - 2 and n == 0
                continue
            assert sid not in seen
            seen[sid] = n
            assert cu[k + 1] - cu[k] == n  # pad_multiple 1: the sub-sequence is the sample
        # Variable length (the default): the samples' total rounded up to 128, at most max length 512.
        used = sum(batch["sample_num_tokens"])
        assert cu[-1] == min(512, used + -used % 128) and cu[-1] % 128 == 0
        assert batch["tokens"].shape == (1, cu[-1]) and batch["position_ids"].shape == (3, 1, cu[-1])
        assert batch["pixel_values"].shape == (int(batch["image_grid_thw"].prod(-1).sum()), 1176)
    assert seen == {k: r["num_tokens"] for k, r in built.items()}
    assert sum(loader.skipped.values()) == 0


def _take(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def _same(a, b):
    assert [x["sample_ids"] for x in a] == [x["sample_ids"] for x in b]
    for x, y in zip(a, b):
        for key in ("tokens", "labels", "position_ids", "cu_seqlens", "pixel_values", "image_grid_thw"):
            assert torch.equal(x[key], y[key]), key


@pytest.mark.parametrize("steps_before", [3, 4])
def test_resume_equals_uninterrupted_2dp_2workers(shards, qwen_tokenizer_dir, steps_before):
    shard_dir, _ = shards
    total = 10  # beyond one epoch for each rank: the epoch boundary is crossed after resume
    for rank in range(2):
        kw = dict(dp_rank=rank, dp_size=2, num_workers=2, pack_buffer=4, max_length=256, seq_length_multiple=32)
        straight = _take(PackedLoader(shard_dir, qwen_tokenizer_dir, "qwen2_5_vl", **kw), total)
        assert len({b["tokens"].shape[1] for b in straight}) > 1  # variable length (the default), and it varies
        first = PackedLoader(shard_dir, qwen_tokenizer_dir, "qwen2_5_vl", **kw)
        head = _take(first, steps_before)
        state = json.loads(json.dumps(first.state_dict()))  # what goes into a checkpoint
        assert any(st["buffer"] for st in state["streams"].values())
        if rank == 0:
            resumed = PackedLoader(shard_dir, qwen_tokenizer_dir, "qwen2_5_vl", state=state, **kw)
        else:  # as the trainer does it: from the recipe's data section, then load_state_dict
            recipe = DataRecipe(shards=str(shard_dir), tokenizer=str(qwen_tokenizer_dir), num_workers=2, pack_buffer=4,
                                max_seq_length=256, seed=1234, seq_length_multiple=32)
            resumed = PackedLoader.from_recipe(recipe, "qwen2_5_vl", dp_rank=1, dp_size=2)
            resumed.load_state_dict(state)
        tail = _take(resumed, total - steps_before)
        _same(head + tail, straight)
        first.close()
        resumed.close()


def test_ranks_and_workers_split_without_overlap(shards, qwen_tokenizer_dir):
    shard_dir, index = shards
    per_stream = {}
    for rank in range(2):
        for batch in PackedLoader(shard_dir, qwen_tokenizer_dir, "qwen2_5_vl", dp_rank=rank, dp_size=2, num_workers=2, pack_buffer=4, epochs=1):
            ids = [i for i in batch["sample_ids"] if i != "padding"]
            per_stream.setdefault(rank, []).extend(ids)
    all_ids = per_stream[0] + per_stream[1]
    assert len(all_ids) == len(set(all_ids)) == index["totals"]["samples"]
    assert set(per_stream[0]).isdisjoint(per_stream[1]) and per_stream[0] and per_stream[1]


def test_corrupt_images_and_records_are_skipped_and_counted(shards, qwen_tokenizer_dir, tmp_path):
    import shutil

    shard_dir, index = shards
    bad = tmp_path / "bad"
    shutil.copytree(shard_dir, bad)
    name = index["shards"][0]["name"]
    entries, ok = scan_shard(bad / name)
    assert ok
    with open(bad / name, "r+b") as f:
        off, size = entries[0].images[0]  # garbage image bytes
        f.seek(off)
        f.write(b"\x00" * size)
        off, size = entries[1].json_loc  # broken json
        f.seek(off)
        f.write(b"{" * size)
    # A truncated last shard: its samples after the cut are lost, the rest still load.
    last = bad / index["shards"][-1]["name"]
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2 + 100])
    loader = PackedLoader(bad, qwen_tokenizer_dir, "qwen2_5_vl", num_workers=0, pack_buffer=8, epochs=1)
    got = [sid for batch in loader for sid in batch["sample_ids"] if sid != "padding"]
    sk = loader.skipped
    # The garbage image and the broken json, plus what the cut shard lost (a cut json, missing samples).
    assert sk["corrupt-image"] == 1 and sk["bad-record"] >= 1 and sk["unreadable-tar"] == 1 and sk["missing-record"] >= 1
    assert len(got) == index["totals"]["samples"] - sk["corrupt-image"] - sk["bad-record"] - sk["missing-record"]
    assert set(got) < set(_all_records(shard_dir, index))


def test_image_of_the_wrong_size_is_skipped(shards, qwen_tokenizer_dir, tmp_path):
    """A page image whose size disagrees with the build's grid (so its token count would too)."""
    import io
    import shutil

    from PIL import Image

    shard_dir, index = shards
    bad = tmp_path / "bad"
    shutil.copytree(shard_dir, bad)
    name = index["shards"][0]["name"]
    entries, _ = scan_shard(bad / name)
    off, size = entries[0].images[0]
    buf = io.BytesIO()
    Image.new("RGB", (28, 28), "white").save(buf, format="PNG")
    data = buf.getvalue()
    assert len(data) <= size
    with open(bad / name, "r+b") as f:  # a valid, smaller PNG; trailing bytes are ignored by PIL
        f.seek(off)
        f.write(data)
    loader = PackedLoader(bad, qwen_tokenizer_dir, "qwen2_5_vl", num_workers=0, pack_buffer=8, epochs=1)
    got = [sid for batch in loader for sid in batch["sample_ids"] if sid != "padding"]
    assert dict(loader.skipped) == {"image-size-mismatch": 1}
    assert len(got) == index["totals"]["samples"] - 1


def test_pad_multiple_for_context_parallel(shards, qwen_tokenizer_dir):
    """pad_multiple = 2*CP: every sub-sequence splits into equal CP chunks; the samples are unchanged."""
    shard_dir, index = shards
    built = _all_records(shard_dir, index)
    loader = PackedLoader(shard_dir, qwen_tokenizer_dir, "qwen2_5_vl", num_workers=0, pack_buffer=8, pad_multiple=8, epochs=1)
    n = 0
    for batch in loader:
        cu = batch["cu_seqlens"].tolist()
        assert all((b - a) % 8 == 0 for a, b in zip(cu, cu[1:]))
        for k, sid in enumerate(batch["sample_ids"]):
            if sid != "padding":
                assert batch["sample_num_tokens"][k] == built[sid]["num_tokens"] <= cu[k + 1] - cu[k] < built[sid]["num_tokens"] + 8
                n += 1
    assert n == len(built)


def test_fixed_and_variable_length_hold_the_same_samples(shards, qwen_tokenizer_dir):
    """The mode changes only where a sequence ends: same samples per batch, the variable batch is
    the fixed one with its padding tail cut to < seq_length_multiple tokens."""
    shard_dir, _ = shards
    kw = dict(num_workers=0, pack_buffer=8, pad_multiple=4, epochs=1)
    fixed = list(PackedLoader(shard_dir, qwen_tokenizer_dir, "qwen2_5_vl", variable_seq_length=False, **kw))
    var = list(PackedLoader(shard_dir, qwen_tokenizer_dir, "qwen2_5_vl", seq_length_multiple=32, **kw))
    assert len(fixed) == len(var) > 3
    lengths = set()
    for f, v in zip(fixed, var):
        real = [i for i in v["sample_ids"] if i != "padding"]
        assert real == [i for i in f["sample_ids"] if i != "padding"]
        t = v["tokens"].shape[1]
        used = int(f["cu_seqlens"][len(real)])
        assert f["tokens"].shape[1] == 512 and t % 32 == 0 and used <= t < used + 32
        lengths.add(t)
        for key in ("tokens", "labels", "loss_mask"):
            assert torch.equal(v[key], f[key][:, :t]), key
        assert torch.equal(v["position_ids"], f["position_ids"][:, :, :t])
        assert v["cu_seqlens"][: len(real) + 1].tolist() == f["cu_seqlens"][: len(real) + 1].tolist()
        assert torch.equal(v["pixel_values"], f["pixel_values"])
    assert len(lengths) > 1  # the lengths do vary


# ---------------------------------------------------------------- hostile data: bounded, one taxonomy


def _corrupt_images(src, index, dst, bad=lambda sample_id: True):
    """A copy of the shards in which the images of the samples ``bad(id)`` picks are garbage."""
    import shutil

    shutil.copytree(src, dst)
    for shard in index["shards"]:
        entries, _ = scan_shard(dst / shard["name"])
        with open(dst / shard["name"], "r+b") as f:
            for entry in entries:
                f.seek(entry.json_loc[0])
                if bad(json.loads(f.read(entry.json_loc[1]))["id"]):
                    for off, size in entry.images:
                        f.seek(off)
                        f.write(b"\x00" * size)
    return dst


_FIRST_BATCH = """
import json, sys
from megatron_vlm.data.loader import PackedLoader
kw = json.loads(sys.argv[3])
try:
    batch = next(iter(PackedLoader(sys.argv[1], sys.argv[2], "qwen2_5_vl", **kw)))
    print(json.dumps({"kind": "batch", "ids": batch["sample_ids"]}))
except Exception as err:
    print(json.dumps({"kind": type(err).__name__, "message": str(err)}))
"""


def _first_batch(shard_dir, tokenizer_dir, timeout_s=120, **kw) -> dict:
    """The loader's first batch or error, in a new interpreter with a deadline (a hang fails the test)."""
    import os
    import subprocess
    import sys

    from tests.dist_utils import REPO

    try:
        done = subprocess.run([sys.executable, "-c", _FIRST_BATCH, str(shard_dir), str(tokenizer_dir), json.dumps(kw)],
                              cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1"),
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the loader found no batch and no error in {timeout_s} s (it searches forever)")
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("workers", [0, 1])
def test_all_bad_samples_stop_with_one_line_naming_the_counts(shards, qwen_tokenizer_dir, tmp_path, workers):
    shard_dir, index = shards
    bad = _corrupt_images(shard_dir, index, tmp_path / "bad")
    got = _first_batch(bad, qwen_tokenizer_dir, num_workers=workers, pack_buffer=8)
    assert got["kind"] == "BadDataError", got
    total = index["totals"]["samples"]
    # one stream: a whole epoch (every sample) bad, then it stops, naming the counts
    assert "\n" not in got["message"] and f"{total} bad samples in a row" in got["message"]
    assert f"corrupt-image {total}" in got["message"]


def test_bad_streak_is_bounded_but_good_samples_reset_it(shards, qwen_tokenizer_dir, tmp_path):
    shard_dir, index = shards
    total = index["totals"]["samples"]
    # The first 10 samples of the only stream bad, the rest good (pack_buffer 1: samples in stream order).
    order = [i for b in PackedLoader(shard_dir, qwen_tokenizer_dir, "qwen2_5_vl", num_workers=0, pack_buffer=1, epochs=1)
             for i in b["sample_ids"] if i != "padding"]
    bad = _corrupt_images(shard_dir, index, tmp_path / "bad", bad=set(order[:10]).__contains__)
    stopped = _first_batch(bad, qwen_tokenizer_dir, num_workers=0, pack_buffer=1, max_bad_samples=5)
    assert stopped["kind"] == "BadDataError" and "5 bad samples in a row" in stopped["message"], stopped
    loader = PackedLoader(bad, qwen_tokenizer_dir, "qwen2_5_vl", num_workers=0, pack_buffer=1, epochs=2, max_bad_samples=11)
    got = [sid for batch in loader for sid in batch["sample_ids"] if sid != "padding"]
    assert len(got) == 2 * (total - 10) and loader.skipped == {"corrupt-image": 20}  # 10 per epoch, never 11 in a row


def test_broken_backend_is_fatal_not_counted(shards, qwen_tokenizer_dir, monkeypatch):
    from megatron_vlm.data import loader as loader_module
    from megatron_vlm.data.image_processing import ImageBackendError

    def broken(*args, **kwargs):
        raise ImageBackendError("decoder library missing")

    monkeypatch.setattr(loader_module, "process_images", broken)
    for workers in (0, 1):  # a forked worker inherits the patch
        loader = PackedLoader(shards[0], qwen_tokenizer_dir, "qwen2_5_vl", num_workers=workers, pack_buffer=4)
        with pytest.raises(ImageBackendError) as raised:
            next(loader)
        assert str(raised.value) == "decoder library missing"  # one line, from the worker too
        assert sum(loader.skipped.values()) == 0


def test_member_names_and_index_names_are_validated(shards, qwen_tokenizer_dir, tmp_path):
    import io
    import shutil
    import tarfile

    shard_dir, index = shards
    bad = tmp_path / "bad"
    shutil.copytree(shard_dir, bad)
    name = index["shards"][0]["name"]
    with tarfile.open(bad / name) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf if m.isfile()]
    first_key = members[0][0].name.split(".")[0]
    with tarfile.open(bad / name, "w") as tf:  # the first sample's members renamed to leave the directory
        for member, data in members:
            if member.name.startswith(first_key + "."):
                member.name = "../" + member.name
            tf.addfile(member, io.BytesIO(data))
    loader = PackedLoader(bad, qwen_tokenizer_dir, "qwen2_5_vl", num_workers=0, pack_buffer=8, epochs=1)
    got = [sid for batch in loader for sid in batch["sample_ids"] if sid != "padding"]
    assert dict(loader.skipped) == {"bad-member-name": 1} and len(got) == index["totals"]["samples"] - 1

    tampered = json.loads((bad / "index.json").read_text())
    tampered["shards"][0]["name"] = "../" + name
    (bad / "index.json").write_text(json.dumps(tampered))
    with pytest.raises(ValueError, match="shard name"):
        PackedLoader(bad, qwen_tokenizer_dir, "qwen2_5_vl", num_workers=0)


def test_workers_outlive_the_stop_signals_slurm_sends_to_every_process(shards, qwen_tokenizer_dir):
    """Slurm signals every process of a step; a DataLoader worker killed by SIGTERM would crash its rank."""
    import glob
    import os
    import subprocess
    import time

    loader = PackedLoader(shards[0], qwen_tokenizer_dir, "qwen2_5_vl", num_workers=1, pack_buffer=4)
    first = next(loader)
    workers = [int(p) for path in glob.glob(f"/proc/{os.getpid()}/task/*/children")
               for p in open(path).read().split()]
    assert workers
    for pid in workers:  # from another process, as slurmstepd's (a worker's parent may still end it)
        subprocess.run(["kill", "-TERM", str(pid)], check=True)
        subprocess.run(["kill", "-USR1", str(pid)], check=True)
    time.sleep(1.0)
    more = _take(loader, 8)  # the stream goes on, in the same worker
    loader.close()
    assert first["sample_ids"] and len(more) == 8
def test_shards_of_another_family_are_refused(shards, qwen_tokenizer_dir, tmp_path):
    shard_dir, index = shards
    assert index["family"] == "qwen2_5_vl" and PackedLoader(shard_dir, qwen_tokenizer_dir, "qwen2_5_vl").index
    for name in [s["name"] for s in index["shards"]]:
        (tmp_path / name).symlink_to(shard_dir / name)
    (tmp_path / "index.json").write_text(json.dumps(dict(index, family="another_family")))
    with pytest.raises(ValueError, match="built for model family another_family, this run trains qwen2_5_vl"):
        PackedLoader(tmp_path, qwen_tokenizer_dir, "qwen2_5_vl")
