#!/usr/bin/env python
"""Loader throughput and packing efficiency on a pool-native recipe, with real rendered pages.

    PYTHONPATH=$PWD python benchmarks/bench_loader.py --tokenizer TOKENIZER_DIR [--docs 60] [--sequences 6]
        [--pages-range 32 50] [--pack-buffer 32] [--pad-multiple 8] [--seq-length-multiple 128]
        [--image-backend pil|dali] [--workdir DIR]

Renders a few US-Letter pages of the sample PDF corpus with the pool stage at 144 DPI
(1224x1584, resized by the loader to 1232x1596 = 2,508 tokens), writes a pool of documents with page counts drawn from
``--pages-range`` whose pages cycle through those renders, synthesizes QA records, builds
shards with a pool-native recipe at max length 131,072, then:
  - loader throughput: 128K-token packed sequences per second of one loader worker (decode,
    resize, normalise, patchify, tokenize, pack, mRoPE), timed over ``--sequences`` sequences;
  - packing efficiency (sample tokens / total) of the loader's best-fit rule over every sample
    built (metadata only, in shard order), and over the sequences the loader produced, in both
    modes: fixed length (every sequence padded to 131,072) and variable length (the recipe
    default: each sub-sequence padded to ``--pad-multiple``, 2 x CP of the 7B recipe, and the
    sequence to ``--seq-length-multiple``).
With the paper's pool-native page range (32-50 pages of ~2,508 tokens, 80K-125K tokens per
instance) no two instances fit in 131,072 tokens, so fixed-length efficiency is bounded by mean
length / 131,072 (~80%) whatever the packer; variable length loses only the rounding.
``--pages-range 1 50`` shows the packer on a pool's full range.
Prints the figures and the command that produced them.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shlex
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def render_pages(n: int, seed: int) -> list[bytes]:
    """Page images of the sample PDF corpus as the pool stage writes them (144 DPI; grey pages as L)."""
    from megatron_vlm.data.pool import build_pool, iter_documents
    from megatron_vlm.data.sample_pdfs import make_corpus

    tmp = Path(tempfile.mkdtemp())
    make_corpus(tmp / "pdfs", n_docs=1, pages=(n, n), seed=seed)
    build_pool(tmp / "pdfs", tmp / "pool", no_ocr=True)
    (_, images), = iter_documents(tmp / "pool", images=True)
    return [images[i] for i in sorted(images)]


def _add(tf, name, data):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))


def write_pool_and_records(root: Path, pages: list[bytes], page_counts: list[int], seed: int) -> None:
    """A pool (docs/formats.md s.1) whose documents cycle through ``pages``, and 3 QA records each."""
    from PIL import Image

    h, w = Image.open(io.BytesIO(pages[0])).size[::-1]
    (root / "pool" / "shards").mkdir(parents=True)
    (root / "qa").mkdir()
    rng = random.Random(seed)
    manifest, records = [], []
    shard = "shards/pool-00000-00000.tar"
    with tarfile.open(root / "pool" / shard, "w") as tf:
        for d, n in enumerate(page_counts):
            doc_id = f"{d:016x}"
            page_json = [{"index": i, "width_pt": 612.0, "height_pt": 792.0, "height_px": h, "width_px": w} for i in range(n)]
            _add(tf, f"{doc_id}.json", json.dumps({"id": doc_id, "num_pages": n, "dpi": 144, "pages": page_json}).encode())
            for i in range(n):
                _add(tf, f"{doc_id}.p{i:04d}.png", pages[(d + i) % len(pages)])
            manifest.append({"id": doc_id, "status": "ok", "shard": shard, "pages": n})
            for task in ("extract-single", "extract-multi", "reasoning"):
                seg = min(n, rng.randint(8, 15))
                first = rng.randint(0, n - seg)
                records.append({"id": f"{doc_id}-{task}", "doc_id": doc_id, "task": task, "segment": [first, first + seg],
                                "question": "What was the total revenue of the northern unit in the second quarter?",
                                "answer": str(rng.randint(100, 99999)), "evidence_pages": [first + seg // 2]})
    (root / "pool" / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
    (root / "qa" / "records-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def simulate_packing(lengths: list[int], max_length: int, buffer: int, pad_multiple: int = 1,
                     length_multiple: int = 128) -> tuple[float, float]:
    """(fixed, variable) efficiency of the loader's best fit over a stream of sample lengths (metadata only)."""
    from megatron_vlm.data.packing import choose_best_fit, padded_length, sequence_length

    stream, buf, used = iter(lengths), [], 0
    fixed_total = variable_total = 0
    while True:
        buf += [x for _, x in zip(range(buffer - len(buf)), stream)]
        if not buf:
            break
        padded = [padded_length(x, pad_multiple) for x in buf]
        chosen = set(choose_best_fit(padded, max_length))
        used += sum(buf[i] for i in chosen)
        fixed_total += max_length
        variable_total += sequence_length(sum(padded[i] for i in chosen), max_length, length_multiple)
        buf = [x for i, x in enumerate(buf) if i not in chosen]
    return used / fixed_total, used / variable_total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--docs", type=int, default=60)
    p.add_argument("--sequences", type=int, default=6, help="packed sequences to time the loader on (0: packing only)")
    p.add_argument("--pages-range", type=int, nargs=2, default=[32, 50])
    p.add_argument("--pack-buffer", type=int, default=32)
    p.add_argument("--pad-multiple", type=int, default=8, help="sub-sequence padding (2 x CP; the 7B recipe's 8)")
    p.add_argument("--seq-length-multiple", type=int, default=128, help="variable-length sequences end at a multiple of this")
    p.add_argument("--budget", type=int, default=0, help="token budget for the build (default: ~2 passes over the pool)")
    p.add_argument("--image-backend", default="pil", choices=["pil", "dali"])
    p.add_argument("--workdir", default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    command = "PYTHONPATH=$PWD python benchmarks/bench_loader.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))

    import torch

    torch.set_num_threads(1)  # one loader worker = one core
    from megatron_vlm.data.build import build
    from megatron_vlm.data.recipe import DataRecipe
    from megatron_vlm.models.family import get_family

    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_loader_"))
    rng = random.Random(args.seed)
    lo, hi = args.pages_range
    counts = [rng.randint(lo, hi) for _ in range(args.docs)]
    print(f"bench: rendering pages and writing a pool of {args.docs} documents ({lo}-{hi} pages) under {root}", flush=True)
    write_pool_and_records(root, render_pages(8, args.seed), counts, args.seed)
    recipe = DataRecipe(tokenizer=args.tokenizer, length_distribution="pool-native", pages_range=[lo, hi], seed=args.seed,
                        token_budget=args.budget or 2 * 3 * sum(counts) * 2508, pack_buffer=args.pack_buffer)
    index = build(root / "pool", root / "qa", recipe, root / "shards", get_family("qwen2_5_vl"))

    lengths = [json.loads(line)["num_tokens"] for line in _instance_lines(root / "shards", index)]
    fixed, variable = simulate_packing(lengths, recipe.max_seq_length, args.pack_buffer, args.pad_multiple,
                                       args.seq_length_multiple)

    print()
    print(f"samples built: {len(lengths)}, mean length {sum(lengths) / len(lengths):,.0f} tokens, max length {recipe.max_seq_length}")
    print(f"packing efficiency (best fit, buffer {args.pack_buffer}, pad multiple {args.pad_multiple}) over all {len(lengths)} samples:")
    print(f"  fixed length (every sequence {recipe.max_seq_length} tokens): {fixed:.2%}")
    print(f"  variable length (sequences end at a multiple of {args.seq_length_multiple}): {variable:.2%}")
    if args.sequences > 0:
        time_loader(root / "shards", args)
    print(f"command: {command}")
    return 0


def time_loader(shard_dir: Path, args) -> None:
    from megatron_vlm.data.loader import PackedLoader
    from megatron_vlm.data.packing import packing_efficiency

    loader = PackedLoader(shard_dir, args.tokenizer, "qwen2_5_vl", num_workers=0, pack_buffer=args.pack_buffer,
                          image_backend=args.image_backend, pad_multiple=args.pad_multiple,
                          seq_length_multiple=args.seq_length_multiple)  # variable length, the recipe default
    next(loader)  # warm-up: tokenizer load, first shard scan
    t0, c0 = time.perf_counter(), time.process_time()
    effs, tokens = [], 0
    for _ in range(args.sequences):
        batch = next(loader)
        effs.append(packing_efficiency(batch))
        tokens += sum(batch["sample_num_tokens"])
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    loader.close()
    max_length = loader.max_length
    print(f"loader throughput: {args.sequences / dt:.3f} sequences/s per worker ({dt / args.sequences:.2f} s wall per sequence "
          f"of up to {max_length} tokens, {tokens / dt:,.0f} sample tokens/s, pages 1232x1596, backend {args.image_backend})")
    print(f"  CPU time: {cpu / args.sequences:.2f} CPU-s per sequence -> {args.sequences / cpu:.3f} sequences/s for a worker with a core to itself")
    print(f"packing efficiency over the {len(effs)} timed sequences: {sum(effs) / len(effs):.2%} variable length, "
          f"{tokens / (len(effs) * max_length):.2%} had they been padded to {max_length}")


def _instance_lines(shard_dir: Path, index: dict):
    for shard in index["shards"]:
        with tarfile.open(shard_dir / shard["name"]) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    yield tf.extractfile(m).read()


if __name__ == "__main__":
    sys.exit(main())
