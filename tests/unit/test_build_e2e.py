"""End to end on the real path: sample PDFs -> pool (pymupdf renders) -> synth (template teacher) -> build -> loader.

Checks that the loader's token counts equal build's for every sample, that its pixels equal HF's
Qwen2VLImageProcessor on the pool's own page images, and that the labels spell the answers.
"""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from megatron_vlm.data import pool
from megatron_vlm.data.build import build
from megatron_vlm.data.loader import PackedLoader
from megatron_vlm.data.recipe import DataRecipe
from megatron_vlm.data.sample_pdfs import make_corpus
from megatron_vlm.data.synth.run import synthesize
from megatron_vlm.data.tokens import load_tokenizer
from megatron_vlm.models.family import get_family


@pytest.fixture(scope="module")
def real_pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    make_corpus(root / "pdfs", n_docs=3, pages=(4, 6), seed=1)
    pool.build_pool(root / "pdfs", root / "pool", dpi=36, no_ocr=True)
    synthesize(root / "pool", root / "qa", teacher="template", segment_pages=(2, 3),
               tasks=["extract-single", "extract-multi", "reasoning", "ocr-needle"])
    return root


def test_pool_to_loader(real_pool, qwen_tokenizer_dir, tmp_path):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    lines = [json.loads(x) for f in sorted((real_pool / "qa").glob("records-*.jsonl")) for x in f.read_text().splitlines()]
    records = {r["id"]: r for r in lines}
    tasks = sorted({r["task"] for r in lines})
    assert len(tasks) >= 3, tasks
    recipe = DataRecipe(tokenizer=str(qwen_tokenizer_dir), max_seq_length=8192, length_distribution="custom",
                        length_histogram={"0-8193": 1}, mixture=dict.fromkeys(tasks, 1.0),
                        token_budget=12 * 1200, samples_per_shard=3)
    index = build(real_pool / "pool", real_pool / "qa", recipe, tmp_path / "shards", get_family("qwen2_5_vl"))
    assert index["totals"]["samples"] >= 8 and not index["dropped"]

    built = {}
    for shard in index["shards"]:
        import tarfile

        with tarfile.open(tmp_path / "shards" / shard["name"]) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    meta = json.loads(tf.extractfile(m).read())
                    built[meta["id"]] = meta
    pages = {doc["id"]: imgs for doc, imgs in pool.iter_documents(real_pool / "pool", images=True)}
    hf = Qwen2VLImageProcessorPil(min_pixels=index["min_pixels"], max_pixels=index["max_pixels"])
    tok = load_tokenizer(qwen_tokenizer_dir)

    seen = set()
    torch.set_num_threads(1)
    loader = PackedLoader(tmp_path / "shards", qwen_tokenizer_dir, "qwen2_5_vl", num_workers=0, pack_buffer=4, epochs=1)
    for batch in loader:
        cu = batch["cu_seqlens"].tolist()
        row = 0
        grids = iter(batch["image_grid_thw"])
        for k, sid in enumerate(batch["sample_ids"]):
            if sid == "padding":
                continue
            meta = built[sid]
            assert cu[k + 1] - cu[k] == meta["num_tokens"] == batch["sample_num_tokens"][k]
            # Pixels equal HF's processor on the pool's own page images.
            images = [Image.open(io.BytesIO(pages[meta["doc_id"]][p])) for p in meta["pages"]]
            ref = hf(images=images, return_tensors="pt")
            n = ref["pixel_values"].shape[0]
            torch.testing.assert_close(batch["pixel_values"][row : row + n], ref["pixel_values"].float(), rtol=1e-6, atol=1e-6)
            assert torch.equal(torch.stack([next(grids) for _ in meta["pages"]]), ref["image_grid_thw"])
            row += n
            # The loss is on the answer (and the <|im_end|> closing it), nothing else.
            labels = batch["labels"][0, cu[k] : cu[k + 1]]
            assert tok.decode(labels[labels != -100].tolist(), skip_special_tokens=False) == records[meta["record_id"]]["answer"] + "<|im_end|>"
            seen.add(sid)
        assert row == batch["pixel_values"].shape[0]
    assert seen == set(built) and not loader.skipped
