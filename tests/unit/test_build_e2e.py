"""End to end on a real pool: sample PDFs -> pool (pymupdf renders) -> QA records -> build -> loader.

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
from megatron_vlm.data.tokens import load_tokenizer


@pytest.fixture(scope="module")
def real_pool(tmp_path_factory):
    import argparse

    root = tmp_path_factory.mktemp("e2e")
    make_corpus(root / "pdfs", n_docs=3, pages=(3, 5), seed=1)
    parser = argparse.ArgumentParser()
    pool.add_arguments(parser)
    args = parser.parse_args(["--input", str(root / "pdfs"), "--output", str(root / "pool"), "--dpi", "36", "--no-ocr", "--quiet"])
    assert pool.main(args) == 0
    return root


def _records_from_pool(pool_dir, qa_dir):
    """Simple verifiable QA from each document's first text block (a stand-in for the template teacher)."""
    qa_dir.mkdir()
    lines = []
    for doc, _ in pool.iter_documents(pool_dir):
        n = doc["num_pages"]
        for task, page in (("extract-single", n - 1), ("reasoning", 0)):
            block = next(b for b in doc["pages"][page]["blocks"] if b["text"].strip())
            lines.append({"id": f"{doc['id']}-{task}", "doc_id": doc["id"], "task": task, "segment": [0, n],
                          "question": f"What is the first heading or line of text on page {page + 1}?",
                          "answer": block["text"].splitlines()[0], "evidence_pages": [page]})
    (qa_dir / "records-00000.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {x["id"]: x for x in lines}


def test_pool_to_loader(real_pool, qwen_tokenizer_dir, tmp_path):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    records = _records_from_pool(real_pool / "pool", tmp_path / "qa")
    recipe = DataRecipe(tokenizer=str(qwen_tokenizer_dir), max_seq_length=4096, length_distribution="custom",
                        length_histogram={"0-4097": 1}, mixture={"extract-single": 0.5, "reasoning": 0.5},
                        token_budget=1, samples_per_shard=2)
    recipe.token_budget = 6 * 800
    index = build(real_pool / "pool", tmp_path / "qa", recipe, tmp_path / "shards")
    assert index["totals"]["samples"] >= 6 and not index["dropped"]

    built = {}
    for shard in index["shards"]:
        import tarfile

        with tarfile.open(tmp_path / "shards" / shard["name"]) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    meta = json.loads(tf.extractfile(m).read())
                    built[meta["id"]] = meta
    pages = {doc["id"]: imgs for doc, imgs in pool.iter_documents(real_pool / "pool", images=True)}
    hf = Qwen2VLImageProcessorPil(min_pixels=recipe.min_pixels, max_pixels=recipe.max_pixels)
    tok = load_tokenizer(qwen_tokenizer_dir)

    seen = set()
    torch.set_num_threads(1)
    for batch in PackedLoader(tmp_path / "shards", qwen_tokenizer_dir, num_workers=0, pack_buffer=4, epochs=1):
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
    assert seen == set(built)
