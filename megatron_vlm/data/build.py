"""`preprocess_data.py build`: pool + QA records + recipe -> training shards (docs/formats.md s.3).

    python tools/preprocess_data.py build --pool POOL_DIR --qa QA_DIR --recipe RECIPE.yaml --output SHARD_DIR

Every QA record becomes a candidate instance (its full document's pages + question -> answer),
cut to max_seq_length by the policy in ``mixture`` and counted exactly with ``tokens`` and the
image rule of the model family the recipe trains (``model.kind``; page sizes from the pool,
resized with the family's or the recipe's min/max pixels), in that family's chat format. ``mixture``
then draws the instances for the length distribution, task mixture and token budget. Shards are
plain WebDataset tars, written aside and renamed; a rerun with the same inputs and recipe keeps
the shards already written (the build is deterministic by seed), and index.json, written last,
marks the build complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from megatron_vlm.data import mixture, pool_format, tokens
from megatron_vlm.data.recipe import SHORT_TASK, DataRecipe, model_kind
from megatron_vlm.data.short_source import load_short_samples, read_image
from megatron_vlm.data.synth.records import read_records
from megatron_vlm.data.synth.validation import names_a_page
from megatron_vlm.models.family import ModelFamily, family_for_kind
from megatron_vlm.utils import atomic, options

FORMAT = "megatron-vlm-shards-v1"
STATE_FILE = ".build-state.json"


@dataclass
class BuildOptions:
    """The build stage's options; the CLI's flags are generated from these fields."""

    pool: str
    """document pool directory (preprocess_data.py pool)"""
    qa: str
    """QA records directory (preprocess_data.py synth)"""
    recipe: str
    """recipe YAML; its `data` section is used"""
    output: str
    """directory for the training shards"""
    tokenizer: str | None = None
    """tokenizer directory (overrides the recipe's data.tokenizer)"""


def add_arguments(parser) -> None:
    options.add_arguments(parser, BuildOptions)


def main(args) -> int:
    try:
        args = options.from_args(BuildOptions, args)
        recipe = DataRecipe.from_yaml(args.recipe)
        if args.tokenizer:
            recipe.tokenizer = args.tokenizer
        family = family_for_kind(model_kind(args.recipe))
        index = build(Path(args.pool), Path(args.qa), recipe, Path(args.output), family)
    except (ValueError, FileNotFoundError) as e:
        print(f"build: error: {e}", file=sys.stderr)
        return 2
    t = index["totals"]
    print(f"build: wrote {t['samples']} samples ({t['tokens']:,} tokens, {t['images']} images) in {len(index['shards'])} shards to {args.output}")
    print(f"build: dropped {sum(index['dropped'].values())} instances {dict(index['dropped'])}; index at {Path(args.output) / 'index.json'}")
    return 0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_pool(pool_dir: Path) -> tuple[dict, dict]:
    """(documents by id: page count and sizes, page image locations by (doc id, page index)),
    for the manifest's `ok` rows (pool_format.documents)."""
    docs: dict[str, dict] = {}
    images: dict[tuple[str, int], pool_format.PageImage] = {}
    for doc in pool_format.documents(pool_dir):
        docs[doc.id] = {"num_pages": doc.meta["num_pages"], "sizes": [(p["height_px"], p["width_px"]) for p in doc.meta["pages"]]}
        images.update({(doc.id, index): image for index, image in doc.images.items()})
    if not docs:
        raise ValueError(f"the pool at {pool_dir} has no usable documents")
    return docs, images


def _key(record_id: str) -> str:
    # WebDataset splits a member name at its first dot: keys must have none.
    return str(record_id).replace(".", "_").replace("/", "_")


def make_candidates(recipe, family: ModelFamily, tokenizer, docs, images, records, drops: Counter,
                    examples: dict) -> tuple[list, dict, dict]:
    """Document candidates after truncation, per record id what is needed to write it, and per
    task what happened to its records (for the error when none fits)."""
    rule = recipe.image_rule(family)
    cands, info = [], {}
    why: dict[str, Counter] = {}
    for n, rec in enumerate(records):
        if n and n % 20000 == 0:
            print(f"build: counted {n}/{len(records)} records", flush=True)
        if rec["task"] not in recipe.task_shares():
            continue  # a task the recipe does not use is not a drop
        rid, task_why = _key(rec["id"]), why.setdefault(rec["task"], Counter())
        task_why["records"] += 1
        try:
            doc = docs.get(rec["doc_id"])
            if doc is None:
                raise mixture.Dropped("missing-document", rec["doc_id"])
            page_tokens = [rule.token_count(h, w) for h, w in doc["sizes"]]
            q, a = rec["question"], rec["answer"]

            def count(pages, q=q, a=a, pt=page_tokens):
                return tokens.count_tokens(tokenizer, family, q, a, [pt[p] for p in pages])

            rng = random.Random(f"{recipe.seed}:{rec['id']}")
            pages = mixture.truncate_pages(page_tokens, tuple(rec["segment"]), rec["evidence_pages"], names_a_page(q), count, recipe.max_seq_length, rng)
            if any((rec["doc_id"], p) not in images for p in pages):
                raise mixture.Dropped("missing-page-image", rec["doc_id"])
        except mixture.Dropped as d:
            drops[d.reason] += 1
            task_why[d.reason] += 1
            if d.needs_tokens:
                task_why["smallest_needs"] = min(task_why["smallest_needs"] or d.needs_tokens, d.needs_tokens)
            ex = examples.setdefault(d.reason, [])
            if len(ex) < 5:
                ex.append(rid)
            continue
        except ValueError as e:  # special tokens in the text
            drops["special-token-in-text"] += 1
            task_why["special-token-in-text"] += 1
            examples.setdefault("special-token-in-text", []).append(str(e)[:80])
            continue
        c = mixture.Candidate(rid, rec["task"], count(pages), pages, doc["num_pages"], sorted(rec["evidence_pages"]))
        cands.append(c)
        info[rid] = {"record_id": rec["id"], "doc_id": rec["doc_id"], "question": q, "answer": a,
                     "grids": [list(rule.grid_thw(*doc["sizes"][p])) for p in pages]}
    return cands, info, why


def _nothing_fits(recipe, task: str, why: Counter, excluded: Counter, qa_dir: Path) -> str:
    """Why no instance of `task` can be built, in one line."""
    if not why["records"]:
        return f"the recipe's mixture asks for {task} but {qa_dir} has no {task} records"
    parts = [f"{k} {v}" for k, v in sorted(why.items()) if k not in ("records", "smallest_needs", "kept")]
    parts += [f"{k} {v}" for k, v in sorted(excluded.items())]
    line = f"no {task} instance fits the recipe: of {why['records']} records, " + ", ".join(parts)
    if why["smallest_needs"]:
        line += f"; the smallest needs {why['smallest_needs']:,} tokens and max_seq_length is {recipe.max_seq_length:,}"
    if any(k.startswith("outside-pages-range") for k in excluded):
        lo, hi = recipe.pages_range
        line += f"; data.pages_range is {lo}-{hi} pages and the documents have {why['min_pages']}-{why['max_pages']}"
    return line


def make_short_candidates(recipe, family: ModelFamily, tokenizer, drops: Counter) -> tuple[list, dict]:
    from PIL import Image

    rule = recipe.image_rule(family)
    samples, skipped = load_short_samples(recipe.short_source)
    drops.update(skipped)
    cands, info = [], {}
    for s in samples:
        try:
            grids = []
            for loc in s.images:
                with Image.open(io.BytesIO(read_image(loc))) as img:
                    grids.append(list(rule.grid_thw(img.height, img.width)))
            n = tokens.count_tokens(tokenizer, family, s.question, s.answer, [rule.grid_tokens(g) for g in grids])
        except (OSError, ValueError):
            drops["short-sample-unreadable"] += 1
            continue
        if n > recipe.max_seq_length:
            drops["short-sample-too-long"] += 1
            continue
        rid = _key(f"short-{s.id}")
        cands.append(mixture.Candidate(rid, SHORT_TASK, n, list(range(len(s.images))), len(s.images)))
        info[rid] = {"record_id": str(s.id), "doc_id": "", "question": s.question, "answer": s.answer, "grids": grids, "short": s}
    return cands, info


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
    tf.addfile(ti, io.BytesIO(data))


def _dumps(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()


def build(pool_dir: Path, qa_dir: Path, recipe: DataRecipe, out_dir: Path, family: ModelFamily) -> dict:
    """Build the shards for ``family``'s model; returns the index (also written to out_dir/index.json)."""
    atomic.refuse_inputs(out_dir, [pool_dir, qa_dir])
    if not recipe.tokenizer:
        raise ValueError("no tokenizer: set data.tokenizer in the recipe or pass --tokenizer")
    rule = recipe.image_rule(family)
    recipe = dataclasses.replace(recipe, min_pixels=rule.min_pixels, max_pixels=rule.max_pixels)  # recorded resolved
    tokenizer = tokens.load_tokenizer(recipe.tokenizer)
    docs, images = read_pool(pool_dir)
    records = read_records(qa_dir)
    print(f"build: {len(docs)} documents in {pool_dir}, {len(records)} QA records in {qa_dir}", flush=True)
    drops, examples, excluded = Counter(), {}, Counter()
    cands, info, why = make_candidates(recipe, family, tokenizer, docs, images, records, drops, examples)
    doc_cands, excluded_by_task = [], {}
    for c in cands:
        task_why = why[c.task]
        task_why["min_pages"] = min(task_why["min_pages"] or c.doc_pages, c.doc_pages)
        task_why["max_pages"] = max(task_why["max_pages"], c.doc_pages)
        reason = mixture.eligible(recipe, c)
        if reason:
            excluded[reason] += 1
            excluded_by_task.setdefault(c.task, Counter())[reason] += 1
        else:
            doc_cands.append(c)
    for task in recipe.task_shares():
        if task != SHORT_TASK and not any(c.task == task for c in doc_cands):
            raise ValueError(_nothing_fits(recipe, task, why.get(task, Counter()), excluded_by_task.get(task, Counter()), qa_dir))
    shorts, short_info = ([], {})
    if recipe.short_share > 0:
        shorts, short_info = make_short_candidates(recipe, family, tokenizer, drops)
    info.update(short_info)
    chosen, targets = mixture.select(recipe, doc_cands, shorts)
    mixture.check_repeats(recipe, chosen)

    sources = {
        "pool": str(pool_dir),
        "pool_manifests": [{"path": str(p), "sha256": _sha256(p)} for p in sorted(pool_dir.glob("manifest*.jsonl"))],
        "qa": [{"path": str(p), "sha256": _sha256(p)} for p in sorted(qa_dir.glob("records-*.jsonl"))],
        "short_source": recipe.short_source or None,
        "tokenizer_sha256": _sha256(Path(recipe.tokenizer) / "tokenizer.json" if Path(recipe.tokenizer).is_dir() else Path(recipe.tokenizer)),
    }
    plan = [(c.record_id, c.pages) for c in chosen]
    plan_sha = hashlib.sha256(_dumps({"plan": plan, "recipe": recipe.to_dict(), "sources": sources, "family": family.name})).hexdigest()
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / STATE_FILE
    if state_path.exists() and json.loads(state_path.read_text()).get("plan_sha256") != plan_sha:
        raise ValueError(f"{out_dir} holds shards of a different build (inputs or recipe changed); use a new directory")
    (out_dir / "index.json").unlink(missing_ok=True)
    atomic.write_json(state_path, {"plan_sha256": plan_sha})

    seen: Counter = Counter()
    instances = []
    for c in chosen:
        n = seen[c.record_id]
        seen[c.record_id] += 1
        instances.append((c, c.record_id if n == 0 else f"{c.record_id}-r{n}"))
    per = recipe.samples_per_shard
    shards = []
    num_shards = -(-len(instances) // per)
    for s in range(num_shards):
        part = instances[s * per : (s + 1) * per]
        name = f"shard-{s:06d}.tar"
        shards.append({"name": name, "samples": len(part), "tokens": sum(c.num_tokens for c, _ in part), "images": sum(len(c.pages) for c, _ in part)})
        if (out_dir / name).exists():
            continue  # written by an earlier run of this same plan
        with atomic.atomic_path(out_dir / name) as tmp, tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tf:
            for c, key in part:
                _write_instance(tf, key, c, info[c.record_id], images)
        if (s + 1) % 10 == 0 or s + 1 == num_shards:
            print(f"build: shard {s + 1}/{num_shards}", flush=True)

    index = {
        "format": FORMAT,
        "family": family.name,
        "chat_format": family.chat.version,
        "recipe": recipe.to_dict(),
        "seed": recipe.seed,
        "max_seq_length": recipe.max_seq_length,
        "min_pixels": recipe.min_pixels,
        "max_pixels": recipe.max_pixels,
        "sources": sources,
        "shards": shards,
        "totals": {
            "samples": len(instances),
            "tokens": sum(c.num_tokens for c in chosen),
            "images": sum(len(c.pages) for c in chosen),
            "unique_instances": len(seen),
            "candidates": len(cands) + len(shorts),
        },
        "targets": targets,
        "excluded": dict(sorted(excluded.items())),
        "dropped": dict(sorted(drops.items())),
        "drop_examples": examples,
        "plan_sha256": plan_sha,
    }
    atomic.write_bytes(out_dir / "index.json", json.dumps(index, sort_keys=True, indent=1).encode())
    return index


def _write_instance(tf, key: str, c, meta: dict, images: dict) -> None:
    record = {
        "id": key,
        "record_id": meta["record_id"],
        "doc_id": meta["doc_id"],
        "task": c.task,
        "pages": c.pages,
        "question": meta["question"],
        "answer": meta["answer"],
        "num_tokens": c.num_tokens,
        "grids": meta["grids"],
        "evidence_pages": c.evidence,
        "doc_pages": c.doc_pages,
    }
    _add(tf, f"{key}.json", _dumps(record))
    short = meta.get("short")
    for j, p in enumerate(c.pages):
        if short is not None:
            data, ext = read_image(short.images[j]), short.exts[j]
        else:
            image = images[(meta["doc_id"], p)]
            data, ext = image.read(), image.ext
        _add(tf, f"{key}.i{p:04d}.{ext}", data)
