"""Eval sets on disk (docs/eval_format.md): build them from a pool + QA records or from eval JSONL, read them back.

EVAL_DIR/eval.jsonl     one item per line: a question over fixed-length context pages
EVAL_DIR/images/        page images, each written once and shared by the items that use it
EVAL_DIR/eval.json      settings: sources, lengths, depths, seed, counts, items skipped and why
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from megatron_vlm.eval.contexts import Document, Question, build_context
from megatron_vlm.eval.files import read_jsonl, write_json_atomic, write_jsonl_atomic
from megatron_vlm.eval.prompts import DEFAULT_PROMPT_TOKENS
from megatron_vlm.eval.scoring import ANSWER_FORMATS
from megatron_vlm.models.family import DEFAULT_FAMILY, get_family
from megatron_vlm.utils import atomic
from megatron_vlm.utils.paths import inside, safe_name

FORMAT_VERSION = 1


def item_id(question_id: str, target_tokens: int, depth: float) -> str:
    return f"{question_id}@{target_tokens}@{depth:.2f}"


def build_eval_set(
    docs: dict[str, Document],
    questions: Sequence[Question],
    output: str | os.PathLike,
    lengths: Sequence[int],
    depths: Sequence[float],
    exclude: set[str] = frozenset(),
    seed: int = 0,
    count_prompt_tokens: Callable[[str], int] | None = None,
    max_questions: int | None = None,
    sources: dict | None = None,
    log=print,
) -> dict:
    """Write an eval set with one item per (question, length, depth); return its eval.json summary.

    Questions and distractors both come only from documents outside ``exclude``.
    """
    held_out = {k: d for k, d in docs.items() if k not in exclude}
    kept = [q for q in questions if q.doc_id in held_out]
    if max_questions is not None:
        kept = kept[:max_questions]
    jobs = [(q, length, depth) for q in kept for length in lengths for depth in depths]
    summary = {
        "sources": sources or {},
        "lengths": list(lengths),
        "depths": list(depths),
        "questions": len(kept),
        "excluded_docs": len(exclude),
        "questions_on_excluded_docs": sum(1 for q in questions if q.doc_id in docs and q.doc_id in exclude),
        "questions_on_unknown_docs": sum(1 for q in questions if q.doc_id not in docs),
    }
    return write_eval_set(output, jobs, held_out, list(held_out.values()), seed, count_prompt_tokens, summary, log)


def write_eval_set(
    output: str | os.PathLike,
    jobs: Sequence[tuple[Question, int, float]],
    docs: dict[str, Document],
    distractors: Sequence[Document],
    seed: int = 0,
    count_prompt_tokens: Callable[[str], int] | None = None,
    summary: dict | None = None,
    log=print,
) -> dict:
    """Write one item per (question, length, depth) job; distractor pages only from ``distractors``.

    Items that cannot be built (evidence longer than the length, too few distractor pages) are
    skipped and counted by reason. The directory is assembled aside and renamed into place.
    """
    with atomic.atomic_dir(output) as tmp:
        return _write_items(jobs, docs, distractors, tmp, seed, count_prompt_tokens, summary, log)


def _write_items(jobs, docs, distractors, tmp: Path, seed, count_prompt_tokens, summary, log) -> dict:
    (tmp / "images").mkdir()
    written: set[str] = set()
    items, skipped = [], Counter()
    prompt_cache: dict[str, int] = {}
    for q, length, depth in jobs:
        if q.question not in prompt_cache:
            prompt_cache[q.question] = count_prompt_tokens(q.question) if count_prompt_tokens else DEFAULT_PROMPT_TOKENS
        p_tokens = prompt_cache[q.question]
        try:
            ctx = build_context(q, docs[q.doc_id], distractors, length, depth, seed, p_tokens)
        except ValueError as e:
            skipped["evidence longer than the length" if "exceeds" in str(e) else "too few distractor pages"] += 1
            log(f"  skip {item_id(q.id, length, depth)}: {e}")
            continue
        pages = []
        for pos, page in enumerate(ctx.pages):
            if page.name not in written:
                inside(tmp / "images", safe_name(page.name, "page image name"), "page image").write_bytes(page.read_bytes())
                written.add(page.name)
            pages.append(
                {
                    "image": f"images/{page.name}",
                    "doc_id": page.doc_id,
                    "page": page.index,
                    "tokens": page.tokens,
                    "grid_thw": list(page.grid_thw),
                    "evidence": pos in ctx.evidence_positions,
                }
            )
        items.append(
            {
                "id": item_id(q.id, length, depth),
                "qa_id": q.id,
                "doc_id": q.doc_id,
                "task": q.task,
                "question": q.question,
                "answer": q.answer,
                "answer_format": q.answer_format,
                "target_tokens": length,
                "depth": depth,
                "achieved_depth": round(ctx.depth, 4),
                "anchor": list(ctx.anchor),
                "context_tokens": ctx.tokens,
                "prompt_tokens": p_tokens,
                "prompt_tokens_exact": count_prompt_tokens is not None,
                "num_tokens": ctx.tokens + p_tokens,
                "pages": pages,
                **q.extra,
            }
        )
        if len(items) % 20 == 0:
            log(f"  built {len(items)}/{len(jobs)} items, {len(written)} page images")
    summary = {
        **(summary or {}),
        "version": FORMAT_VERSION,
        "seed": seed,
        "items": len(items),
        "images": len(written),
        "skipped": dict(sorted(skipped.items())),
    }
    write_jsonl_atomic(tmp / "eval.jsonl", items)
    write_json_atomic(tmp / "eval.json", summary)
    return summary


def _page_from_image(path: Path, family: str) -> dict:
    from PIL import Image

    rule = get_family(family).image
    with Image.open(path) as im:
        width, height = im.size
    return {"tokens": rule.token_count(height, width), "grid_thw": list(rule.grid_thw(height, width))}


def image_root_of(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> Path:
    """The directory an eval set's image paths are relative to: ``image_root`` when given, else the
    eval set's own directory (EVAL_DIR, or the .jsonl file's directory). A set whose eval.json says
    its images live elsewhere (an imported benchmark) needs ``image_root``."""
    path = Path(path)
    if image_root is not None:
        return Path(image_root)
    settings = path / "eval.json"
    if path.is_dir() and settings.is_file():
        external = json.loads(settings.read_text(encoding="utf-8")).get("image_root")
        if external:
            raise ValueError(f"{path}'s images are under an image root (imported from {external}); pass --image-root DIR")
    return path if path.is_dir() else path.parent


def read_eval_set(path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                  family: str = DEFAULT_FAMILY) -> list[dict]:
    """Items of an eval set (EVAL_DIR or a .jsonl file), image paths resolved, token counts filled in.

    A line needs ``id``, ``question``, ``answer``, ``answer_format`` and ``pages`` (each a path or
    ``{"image": path, ...}``). Image paths are relative to ``image_root_of(path, image_root)`` and
    must stay inside it (ValueError otherwise, before any image is opened); missing
    ``tokens``/``grid_thw`` are computed from the image size with ``family``'s image rule.
    """
    path = Path(path)
    file = path / "eval.jsonl" if path.is_dir() else path
    root = image_root_of(path, image_root)
    items = read_jsonl(file)
    for n, item in enumerate(items, 1):
        missing = [k for k in ("id", "question", "answer", "answer_format", "pages") if k not in item]
        if missing:
            raise ValueError(f"{file}: item {n} lacks {', '.join(missing)}")
        if item["answer_format"] not in ANSWER_FORMATS:
            raise ValueError(
                f"{file}: item {n} has answer_format {item['answer_format']!r}, not one of {ANSWER_FORMATS}"
            )
        if not isinstance(item["pages"], list):
            raise ValueError(f"{file}: item {n}: pages is not a list")
        for p in item["pages"]:
            try:
                inside(root, p.get("image") if isinstance(p, dict) else p, "image")
            except ValueError as e:
                raise ValueError(f"{file}: item {n}: {e}") from None
    for item in items:
        pages = []
        for p in item["pages"]:
            p = dict(p) if isinstance(p, dict) else {"image": p}
            p["image"] = str(inside(root, p["image"], "image"))
            if "tokens" not in p or "grid_thw" not in p:
                p.update(_page_from_image(Path(p["image"]), family))
            pages.append(p)
        item["pages"] = pages
        item.setdefault("task", "unknown")
        item.setdefault("target_tokens", sum(p["tokens"] + 2 for p in pages))
    return items
