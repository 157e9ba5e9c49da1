"""Fixed-length eval contexts: a document's evidence padded with distractor pages to a token target.

An eval item (docs/eval_format.md) is one question over a sequence of page images whose token
count is fixed (e.g. 32K ... 512K) and whose evidence sits at a chosen depth. How one is built:

1. The anchor span is the question's document pages from its first to its last evidence page
   (the QA segment when there is no evidence page, as for not-answerable questions).
2. The token budget is ``target_tokens - prompt_tokens``; each page costs its image tokens (the
   model family's image rule, megatron_vlm.models.family) + 2 (<|vision_start|>, <|vision_end|>).
3. The non-anchor budget F = budget - anchor cost is split: depth x F before the anchor and the
   rest after it. Each side is filled first with the document's own neighbouring pages (nearest
   first), then with pages of other documents (whole runs of each, in page order, documents in a
   seeded random order; no document is split around the anchor), a page at a time while the next
   page still fits. So the total is within one page of the budget, and the tokens before the
   anchor are within one page of depth x F.

Order in the context: distractors | document pages before | anchor | document pages after | distractors.
Held-out only: documents in the exclusion set (e.g. every doc_id of a training shard set) are
used neither for questions nor as distractors.
"""

from __future__ import annotations

import json
import random
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from megatron_vlm.data import pool_format
from megatron_vlm.models.family import DEFAULT_FAMILY, get_family

VISION_WRAP_TOKENS = 2  # <|vision_start|> and <|vision_end|> around each image's pads


@dataclass(frozen=True)
class Page:
    """One page image of a document and what it costs in the LLM sequence."""

    doc_id: str
    index: int
    tokens: int  # <|image_pad|> count (the family's ImageRule.token_count)
    grid_thw: tuple[int, int, int]
    ext: str  # "png" | "jpg"
    read_bytes: Callable[[], bytes] = field(compare=False, repr=False)

    @property
    def cost(self) -> int:
        return self.tokens + VISION_WRAP_TOKENS

    @property
    def name(self) -> str:
        return f"{self.doc_id}.p{self.index:04d}.{self.ext}"


@dataclass
class Document:
    doc_id: str
    pages: list[Page]


@dataclass
class Question:
    """A QA record (docs/formats.md section 2) reduced to what the eval needs."""

    id: str
    doc_id: str
    task: str
    question: str
    answer: object
    answer_format: str
    evidence_pages: list[int]
    segment: tuple[int, int] | None = None
    extra: dict = field(default_factory=dict)  # fields an eval item carries over (benchmark, dataset, doc_name)


@dataclass
class Context:
    pages: list[Page]
    evidence_positions: list[int]  # positions in ``pages`` of the question's evidence pages
    anchor: tuple[int, int]  # [first, last) positions of the anchor span in ``pages``
    before_tokens: int  # cost of the pages before the anchor
    anchor_tokens: int

    @property
    def tokens(self) -> int:
        return sum(p.cost for p in self.pages)

    @property
    def depth(self) -> float:
        """Achieved depth: tokens before the anchor / all non-anchor tokens (0 when there are none)."""
        rest = self.tokens - self.anchor_tokens
        return self.before_tokens / rest if rest else 0.0


# ---------------------------------------------------------------------------------------------
# sources


def _file_reader(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


def pool_family(pool_dir: str | Path) -> str:
    """The family whose image rule a pool counted its pages with (pools from before families: Qwen2.5-VL's)."""
    return pool_format.read_settings(Path(pool_dir)).get("family", DEFAULT_FAMILY)


def read_pool(pool_dir: str | Path, family: str | None = None) -> dict[str, Document]:
    """Every ``ok`` document of a pool (docs/formats.md section 1), pages costed with ``family``'s image
    rule (default: the pool's family, with the pool's pixel limits; another family with its own).

    Read through data.pool_format; page images are not loaded, only located (byte spans inside
    the tars), and read when an eval set is written.
    """
    pool_dir = Path(pool_dir)
    settings = pool_format.read_settings(pool_dir)
    native = pool_family(pool_dir)
    rule = get_family(family or native).image
    if (family or native) == native:
        rule = rule.with_pixels(settings.get("min_pixels"), settings.get("max_pixels"))
    docs: dict[str, Document] = {}
    for doc in pool_format.documents(pool_dir):
        pages = []
        for p in doc.meta["pages"]:
            image = doc.images.get(p["index"])
            if image is None:
                raise FileNotFoundError(f"{doc.id}.p{p['index']:04d}.png|jpg missing from the pool at {pool_dir}")
            grid = rule.grid_thw(p["height_px"], p["width_px"])
            tokens = rule.token_count(p["height_px"], p["width_px"])
            pages.append(Page(doc.id, p["index"], tokens, grid, image.ext, image.read))
        docs[doc.id] = Document(doc.id, sorted(pages, key=lambda q: q.index))
    if not docs:
        raise ValueError(f"no ok documents in the pool at {pool_dir}")
    return docs


def read_qa_records(qa_dir: str | Path) -> list[Question]:
    """QA records (docs/formats.md section 2) from QA_DIR/records-*.jsonl, or from one .jsonl file."""
    from megatron_vlm.data.synth.records import read_records

    return [
        Question(r["id"], r["doc_id"], r["task"], r["question"], r["answer"], r["answer_format"], list(r["evidence_pages"]), tuple(r["segment"]))
        for r in read_records(qa_dir)
    ]


def image_page(path: Path, doc_id: str, index: int, family: str = DEFAULT_FAMILY) -> Page:
    """A page from an image file, costed from its pixel size with ``family``'s image rule."""
    rule = get_family(family).image
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
    ext = "jpg" if path.suffix.lower() in (".jpg", ".jpeg") else "png"
    return Page(
        doc_id,
        index,
        rule.token_count(height, width),
        rule.grid_thw(height, width),
        ext,
        _file_reader(path),
    )


CARRIED_FIELDS = ("benchmark", "dataset", "doc_name", "source")


def read_document_jsonl(path: str | Path, image_root: str | Path | None = None, family: str = DEFAULT_FAMILY,
                        ) -> tuple[dict[str, Document], list[Question]]:
    """Documents and questions from the eval JSONL format (docs/eval_format.md), for re-padding;
    pages costed with ``family``'s image rule.

    A page belongs to the document its ``doc_id`` names (default: the line's ``doc_id``, else its
    id); every doc_id must be a safe file name. Pages numbered by ``page`` keep that number; a
    document seen on several lines is the union of its pages, ordered by number. The question's
    evidence: its pages marked ``evidence``, else ``evidence_pages``. Image paths are relative to
    ``image_root`` (default: the file's directory) and must stay inside it. Every line is checked
    before any image is opened; ValueError names the line.
    """
    from megatron_vlm.eval.scoring import check_format
    from megatron_vlm.utils.paths import inside, safe_name

    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            if not isinstance(r, dict):
                raise ValueError("not a JSON object")
            missing = [k for k in ("id", "pages", "question", "answer", "answer_format") if k not in r]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            check_format(r["answer_format"])
            doc_id = safe_name(str(r.get("doc_id") or r["id"]), "doc_id")
            if not isinstance(r["pages"], list) or not r["pages"]:
                raise ValueError("pages is not a non-empty list")
            pages = []
            for pos, p in enumerate(r["pages"]):
                p = p if isinstance(p, dict) else {"image": p}
                number = p.get("page", pos)
                if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                    raise ValueError(f"page number {number!r} is not a page index")
                owner = safe_name(str(p.get("doc_id", doc_id)), "doc_id")
                pages.append((owner, number, inside(root, p.get("image"), "image"), bool(p.get("evidence"))))
            evidence = r.get("evidence_pages") or []
            if not isinstance(evidence, list) or not all(isinstance(e, int) for e in evidence):
                raise ValueError(f"evidence_pages {evidence!r} is not a list of page indices")
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
        except ValueError as e:
            raise ValueError(f"{path}:{n}: {e}") from None
        rows.append((r, doc_id, pages, evidence))
    by_doc: dict[str, dict[int, Path]] = {}
    questions = []
    for r, doc_id, pages, evidence in rows:
        for owner, number, image, _ in pages:
            by_doc.setdefault(owner, {}).setdefault(number, image)
        marked = [number for owner, number, _, ev in pages if ev and owner == doc_id]
        questions.append(
            Question(
                str(r["id"]),
                doc_id,
                r.get("task", "unknown"),
                r["question"],
                r["answer"],
                r["answer_format"],
                marked or list(evidence),
                extra={k: r[k] for k in CARRIED_FIELDS if k in r},
            )
        )
    docs = {
        doc_id: Document(doc_id, [image_page(numbered[k], doc_id, k, family) for k in sorted(numbered)])
        for doc_id, numbered in by_doc.items()
    }
    return docs, questions


def read_exclusions(path: str | Path) -> set[str]:
    """Doc ids never to evaluate on: a text file (one id a line), a JSON list, or a training SHARD_DIR.

    For a SHARD_DIR, every instance's ``doc_id`` in shard-*.tar (docs/formats.md section 3).
    """
    path = Path(path)
    if path.is_dir():
        ids = set()
        for tar_path in sorted(path.glob("shard-*.tar")):
            with tarfile.open(tar_path) as tf:
                for m in tf.getmembers():
                    if m.name.endswith(".json"):
                        ids.add(json.loads(tf.extractfile(m).read())["doc_id"])
        return ids
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return {str(x) for x in json.loads(text)}
    return {ln.strip() for ln in text.splitlines() if ln.strip()}


# ---------------------------------------------------------------------------------------------
# building


def anchor_span(question: Question, doc: Document) -> tuple[int, int]:
    """[first, last) positions in ``doc.pages`` of the evidence span (the segment if no evidence)."""
    position = {p.index: i for i, p in enumerate(doc.pages)}
    if question.evidence_pages:
        missing = [e for e in question.evidence_pages if e not in position]
        if missing:
            raise ValueError(f"question {question.id}: evidence pages {missing} not in document {doc.doc_id}")
        pos = [position[e] for e in question.evidence_pages]
        return min(pos), max(pos) + 1
    if question.segment:
        first, last = question.segment
        inside = [position[i] for i in range(first, last) if i in position]
        if inside:
            return min(inside), max(inside) + 1
    return 0, len(doc.pages)


class _LazyPages:
    """Pages of the distractor documents, documents in a seeded random order, pages in page order.

    Materialised only as far as they are indexed: the order is a lazy Fisher-Yates shuffle, so a
    context costs what it uses, not the size of the pool. Skips the document ``skip_id``.
    """

    def __init__(self, docs: Sequence[Document], rng: random.Random, skip_id: str):
        self._docs, self._rng, self._skip = docs, rng, skip_id
        self._drawn, self._swapped, self._pages = 0, {}, []

    def _next_doc(self) -> Document | None:
        n = len(self._docs)
        while self._drawn < n:
            i = self._drawn
            j = self._rng.randrange(i, n)
            vi, vj = self._swapped.get(i, i), self._swapped.get(j, j)
            self._swapped[j] = vi
            self._drawn += 1
            doc = self._docs[vj]
            if doc.doc_id != self._skip and doc.pages:
                return doc
        return None

    def _grow(self, n: int) -> bool:
        while len(self._pages) < n:
            doc = self._next_doc()
            if doc is None:
                return False
            self._pages.extend(doc.pages)
        return True

    def __getitem__(self, i: int) -> Page:
        self._grow(i + 1)
        return self._pages[i]

    def has(self, i: int) -> bool:
        """Whether there is a page at position ``i``."""
        return self._grow(i + 1)


def _fill(pages: Sequence[Page] | _LazyPages, start: int, budget: int) -> tuple[list[Page], int, int]:
    """Take pages from ``pages[start:]`` while the next one fits in ``budget``: (taken, tokens, next start)."""
    has = pages.has if isinstance(pages, _LazyPages) else (lambda k: k < len(pages))
    taken, used, i = [], 0, start
    while has(i) and used + pages[i].cost <= budget:
        taken.append(pages[i])
        used += pages[i].cost
        i += 1
    return taken, used, i


def build_context(
    question: Question,
    doc: Document,
    distractors: Sequence[Document],
    target_tokens: int,
    depth: float,
    seed: int = 0,
    prompt_tokens: int = 0,
) -> Context:
    """The pages of one eval context (rule in the module docstring).

    Raises ValueError when the anchor alone exceeds the budget, or when the distractor documents
    run out of pages more than a page short of the budget.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    budget = target_tokens - prompt_tokens
    first, last = anchor_span(question, doc)
    anchor = doc.pages[first:last]
    anchor_tokens = sum(p.cost for p in anchor)
    if anchor_tokens > budget:
        raise ValueError(
            f"question {question.id}: evidence span of {anchor_tokens} tokens exceeds the {budget}-token budget"
        )
    rest = budget - anchor_tokens
    before_budget = round(depth * rest)

    rng = random.Random(f"{seed}:{question.id}:{target_tokens}:{depth}")
    stream = _LazyPages(distractors, rng, doc.doc_id)

    own_before = doc.pages[:first][::-1]  # nearest first
    before_doc, used_before, n = _fill(own_before, 0, before_budget)
    before_distractors, i = [], 0
    if n == len(own_before):  # the document ran out first: pad with other documents
        before_distractors, used, i = _fill(stream, 0, before_budget - used_before)
        used_before += used

    # the after side starts with a fresh distractor document, not the rest of one split around the anchor
    while i > 0 and stream.has(i) and stream[i].doc_id == stream[i - 1].doc_id:
        i += 1

    own_after = doc.pages[last:]
    after_doc, used_after, n = _fill(own_after, 0, rest - used_before)
    after_distractors = []
    if n == len(own_after):
        after_distractors, used, i = _fill(stream, i, rest - used_before - used_after)
        used_after += used

    pages = before_distractors + before_doc[::-1] + anchor + after_doc + after_distractors
    gap = rest - used_before - used_after
    if not stream.has(i) and pages and gap >= max(p.cost for p in pages):
        raise ValueError(f"question {question.id}: distractor pages ran out {gap} tokens short of {budget}")
    start = len(before_distractors) + len(before_doc)
    evidence = set(question.evidence_pages)
    positions = [start + k for k, p in enumerate(anchor) if p.index in evidence]
    return Context(pages, positions, (start, start + len(anchor)), used_before, anchor_tokens)
