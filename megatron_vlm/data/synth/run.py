"""The `synth` stage: a document pool -> validated long-document QA records (docs/formats.md section 2).

    python tools/preprocess_data.py synth --pool POOL_DIR --output QA_DIR --teacher template
    python tools/preprocess_data.py synth --pool POOL_DIR --output QA_DIR --teacher openai \\
        --teacher-url http://localhost:8000/v1 --teacher-model Qwen/Qwen2.5-VL-72B-Instruct [--send-ocr-text]

Each pool document is cut into segments (--segment-pages MIN MAX, default 8 15); for each segment
and task, extract-single / extract-multi / reasoning come from the teacher and ocr-full /
ocr-needle from the pool's text. Every candidate is validated (validation.py). Outputs, each
written aside and renamed: records-SSSSS.jsonl (kept records, sorted by id), failures-SSSSS.jsonl
(jobs with no candidate and why), and summary.json (summary-SSSSS.json when --num-shards > 1).
The same pool, arguments and seed give byte-identical outputs with the template teacher.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from megatron_vlm.data.pool import dumps_sorted, shard_of
from megatron_vlm.data.pool_format import iter_documents, read_manifest
from megatron_vlm.data.synth import tasks as T
from megatron_vlm.data.synth.records import write_records
from megatron_vlm.data.synth.teachers import Answer, Job, make_teacher
from megatron_vlm.data.synth.validation import Validator
from megatron_vlm.utils import atomic, options

_OPENAI = {"group": "openai teacher"}


@dataclass
class SynthOptions:
    """The synth stage's options; the CLI's flags are generated from these fields."""

    pool: str
    """pool directory (preprocess_data.py pool)"""
    output: str
    """QA directory"""
    teacher: Literal["template", "openai"] = "template"
    """who writes the QA pairs: the offline template teacher or an OpenAI-compatible endpoint"""
    tasks: list[Literal[T.ALL_TASKS]] = field(default_factory=lambda: list(T.ALL_TASKS))
    """task types to make"""
    segment_pages: tuple[int, int] = field(default=(8, 15), metadata={"metavar": ("MIN", "MAX")})
    """pages in a segment shown to the teacher"""
    per_segment: int = 1
    """QA pairs asked per segment and task"""
    seed: int = 1234
    """seed for every random choice"""
    shard_index: int = 0
    """this task's share of the documents"""
    num_shards: int = 1
    """tasks the documents are split over"""
    max_docs: int | None = None
    """stop after this many documents (for trials)"""
    quiet: bool = False
    """no progress lines"""
    batch_jobs: int = 64
    """most teacher jobs in flight (and page images held) at once"""
    teacher_url: str | None = field(default=None, metadata=_OPENAI)
    """base URL of an OpenAI-compatible API, e.g. http://host:8000/v1"""
    teacher_model: str | None = field(default=None, metadata=_OPENAI)
    """model name to ask for"""
    api_key_env: str = field(default="OPENAI_API_KEY", metadata=_OPENAI)
    """environment variable holding the API key (never printed)"""
    concurrency: int = field(default=8, metadata=_OPENAI)
    """requests in flight"""
    max_retries: int = field(default=5, metadata=_OPENAI)
    """retries per request on 429/5xx/timeouts/connection errors"""
    request_timeout: float = field(default=300.0, metadata=_OPENAI)
    """seconds"""
    max_reasks: int = field(default=2, metadata=_OPENAI)
    """times a malformed or off-schema reply is asked again"""
    send_ocr_text: bool = field(default=False, metadata=_OPENAI)
    """send each page's OCR text with its image"""
    temperature: float = field(default=0.7, metadata=_OPENAI)
    """sampling temperature"""
    max_tokens: int = field(default=1024, metadata=_OPENAI)
    """most tokens in a reply"""
    cache_dir: str | None = field(default=None, metadata=_OPENAI)
    """request cache (default QA_DIR/cache); a rerun re-sends nothing answered"""
    dry_run: bool = field(default=False, metadata=_OPENAI)
    """send nothing: write the first request of every job not answered in the cache to QA_DIR/requests-SSSSS.jsonl
    ({"url", "job", "payload"} per line; re-asks depend on replies and are not included)"""


def add_arguments(parser) -> None:
    options.add_arguments(parser, SynthOptions)


def _record(answer: Answer, teacher_name: str, prompt_version: str) -> dict:
    job = answer.job
    first, last = job.segment
    return {
        "id": f"{job.doc['id']}-{first:04d}-{last:04d}-{job.task}-{job.index}",
        "doc_id": job.doc["id"],
        "task": job.task,
        "segment": [first, last],
        **answer.qa,
        "teacher": teacher_name,
        "prompt_version": prompt_version,
    }


def run(args: SynthOptions) -> dict:
    lo, hi = args.segment_pages
    if not 1 <= lo <= hi:
        raise ValueError(f"--segment-pages {lo} {hi}: need 1 <= MIN <= MAX")
    if not 0 <= args.shard_index < args.num_shards:
        raise ValueError(f"--shard-index {args.shard_index} must be in [0, --num-shards {args.num_shards})")
    rows = [r for r in read_manifest(args.pool) if r["status"] == "ok" and shard_of(r["id"], args.num_shards) == args.shard_index]
    ids = sorted(r["id"] for r in rows)[: args.max_docs]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    teacher = make_teacher(args)
    teacher_name = getattr(teacher, "record_name", teacher.name)
    teacher_tasks = [t for t in args.tasks if t in T.TEACHER_TASKS]
    if args.dry_run:
        return dry_run(args, teacher, ids, teacher_tasks, out)

    validator = Validator(getattr(teacher, "cache", None))
    records, failures = [], []
    failed: Counter = Counter()
    counts = Counter(docs=0, docs_too_short=0, segments=0, candidates=0)
    skipped = []  # documents with no segment, named in the summary
    window: deque[Future] = deque()  # teacher jobs in flight, oldest first

    def keep(answer: Answer, name: str, version: str) -> None:
        job = answer.job
        ident = {"doc_id": job.doc["id"], "segment": list(job.segment), "task": job.task, "index": job.index}
        if answer.qa is None:
            failed[answer.failure] += 1
            failures.append({**ident, "reason": answer.failure})
            return
        counts["candidates"] += 1
        record = _record(answer, name, version)
        if validator.check(record, job.doc) is None:
            records.append(record)

    def drain(limit: int) -> None:
        """Take answers oldest first (so validation order is fixed) until at most `limit` are in flight."""
        while len(window) > limit:
            keep(window.popleft().result(), teacher_name, teacher.prompt_version)

    executor = ThreadPoolExecutor(getattr(teacher, "concurrency", 1))
    try:
        start, last_print = time.monotonic(), 0.0
        for doc, images in iter_documents(args.pool, images=teacher.name == "openai", ids=set(ids)):
            counts["docs"] += 1
            segments = T.choose_segments(doc["num_pages"], lo, hi, random.Random(f"{args.seed}:{doc['id']}"))
            counts["segments"] += len(segments)
            counts["docs_too_short"] += not segments
            if not segments:
                skipped.append({"doc_id": doc["id"], "source": doc["source"], "pages": doc["num_pages"], "reason": f"fewer than {lo} pages"})
            for job in _jobs(args, doc, images, args.tasks):
                if job.task in teacher_tasks:
                    window.append(executor.submit(teacher.answer_one, job))
                    drain(args.batch_jobs)
                    continue
                rng = random.Random(f"{args.seed}:{doc['id']}:{job.segment}:{job.task}:{job.index}")
                qa = T.ocr_full(doc, job.segment) if job.task == "ocr-full" else T.ocr_needle(doc, job.segment, rng)
                keep(Answer(job, qa=qa, failure=None if qa else f"{job.task}: segment has no text"), "pool-text", "text-v1")
            now = time.monotonic()
            if now - last_print > 5 and not args.quiet:
                last_print, rate = now, counts["docs"] / max(now - start, 1e-9)
                eta = time.strftime("%H:%M:%S", time.gmtime((len(ids) - counts["docs"]) / rate))
                print(f"[synth] {counts['docs']}/{len(ids)} docs, {len(records)} records, {rate:.2f} docs/s, ETA {eta}", file=sys.stderr, flush=True)
        drain(0)
    finally:
        executor.shutdown(cancel_futures=True)

    records.sort(key=lambda r: r["id"])
    suffix = f"{args.shard_index:05d}"
    records_path, failures_path = out / f"records-{suffix}.jsonl", out / f"failures-{suffix}.jsonl"
    write_records(records_path, records)
    atomic.write_text(failures_path, "".join(dumps_sorted(f) + "\n" for f in sorted(failures, key=lambda f: (f["doc_id"], f["segment"], f["task"], f["index"]))))
    summary = {
        "pool": str(Path(args.pool)),
        "teacher": teacher_name,
        "prompt_version": teacher.prompt_version,
        "seed": args.seed,
        "segment_pages": [lo, hi],
        "tasks": list(args.tasks),
        **dict(counts),
        "skipped": skipped,
        "records": dict(sorted(Counter(r["task"] for r in records).items())),
        "records_total": len(records),
        "rejected": dict(sorted(validator.rejected.items())),
        "failed": dict(sorted(failed.items())),
        "teacher_usage": teacher.usage() if hasattr(teacher, "usage") else {},
    }
    summary_path = out / ("summary.json" if args.num_shards == 1 else f"summary-{suffix}.json")
    atomic.write_text(summary_path, json.dumps(summary, sort_keys=True, indent=1) + "\n")
    summary["paths"] = [str(records_path), str(failures_path), str(summary_path)]
    return summary


def _jobs(args, doc: dict, images: dict, tasks: list[str]):
    """The teacher jobs of one document, in the order synth asks them."""
    lo, hi = args.segment_pages
    for segment in T.choose_segments(doc["num_pages"], lo, hi, random.Random(f"{args.seed}:{doc['id']}")):
        for task in tasks:
            for k in range(args.per_segment):
                yield Job(doc, segment, task, k, args.seed, {p: images[p] for p in range(*segment) if p in images})


def dry_run(args, teacher, ids: list[str], tasks: list[str], out: Path) -> dict:
    """Write the requests the openai teacher would send (first attempt of each job not in the cache)."""
    if teacher.name != "openai":
        raise ValueError("--dry-run is for --teacher openai (the template teacher sends nothing)")
    path = out / f"requests-{args.shard_index:05d}.jsonl"
    counts = Counter(docs=0, requests=0, cached=0)
    with atomic.atomic_write(path, inputs=[args.pool]) as f:
        for doc, images in iter_documents(args.pool, images=True, ids=set(ids)):
            counts["docs"] += 1
            for job in _jobs(args, doc, images, tasks):
                payload, cached = teacher.first_request(job)
                if cached:
                    counts["cached"] += 1
                    continue
                job_id = f"{doc['id']}-{job.segment[0]:04d}-{job.segment[1]:04d}-{job.task}-{job.index}"
                f.write(dumps_sorted({"url": teacher.client.url, "job": job_id, "payload": payload}) + "\n")
                counts["requests"] += 1
    return {"dry_run": True, **dict(counts), "paths": [str(path)]}


def synthesize(pool_dir: str | Path, output: str | Path, quiet: bool = True, **kw) -> dict:
    """The synth stage from Python; ``kw`` are SynthOptions fields, e.g. teacher="template", segment_pages=(3, 5)."""
    return run(options.make(SynthOptions, "synthesize", pool=pool_dir, output=output, quiet=quiet, **kw))


def main(args) -> int:
    try:
        s = run(options.from_args(SynthOptions, args))
    except ValueError as e:
        print(f"[synth] error: {e}", file=sys.stderr)
        return 2
    if s.get("dry_run"):
        print(f"[synth] dry run: {s['docs']} docs, {s['requests']} requests not sent ({s['cached']} already answered in the cache); wrote {s['paths'][0]}")
        return 0
    rejected = sum(s["rejected"].values())
    if s["skipped"]:
        names = ", ".join(f"{d['source']} ({d['pages']} pages)" for d in s["skipped"])
        print(f"[synth] skipped {len(s['skipped'])} documents with fewer pages than --segment-pages MIN {s['segment_pages'][0]}: {names}")
    print(
        f"[synth] {s['docs']} docs ({s['docs_too_short']} too short), {s['segments']} segments, {s['candidates']} candidates -> "
        f"{s['records_total']} records {s['records']}; {rejected} rejected {s['rejected']}; {sum(s['failed'].values())} failed; "
        f"teacher {s['teacher']}; wrote {', '.join(s['paths'])}"
    )
    return 0
