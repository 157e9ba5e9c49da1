"""The data path for Qwen3-VL: build (from a recipe with model.kind qwen3_vl) and the packed loader.

The transfer experiment rebuilds shards for Qwen3-VL from the same pool and QA records; every
count follows the family's 32x32-pixel rule. The loader's samples equal what HF's Qwen3-VL
processor (built from the reference files) and its chat template make: token ids, pixel grids,
labels on the answer tokens only, and mRoPE ids per sub-sequence equal to HF's get_rope_index.
"""

from __future__ import annotations

import io
import json

import pytest
import torch
import yaml
from PIL import Image

from megatron_vlm.data import tokens
from megatron_vlm.data.loader import PackedLoader
from megatron_vlm.data.packing import IGNORE_INDEX
from megatron_vlm.models.family import get_family
from tests.shards_fixtures import one_thread, write_pool, write_records  # noqa: F401  (autouse fixture)
from tools.preprocess_data import main as cli

PAGE_PX = (300, 232)
# By hand: Qwen3-VL (32 px per token, >= 65,536 px): 300x232 = 69,600 px rounds to 288x224 = 64,512,
# below the minimum, so it is scaled up: ceil(300 * 0.9704 / 32) * 32 = 320, ceil(232 * 0.9704 / 32) * 32 = 256
# -> ViT grid 20 x 16 patches of 16 px, 10 x 8 = 80 tokens. Qwen2.5-VL (28 px): 308 x 224 -> 22 x 16, 88 tokens.
BY_HAND = {"qwen3_vl": ([1, 20, 16], 80), "qwen2_5_vl": ([1, 22, 16], 88)}
COUNTS = [2, 3, 1, 4, 2, 3, 1, 2]


@pytest.fixture(scope="module")
def built(tmp_path_factory, qwen3_tokenizer_dir, qwen_tokenizer_dir):
    """One pool and one set of QA records; shards built for each family by the build CLI."""
    root = tmp_path_factory.mktemp("q3")
    ids = write_pool(root / "pool", COUNTS, page_px=PAGE_PX, docs_per_tar=3)
    write_records(root / "qa", ids, COUNTS)
    out = {}
    for kind, tok in (("qwen3_vl", qwen3_tokenizer_dir), ("qwen2_5_vl", qwen_tokenizer_dir)):
        data = {"tokenizer": str(tok), "max_seq_length": 1024, "length_distribution": "custom",
                "length_histogram": {"0-1025": 1}, "token_budget": 24 * 300, "samples_per_shard": 5}
        recipe = root / f"{kind}.yaml"
        recipe.write_text(yaml.safe_dump({"model": {"kind": kind}, "data": data}))
        assert cli(["build", "--pool", str(root / "pool"), "--qa", str(root / "qa"), "--recipe", str(recipe),
                    "--output", str(root / kind)]) == 0
        out[kind] = root / kind
    return out


def _records(shard_dir):
    """Every sample of a build as (json, page images), read with webdataset (the independent reader)."""
    import webdataset as wds

    index = json.loads((shard_dir / "index.json").read_text())
    urls = [str(shard_dir / s["name"]) for s in index["shards"]]
    out = {}
    for s in wds.WebDataset(urls, shardshuffle=False):
        meta = json.loads(s["json"])
        pages = [Image.open(io.BytesIO(s[k])) for k in sorted(k for k in s if k.startswith("i"))]
        out[meta["id"]] = (meta, pages)
    return index, out


@pytest.mark.parametrize("kind", sorted(BY_HAND))
def test_build_counts_with_the_recipes_family(built, kind, qwen3_tokenizer_dir, qwen_tokenizer_dir):
    index, records = _records(built[kind])
    family = get_family(kind)
    assert index["family"] == kind and index["chat_format"] == family.chat.version
    assert (index["min_pixels"], index["max_pixels"]) == (family.image.min_pixels, family.image.max_pixels)
    grid, page_tokens = BY_HAND[kind]
    tok = tokens.load_tokenizer(qwen3_tokenizer_dir if kind == "qwen3_vl" else qwen_tokenizer_dir)
    assert records
    for meta, pages in records.values():
        assert meta["grids"] == [grid] * len(pages)
        assert meta["num_tokens"] == tokens.count_tokens(tok, family, meta["question"], meta["answer"],
                                                         [page_tokens] * len(pages))


def test_loader_refuses_shards_of_the_other_family(built, qwen3_tokenizer_dir, qwen_tokenizer_dir):
    with pytest.raises(ValueError, match="built for model family qwen2_5_vl, this run trains qwen3_vl"):
        PackedLoader(built["qwen2_5_vl"], qwen3_tokenizer_dir, "qwen3_vl")
    with pytest.raises(ValueError, match="built for model family qwen3_vl, this run trains qwen2_5_vl"):
        PackedLoader(built["qwen3_vl"], qwen_tokenizer_dir, "qwen2_5_vl")


def test_loader_samples_equal_hf_processor(built, qwen3_tokenizer_dir, qwen3_processor_dir, qwen3_hf_rope):
    """Each packed sub-sequence: HF's token ids (processor + chat template), grids and pixels (within
    two 8-bit levels of the published torchvision processor), labels exactly on the answer and its
    <|im_end|>, and HF's mRoPE ids for that sample alone."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(qwen3_processor_dir)
    _, records = _records(built["qwen3_vl"])
    loader = PackedLoader(built["qwen3_vl"], qwen3_tokenizer_dir, "qwen3_vl", num_workers=0, pack_buffer=6, epochs=1,
                          pad_multiple=4)
    seen, packed_several = set(), False
    for batch in loader:
        cu = batch["cu_seqlens"].tolist()
        packed_several |= len([s for s in batch["sample_ids"] if s != "padding"]) > 1
        row = 0
        grids = iter(batch["image_grid_thw"].tolist())
        for k, (sid, n) in enumerate(zip(batch["sample_ids"], batch["sample_num_tokens"])):
            if sid == "padding":
                continue
            meta, pages = records[sid]
            messages = [{"role": "user", "content": [{"type": "image"}] * len(pages) + [{"type": "text", "text": meta["question"]}]},
                        {"role": "assistant", "content": [{"type": "text", "text": meta["answer"]}]}]
            text = processor.apply_chat_template(messages, tokenize=False)
            ref = processor(text=[text], images=pages, return_tensors="pt")
            ids = ref["input_ids"][0]
            start = cu[k]
            assert n == len(ids) == meta["num_tokens"]
            assert torch.equal(batch["tokens"][0, start : start + n], ids)
            # Pixels and grids, in the batch's order.
            sample_grids = [next(grids) for _ in pages]
            assert sample_grids == ref["image_grid_thw"].tolist()
            rows = sum(t * h * w for t, h, w in sample_grids)
            ours = batch["pixel_values"][row : row + rows]
            row += rows
            assert float((ours - ref["pixel_values"].float()).abs().max()) <= 2 / 255 / 0.5 + 1e-6
            # Labels: the token after each position, only where that token is the answer or its <|im_end|>.
            prompt = processor.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
            p = len(processor(text=[prompt], images=pages)["input_ids"][0])
            assert torch.equal(ids[:p], processor(text=[prompt], images=pages, return_tensors="pt")["input_ids"][0])
            assert processor.tokenizer.decode(ids[p:]) == meta["answer"] + "<|im_end|>\n"
            expected = torch.full((cu[k + 1] - start,), IGNORE_INDEX)
            expected[p - 1 : n - 2] = ids[p : n - 1]  # the answer tokens and <|im_end|>, not the final "\n"
            assert torch.equal(batch["labels"][0, start : cu[k + 1]], expected)
            # mRoPE ids of the sub-sequence: HF's for the sample alone.
            ref_pos, _ = qwen3_hf_rope(ids, ref["mm_token_type_ids"][0], ref["image_grid_thw"])
            assert torch.equal(batch["position_ids"][:, 0, start : start + n], ref_pos)
            seen.add(sid)
        assert row == batch["pixel_values"].shape[0]
    assert seen == set(records) and packed_several
    assert sum(loader.skipped.values()) == 0
