"""The `pool` stage: a directory (or list) of PDFs -> a document pool (docs/formats.md section 1).

    python tools/preprocess_data.py pool --input PDF_DIR_OR_LIST --output POOL_DIR [--dpi 144] [--workers N]
                                         [--shard-index I --num-shards N]

How a run goes, and why:
- Inputs: a directory is searched recursively for *.pdf (any case); a .pdf file is one input; any
  other file is a list with one path per line (relative paths are relative to the list). `source`
  is the path relative to the directory, or the line as written. Sorted by source.
- --shard-index/--num-shards keep the inputs whose sha256(source) mod N is I, so a Slurm array
  covers every input exactly once and adding files does not move the others between tasks.
- Every input is hashed first; the first input (in source order) with a given content hash is
  processed and the rest become `duplicate` rows. That holds across shards too: a task also
  stats the other shards' inputs and hashes those of the same size as one of its own, so a
  content is rendered only by the task that holds its first source. The unique inputs are cut, in
  order, into chunks of --docs-per-tar; a chunk is the unit of work, of parallelism (--workers
  processes) and of resumption: it writes its tar, then a part file with its manifest rows and a
  fingerprint of its inputs, each to a temporary name that is renamed when complete. A rerun
  skips chunks whose part matches and redoes the rest, so a killed run leaves nothing a rerun
  would trust.
- The task then writes manifest-SSSSS.jsonl (one row per input, sorted by source). The task that
  finds every shard's manifest present writes manifest.jsonl, where a document present in
  several shards is kept once (the first source) and the others become `duplicate` rows, so
  the union of a sharded run equals the unsharded run (the tasks already agree on it, see
  above). Readers (pool_format.py: synth, the build, the eval sets) read the one tar the
  kept row names.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import os
import stat
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from megatron_vlm.data import ocr as ocr_engine
from megatron_vlm.data.pdf import PdfError, PdfSettings, process_pdf
from megatron_vlm.data.pool_format import iter_documents, read_manifest, read_settings  # noqa: F401 (the readers)
from megatron_vlm.models.family import DEFAULT_FAMILY, FamilyName, get_family
from megatron_vlm.utils import atomic, options

POOL_VERSION = 2  # 2: text quality, OCR confidence, page labels, furniture and table fields (docs/formats.md)


@dataclass
class PoolOptions:
    """The pool stage's options; the CLI's flags are generated from these fields."""

    input: str
    """directory of PDFs (searched recursively), one PDF, or a list file"""
    output: str
    """pool directory"""
    dpi: int = PdfSettings.dpi
    """render resolution"""
    image_format: Literal["png", "jpg"] = "png"
    """png is lossless (and on text pages smaller and faster to write); jpg is lossy, smaller only for photographic pages"""
    family: FamilyName = DEFAULT_FAMILY
    """model family whose image rule counts the pages' tokens (build recounts them for its own)"""
    min_pixels: int | None = None
    """image resize rule: smallest area (default: the family's)"""
    max_pixels: int | None = None
    """image resize rule: largest area (default: the family's)"""
    max_page_pixels: int = PdfSettings.max_page_pixels
    """a page rendering larger is an error"""
    max_pages: int = PdfSettings.max_pages
    """a document with more pages is an error"""
    no_ocr: bool = False
    """mark scanned pages and broken text layers ocr=missing instead of running tesseract"""
    ocr_language: str = PdfSettings.ocr_language
    """Tesseract languages for OCR, e.g. deu+eng; auto: chosen by each page's script (megatron_vlm/data/ocr.py)"""
    layout: Literal["model", "rules"] = PdfSettings.layout
    """model: pymupdf's layout model (~0.3-0.7 s CPU a page; finds rule-only and whitespace tables, headers, footers); rules: font sizes and ruled grids only (~15 ms a page)"""
    workers: int = 1
    """processes rendering documents"""
    shard_index: int = 0
    """this task's share of the inputs (sha256(source) mod --num-shards)"""
    num_shards: int = 1
    """tasks the inputs are split over"""
    docs_per_tar: int = 64
    """documents per pool tar (the unit of work and resumption)"""
    quiet: bool = False
    """no progress lines"""

    def pdf_settings(self) -> PdfSettings:
        rule = get_family(self.family).image.with_pixels(self.min_pixels, self.max_pixels)
        return PdfSettings(
            dpi=self.dpi, image_format=self.image_format, family=self.family, min_pixels=rule.min_pixels,
            max_pixels=rule.max_pixels,
            max_page_pixels=self.max_page_pixels, max_pages=self.max_pages, ocr=not self.no_ocr, ocr_language=self.ocr_language,
            layout=self.layout,
        )


def add_arguments(parser) -> None:
    options.add_arguments(parser, PoolOptions)


def dumps_sorted(obj) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


# ---- inputs ----------------------------------------------------------------------------------


def printable(name: str) -> str:
    """A file name as text that can be written anywhere: bytes that are not UTF-8 (which Python
    keeps as lone surrogates) become `\\xNN`, so the row still names the file."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def list_inputs(input_path: str | Path) -> list[tuple[str, Path]]:
    """(source, path) for every input, sorted by source; raises ValueError with a one-line reason.

    A directory gives every entry named *.pdf that is not itself a directory, whatever it is (a
    FIFO, a device or a dangling link becomes an error row when read, see open_input)."""
    root = Path(input_path)
    if root.is_dir():
        found = [p for p in root.rglob("*") if p.suffix.lower() == ".pdf" and not p.is_dir()]
        items = [(printable(p.relative_to(root).as_posix()), p) for p in found]
    elif root.is_file() and root.suffix.lower() == ".pdf":
        items = [(printable(root.name), root)]
    elif root.is_file():
        lines = [os.fsdecode(ln.strip()) for ln in root.read_bytes().splitlines()]
        items = [(printable(ln), (root.parent / ln) if not Path(ln).is_absolute() else Path(ln)) for ln in lines if ln and not ln.startswith("#")]
    else:
        raise ValueError(f"--input {input_path} does not exist")
    return sorted(set(items))


def shard_of(source: str, num_shards: int) -> int:
    return int(hashlib.sha256(source.encode()).hexdigest()[:12], 16) % num_shards


class NotARegularFile(OSError):
    """An input that is a FIFO, a device, a socket or a directory."""


def read_error(e: OSError) -> str:
    """The one-line reason of an error row for an input that cannot be read."""
    return str(e) if isinstance(e, NotARegularFile) else f"cannot read: {type(e).__name__}: {e.strerror or e}"


_FILE_KINDS = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]


def open_input(path: str | Path):
    """A binary file object for an input that is a regular file (symbolic links followed); OSError
    naming what it is otherwise. Never blocks: a FIFO is opened non-blocking and refused, so a
    `.pdf` link to a FIFO or to /dev/zero is an error row, not a hang."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
            raise NotARegularFile(f"not a regular file: {kind}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _hash_file(item: tuple[str, str]) -> tuple[str, str, str | None, str | None]:
    source, path = item
    try:
        h = hashlib.sha256()
        with open_input(path) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return source, path, h.hexdigest(), None
    except OSError as e:
        return source, path, None, read_error(e)


def _file_size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def first_sources_elsewhere(mine: list[tuple], others: list[tuple[str, str]], imap=map) -> dict[str, str]:
    """{sha256: first source} over `others` (inputs of the other shards) for the contents in `mine`.

    `mine` are (source, path, sha, error) from _hash_file. Only files of the same size as one of
    ours can be equal, so the others are stat'ed and just those are read and hashed.
    """
    sizes = {_file_size(path) for _, path, sha, _ in mine if sha is not None} - {None}
    ours = {sha for _, _, sha, _ in mine if sha is not None}
    if not ours:
        return {}
    same_size = [item for item, size in zip(others, imap(_file_size, [p for _, p in others])) if size in sizes]
    first: dict[str, str] = {}
    for source, _, sha, _ in imap(_hash_file, same_size):
        if sha in ours and (sha not in first or source < first[sha]):
            first[sha] = source
    return first


def _row(source, sha, status, reason=None, pages=None, tokens=None, shard=None, duplicate_of=None, text_quality=None) -> dict:
    return {
        "id": sha[:16] if sha else None,
        "source": source,
        "sha256": sha,
        "status": status,
        "reason": reason,
        "pages": pages,
        "tokens": tokens,
        "shard": shard,
        "duplicate_of": duplicate_of,
        "text_quality": text_quality,
    }


def text_counts(pages: list[dict]) -> dict[str, int]:
    """Pages of a document by text_quality, OCRed pages of low confidence, and pages that needed OCR
    but did not get it (the manifest row's `text_quality`)."""
    counts = {q: sum(p["text_quality"] == q for p in pages) for q in ("good", "ocr", "broken", "none")}
    counts["low_confidence"] = sum(p["ocr_confidence"] is not None and p["ocr_confidence"] < ocr_engine.LOW_CONFIDENCE for p in pages)
    counts["ocr_missing"] = sum(p["ocr"] == "missing" for p in pages)
    return counts


# ---- one chunk: documents -> tar + part -------------------------------------------------------


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
    tar.addfile(info, io.BytesIO(data))


_progress = None  # (docs, pages) shared counters in worker processes


def _init_worker(counters) -> None:
    global _progress
    _progress = counters


def _count(docs: int, pages: int) -> None:
    if _progress is not None:
        with _progress[0].get_lock():
            _progress[0].value += docs
            _progress[1].value += pages


def process_chunk(job: dict) -> list[dict]:
    """Render the chunk's documents into job["tar"] and write job["part"]; return its manifest rows."""
    settings = PdfSettings(**job["settings"])
    tar_path, part_path = Path(job["tar"]), Path(job["part"])
    rows = []
    with atomic.atomic_path(tar_path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for source, path, sha in job["docs"]:
            doc_id = sha[:16]
            spool = tempfile.SpooledTemporaryFile(max_size=256 << 20, dir=tar_path.parent)
            spans = []

            def sink(index: int, image: bytes, spool=spool, spans=spans) -> None:
                spans.append((index, spool.tell(), len(image)))
                spool.write(image)

            try:
                with open_input(path) as f:
                    data = f.read()
                if hashlib.sha256(data).hexdigest() != sha:
                    raise PdfError("file changed while the pool was running")
                pages, _ = process_pdf(data, settings, sink=sink)
                del data
            except (PdfError, OSError) as e:
                rows.append(_row(source, sha, "error", read_error(e) if isinstance(e, OSError) else str(e)))
                _count(1, 0)
                spool.close()
                continue
            except Exception as e:  # a bug or a MuPDF crash on one file must not stop the run
                rows.append(_row(source, sha, "error", f"internal error: {type(e).__name__}: {str(e)[:200]}"))
                _count(1, 0)
                spool.close()
                continue
            ext = "png" if settings.image_format == "png" else "jpg"
            doc = {"id": doc_id, "source": source, "sha256": sha, "num_pages": len(pages), "dpi": settings.dpi, "pages": pages}
            _add_member(tar, f"{doc_id}.json", dumps_sorted(doc).encode())
            for index, offset, size in spans:
                spool.seek(offset)
                _add_member(tar, f"{doc_id}.p{index:04d}.{ext}", spool.read(size))
            spool.close()
            tokens = sum(p["tokens"] for p in pages)
            rows.append(_row(source, sha, "ok", pages=len(pages), tokens=tokens, shard=job["shard"], text_quality=text_counts(pages)))
            _count(1, len(pages))
    atomic.write_text(part_path, dumps_sorted({"fingerprint": job["fingerprint"], "rows": rows}))
    return rows


def _part_rows(part: Path, fingerprint: str) -> list[dict] | None:
    try:
        data = json.loads(part.read_text())
    except (OSError, ValueError):
        return None
    return data["rows"] if data.get("fingerprint") == fingerprint else None


# ---- the run --------------------------------------------------------------------------------


def _check_settings(out: Path, settings: dict) -> None:
    path = out / "pool.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = [k for k in settings if old.get(k) != settings[k]]
        if diff:
            raise ValueError(f"{out} was built with other settings ({', '.join(f'{k}={old.get(k)}' for k in diff)}); use a new --output")
    else:
        atomic.write_text(path, dumps_sorted(settings) + "\n")


class Progress:
    """Prints docs and pages done, rates and ETA at most every `every` seconds."""

    def __init__(self, total_docs: int, quiet: bool, every: float = 5.0):
        self.total, self.quiet, self.every = total_docs, quiet, every
        self.start = self.last = time.monotonic()

    def update(self, docs: int, pages: int, force: bool = False) -> None:
        now = time.monotonic()
        if self.quiet or (not force and now - self.last < self.every):
            return
        self.last = now
        dt = max(now - self.start, 1e-9)
        rate = docs / dt
        eta = (self.total - docs) / rate if rate > 0 else float("nan")
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "?"
        print(f"[pool] {docs}/{self.total} docs, {pages} pages, {pages / dt:.1f} pages/s, {rate:.2f} docs/s, ETA {eta_s}", file=sys.stderr, flush=True)


@dataclass
class PoolPlan:
    """What one task's run will do: the rows known before rendering and the chunks to render."""

    out: Path
    inputs: int
    """inputs in this task's share"""
    unique: int
    """of those, contents rendered by this task"""
    elsewhere: int
    """contents this task shares with other tasks' inputs"""
    rows: list[dict]
    """error and duplicate rows, and the rows of chunks an earlier run finished"""
    jobs: list[dict]
    """chunks to render (process_chunk's jobs)"""
    tars: int
    """pool tars this task's share makes, done or not"""


def run(opts: PoolOptions) -> dict:
    """Do one task's share of the pool; returns counts. Raises ValueError for bad options."""
    if not 0 <= opts.shard_index < opts.num_shards:
        raise ValueError(f"--shard-index {opts.shard_index} must be in [0, --num-shards {opts.num_shards})")
    everything = list_inputs(opts.input)
    if not everything:
        raise ValueError(f"no inputs: {opts.input} holds no *.pdf files (or the list is empty)")
    ctx = mp.get_context("spawn")
    counters = (ctx.Value("q", 0), ctx.Value("q", 0))
    workers = max(1, opts.workers)
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=(counters,)) if workers > 1 else None
    try:
        work = plan(opts, everything, (lambda fn, xs: pool.imap(fn, xs, chunksize=64)) if pool else map)
        if not opts.quiet:
            print(f"[pool] shard {opts.shard_index}/{opts.num_shards}: {work.inputs} inputs, {work.unique} unique "
                  f"({work.elsewhere} contents also in other shards), "
                  f"{work.unique - sum(len(j['docs']) for j in work.jobs)} already done, {len(work.jobs)} tars to write, "
                  f"{workers} workers", file=sys.stderr, flush=True)
        rows = work.rows + execute(work.jobs, pool, counters, opts.quiet)
    except BaseException:
        if pool:
            pool.terminate()  # a crash or Ctrl-C stops the workers; their temporary files are never renamed
        raise
    finally:
        if pool:
            pool.close()
            pool.join()
    return write(opts, work, rows)


def plan(opts: PoolOptions, everything: list[tuple[str, Path]], imap=map) -> PoolPlan:
    """Prepare the output directory and decide the work: hash this task's inputs (with ``imap``),
    keep each content once across all tasks, cut the unique ones into chunks and find the chunks
    an earlier run finished. Leftovers of earlier runs (temporaries, manifests, extra tars) go."""
    settings = opts.pdf_settings()
    inputs = [(s, p) for s, p in everything if shard_of(s, opts.num_shards) == opts.shard_index]
    out = Path(opts.output)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    (out / "parts").mkdir(exist_ok=True)
    _check_settings(out, {"version": POOL_VERSION, "num_shards": opts.num_shards, "docs_per_tar": opts.docs_per_tar, **asdict(settings)})
    # Manifests of an earlier run stop claiming anything until this run has finished.
    for old in (out / f"manifest-{opts.shard_index:05d}.jsonl", out / "manifest.jsonl"):
        old.unlink(missing_ok=True)
    prefix = f"pool-{opts.shard_index:05d}-"
    for stale in [*atomic.stale_temps(out / "shards", prefix), *atomic.stale_temps(out / "parts", prefix)]:
        stale.unlink()

    hashed = list(imap(_hash_file, [(s, str(p)) for s, p in inputs]))
    # A content is rendered once in the whole run: by the task holding its first source.
    others = [(s, str(p)) for s, p in everything if shard_of(s, opts.num_shards) != opts.shard_index]
    first_by_sha = first_sources_elsewhere(hashed, others, imap) if others else {}
    elsewhere = len(first_by_sha)
    rows, unique = [], []
    for source, path, sha, error in hashed:
        if sha is None:
            rows.append(_row(source, None, "error", error))
        elif sha in first_by_sha and first_by_sha[sha] < source:
            rows.append(_row(source, sha, "duplicate", duplicate_of=first_by_sha[sha]))
        else:
            first_by_sha[sha] = source
            unique.append((source, path, sha))

    n_tar = (len(unique) + opts.docs_per_tar - 1) // opts.docs_per_tar
    jobs = []
    for n in range(n_tar):
        docs = unique[n * opts.docs_per_tar : (n + 1) * opts.docs_per_tar]
        fingerprint = hashlib.sha256("\n".join(f"{s}\t{h}" for s, _, h in docs).encode()).hexdigest()
        name = f"{prefix}{n:05d}"
        job = {
            "docs": docs, "fingerprint": fingerprint, "settings": asdict(settings), "shard": f"shards/{name}.tar",
            "tar": str(out / "shards" / f"{name}.tar"), "part": str(out / "parts" / f"{name}.json"),
        }
        previous = _part_rows(Path(job["part"]), fingerprint) if Path(job["tar"]).exists() else None
        if previous is not None:
            rows += previous
        else:
            jobs.append(job)
    for old in [*(out / "shards").glob(prefix + "*.tar"), *(out / "parts").glob(prefix + "*.json")]:
        if int(old.stem.split("-")[2]) >= n_tar:  # left from an earlier run over more inputs
            old.unlink()
    return PoolPlan(out, len(inputs), len(unique), elsewhere, rows, jobs, n_tar)


def execute(jobs: list[dict], pool, counters, quiet: bool) -> list[dict]:
    """Render the chunks (in the worker ``pool``, or here without one), with progress lines;
    returns their manifest rows."""
    progress = Progress(sum(len(j["docs"]) for j in jobs), quiet)
    rows = []
    if pool:
        results = pool.imap_unordered(process_chunk, jobs)
        for _ in jobs:
            while True:  # wake up now and then to report progress inside long chunks
                try:
                    rows += results.next(timeout=progress.every)
                    break
                except mp.TimeoutError:
                    progress.update(counters[0].value, counters[1].value)
            progress.update(counters[0].value, counters[1].value)
    else:
        _init_worker(counters)
        for job in jobs:
            rows += process_chunk(job)
            progress.update(counters[0].value, counters[1].value)
        _init_worker(None)
    if jobs:
        progress.update(counters[0].value, counters[1].value, force=True)
    return rows


def write(opts: PoolOptions, work: PoolPlan, rows: list[dict]) -> dict:
    """Write this task's manifest (and the merged one when every task is done); returns counts."""
    rows = sorted(rows, key=lambda r: r["source"])
    manifest = work.out / f"manifest-{opts.shard_index:05d}.jsonl"
    atomic.write_text(manifest, "".join(dumps_sorted(r) + "\n" for r in rows))
    merged = merge_manifests(work.out, opts.num_shards)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "error", "duplicate")}
    counts.update(pages=sum(r["pages"] or 0 for r in rows if r["status"] == "ok"), tokens=sum(r["tokens"] or 0 for r in rows if r["status"] == "ok"))
    counts.update(inputs=len(rows), tars=work.tars, manifest=str(manifest), merged=str(merged) if merged else None)
    counts["text_quality"] = {k: sum((r.get("text_quality") or {}).get(k, 0) for r in rows if r["status"] == "ok")
                              for k in ("good", "ocr", "broken", "none", "low_confidence", "ocr_missing")}
    return counts


def text_summary(text: dict[str, int], ocr_on: bool) -> str:
    """One line: pages by text quality (the per-run OCR summary)."""
    line = (f"[pool] text: {text['good']} pages from the text layer, {text['ocr']} OCRed "
            f"({text['low_confidence']} low confidence), {text['broken']} broken text layers kept, {text['none']} without text")
    if text["ocr_missing"]:
        why = "--no-ocr" if not ocr_on else "tesseract is not installed" if not ocr_engine.available() else "tesseract failed"
        line += f"; {text['ocr_missing']} scanned or broken pages not OCRed ({why})"
    return line


def build_pool(input_path: str | Path, output: str | Path, quiet: bool = True, **kw) -> dict:
    """The pool stage from Python (tests, notebooks); ``kw`` are PoolOptions fields, e.g. workers=2, no_ocr=True.

        from megatron_vlm.data.sample_pdfs import make_corpus
        make_corpus("pdfs", n_docs=4, pages=(10, 14)); build_pool("pdfs", "pool", no_ocr=True)
    """
    return run(options.make(PoolOptions, "build_pool", input=input_path, output=output, quiet=quiet, **kw))


def merge_manifests(out: Path, num_shards: int) -> Path | None:
    """Write manifest.jsonl once every shard's manifest exists: sorted by source, each content kept once."""
    parts = [out / f"manifest-{i:05d}.jsonl" for i in range(num_shards)]
    if not all(p.exists() for p in parts):
        return None
    rows = sorted((json.loads(line) for p in parts for line in p.read_text().splitlines() if line), key=lambda r: r["source"])
    first: dict[str, str] = {}
    for i, r in enumerate(rows):
        sha = r["sha256"]
        if sha is None:
            continue
        if sha not in first:
            first[sha] = r["source"]
        elif r["status"] != "duplicate" or r["duplicate_of"] != first[sha]:
            rows[i] = _row(r["source"], sha, "duplicate", duplicate_of=first[sha])
    path = out / "manifest.jsonl"
    atomic.write_text(path, "".join(dumps_sorted(r) + "\n" for r in rows))
    return path


def main(args) -> int:
    try:
        args = options.from_args(PoolOptions, args)
        counts = run(args)
    except ValueError as e:
        print(f"[pool] error: {e}", file=sys.stderr)
        return 2
    print(
        f"[pool] shard {args.shard_index}/{args.num_shards}: {counts['inputs']} inputs -> {counts['ok']} ok, {counts['error']} error, "
        f"{counts['duplicate']} duplicate; {counts['pages']} pages, {counts['tokens']:,} image tokens; "
        f"{counts['tars']} tars in {Path(args.output) / 'shards'}; manifest {counts['manifest']}"
        + (f"; merged {counts['merged']}" if counts["merged"] else f"; manifest.jsonl waits for the other {args.num_shards - 1} shards")
    )
    print(text_summary(counts["text_quality"], not args.no_ocr))
    return 0
