"""Short-context share from a user dataset (JSONL and WebDataset, LLaVA-OneVision style)."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch
from PIL import Image

from megatron_vlm.data import stats
from megatron_vlm.data.build import build
from megatron_vlm.data.loader import PackedLoader
from megatron_vlm.data.recipe import DataRecipe
from megatron_vlm.data.short_source import load_short_samples
from megatron_vlm.models.family import get_family
from tests.shards_fixtures import write_pool, write_records


def _png(h, w, shade):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (shade, 100, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _jsonl_source(d):
    d.mkdir()
    rows = []
    for i in range(6):
        (d / f"img{i}.png").write_bytes(_png(56 + 28 * i, 84, 10 * i))
        rows.append({"id": f"llava.{i}", "image": f"img{i}.png",
                     "conversations": [{"from": "human", "value": f"<image>\nWhat colour is picture {i}?"}, {"from": "gpt", "value": f"blue {i}"}]})
    rows.append({"id": "no-answer", "image": "img0.png", "conversations": [{"from": "human", "value": "<image>\nhi"}]})
    rows.append({"id": "no-image", "image": "missing.png", "question": "q", "answer": "a"})
    (d / "short.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "short.jsonl"


def _wds_source(d):
    d.mkdir()
    with tarfile.open(d / "short-000.tar", "w") as tf:
        for i in range(5):
            for name, data in ((f"s{i}.json", json.dumps({"question": f"Count the boxes in {i}.", "answer": str(i)}).encode()),
                               (f"s{i}.jpg", _png(84, 56 + 28 * i, 30 * i)), (f"s{i}.png", _png(56, 56, 1))):
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return d


def test_readers(tmp_path):
    samples, skipped = load_short_samples(_jsonl_source(tmp_path / "j"))
    assert [s.question for s in samples][:2] == ["What colour is picture 0?", "What colour is picture 1?"]
    assert [s.answer for s in samples][-1] == "blue 5" and len(samples) == 6
    assert skipped == {"short-record-unreadable": 1, "short-image-missing": 1}
    samples, skipped = load_short_samples(_wds_source(tmp_path / "w"))
    assert len(samples) == 5 and all(len(s.images) == 2 for s in samples) and not skipped


@pytest.mark.parametrize("kind", ["jsonl", "wds"])
def test_short_share_is_hit_and_loads(tmp_path, qwen_tokenizer_dir, kind):
    counts = [3, 4, 5, 2, 6, 3, 4, 5]
    ids = write_pool(tmp_path / "pool", counts, page_px=(56, 84))
    write_records(tmp_path / "qa", ids, counts)
    source = _jsonl_source(tmp_path / "src") if kind == "jsonl" else _wds_source(tmp_path / "src")
    recipe = DataRecipe(tokenizer=str(qwen_tokenizer_dir), max_seq_length=1024, length_distribution="custom",
                        length_histogram={"0-1025": 1}, short_share=0.25, short_source=str(source),
                        token_budget=200 * 100, max_repeats=20, samples_per_shard=16)
    index = build(tmp_path / "pool", tmp_path / "qa", recipe, tmp_path / "out", get_family("qwen2_5_vl"))
    report = stats.compute(tmp_path / "out")
    assert report["targets_met"], stats.render_markdown(report)
    got = {r["task"]: r["achieved"] for r in report["mixture"]}
    assert abs(got["short"] - 0.25) <= 0.01 and abs(got["extract-single"] - 0.3) <= 0.01
    if kind == "jsonl":
        assert index["dropped"] == {"short-image-missing": 1, "short-record-unreadable": 1}
    torch.set_num_threads(1)
    n_short = 0
    loader = PackedLoader(tmp_path / "out", qwen_tokenizer_dir, "qwen2_5_vl", num_workers=0, epochs=1)
    for batch in loader:
        n_short += batch["sample_tasks"].count("short")
    assert not loader.skipped and n_short == round(0.25 * index["totals"]["samples"]) and n_short > 0
