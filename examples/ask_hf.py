#!/usr/bin/env python
"""Ask an HF Qwen2.5-VL checkpoint (e.g. the trainer's export) one question about one document, with transformers.

    python examples/ask_hf.py --hf HF_DIR --shards SHARD_DIR [--tokenizer DIR] [--max-new-tokens 24]

Takes the first training instance of SHARD_DIR (its pages and question), builds the prompt in the
Qwen2.5-VL chat format (megatron_vlm.data.tokens) with the pages patchified as Qwen's processor
does (megatron_vlm.data.image_processing), runs ``generate`` greedily and prints the question, the
reference answer and the model's answer. The end of the quick start (examples/quickstart.sh).
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path


def first_instance(shard_dir: Path) -> tuple[dict, list[bytes]]:
    shards = sorted(shard_dir.glob("shard-*.tar"))
    if not shards:
        raise SystemExit(f"ask_hf: no shard-*.tar in {shard_dir}")
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(shards[0]) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            members.setdefault(key, {})[ext] = tar.extractfile(member).read()
            if ext == "json" and len(members) > 1:
                break
    key, files = next((k, f) for k, f in members.items() if "json" in f)
    meta = json.loads(files["json"])
    images = [files[ext] for ext in sorted(e for e in files if e.startswith("i"))]
    return meta, images


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf", required=True, help="HF model directory")
    parser.add_argument("--shards", required=True, help="training shards (preprocess_data.py build)")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: the HF directory)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args(argv)

    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from megatron_vlm.data.image_processing import process_images
    from megatron_vlm.data.tokens import load_tokenizer, render_text
    from megatron_vlm.models.family import get_family

    family = get_family("qwen2_5_vl")
    meta, images = first_instance(Path(args.shards))
    pixel_values, grids = process_images(images, family.image)
    tokenizer = load_tokenizer(args.tokenizer or args.hf)
    text, answer_start, _ = render_text(family, meta["question"], "", len(images))
    ids = []
    pad = family.tokens.image_pad
    per_image = iter(family.image.grid_tokens(g) for g in grids.tolist())
    for token in tokenizer.encode(text[:answer_start], add_special_tokens=False).ids:
        ids += [pad] * next(per_image) if token == pad else [token]
    input_ids = torch.tensor([ids])

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(args.hf, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values=pixel_values,
                             image_grid_thw=grids, max_new_tokens=args.max_new_tokens, do_sample=False)
    reply = tokenizer.decode(out[0, input_ids.shape[1]:].tolist(), skip_special_tokens=True)
    print(f"[ask] document {meta['doc_id']}: {len(images)} pages, {len(ids)} prompt tokens")
    print(f"[ask] question:  {meta['question']}")
    print(f"[ask] reference: {meta['answer']}")
    print(f"[ask] model:     {reply!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
