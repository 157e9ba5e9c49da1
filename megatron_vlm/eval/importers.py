"""Public long-document VQA benchmarks, as published, into the eval format (docs/eval_format.md).

    import_mmlongbench([.../documentQA/mmlongdoc_K128.jsonl, ...], image_root=MMLB_IMAGE_DIR, ...)
    import_mmlongbench_doc(samples.json, documents=PDF_DIR, ...)   # renders the PDFs' pages
    import_longdocurl(LongDocURL.jsonl, image_root=PDF_PNGS_DIR, ...)
    import_slidevqa(annotations/qa/test.jsonl, image_root=IMAGES_SPLIT_DIR, ...)

Every item gets ``"benchmark": "mmlongbench"`` (so ``score`` picks MMLongBench's rules) and a
``dataset`` (mmlongdoc | longdocurl | slidevqa) for the paper's tables. Labels become MMLongBench's
(Integer, Float, String, List, None); List answers become JSON lists. Pages keep their document
(``doc_id``), 0-based ``page``, the label MMLongBench's prompt prints (``page_label``) and
``evidence``; image paths are relative to the image root, checked to exist inside it, and
``tokens``/``grid_thw`` are read from each image's size. Questions are sampled per input file as
MMLongBench's config does (100, seeded shuffle with seed 42; ``samples=0`` keeps all).
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from pathlib import Path

from megatron_vlm.eval.files import read_jsonl
from megatron_vlm.eval.rules_mmlongbench import string_kind
from megatron_vlm.models.family import DEFAULT_FAMILY, get_family
from megatron_vlm.utils.paths import inside, safe_name

BENCHMARK = "mmlongbench"
DATASETS = ("mmlongdoc", "longdocurl", "slidevqa")
SAMPLES, SEED = 100, 42  # MMLongBench's docqa config: max_test_samples 100, seed 42
_LEGACY_LABELS = {"Int": "Integer", "Str": "String"}
_MMLB_FILE = re.compile(r"^(longdocurl|mmlongdoc|slidevqa)_K(\d+)\.jsonl$")
_SLIDE_NUMBER = re.compile(r"-(\d+)-\d+\.\w+$")


def sample_indices(n: int, samples: int = SAMPLES, seed: int = SEED) -> list[int]:
    """Which of ``n`` lines MMLongBench scores: the first ``samples`` of a permutation drawn with
    numpy's default_rng(seed) (what HF datasets' ``shuffle(seed).select(range(k))`` does); all when 0."""
    import numpy as np

    if samples <= 0:
        return list(range(n))
    return [int(i) for i in np.random.default_rng(seed).permutation(n)[: min(n, samples)]]


class ImageIndex:
    """Image paths under one root: each checked to stay inside it and to exist; sizes read once,
    pages costed with ``family``'s image rule."""

    def __init__(self, root: str | Path, family: str = DEFAULT_FAMILY):
        self.root = Path(root)
        self.rule = get_family(family).image
        if not self.root.is_dir():
            raise FileNotFoundError(f"image root {self.root} is not a directory")
        self._sizes: dict[str, tuple[int, list[int]]] = {}

    def page(self, relative: str, **fields) -> dict:
        """A page entry for the image at ``relative``: image, tokens, grid_thw and ``fields``."""
        if relative not in self._sizes:
            from PIL import Image

            path = inside(self.root, relative, "image")
            if not path.is_file():
                raise FileNotFoundError(f"image {relative} not found under {self.root}")
            with Image.open(path) as im:
                width, height = im.size
            self._sizes[relative] = (
                self.rule.token_count(height, width),
                list(self.rule.grid_thw(height, width)),
            )
        tokens, grid = self._sizes[relative]
        return {"image": relative, "tokens": tokens, "grid_thw": grid, **fields}


def mmlongbench_label(relative: str) -> tuple[str, str]:
    """(document, page) as MMLongBench's prompt prints them for an image path: the parent directory's
    name, and the text after the last "page" up to the next "."."""
    return relative.split("/")[-2] if "/" in relative else "", relative.split("page")[-1].split(".")[0]


def json_list_answer(answer, where: str) -> str:
    """A List answer as the JSON text MMLongBench's scorer reads (from a list, JSON text or a Python literal)."""
    if isinstance(answer, str):
        for parse in (json.loads, ast.literal_eval):
            try:
                answer = parse(answer)
                break
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
    if not isinstance(answer, list):
        raise ValueError(f"{where}: List answer {str(answer)[:60]!r} is not a list")
    return json.dumps(answer, ensure_ascii=False)


def _format(label, answer, where: str) -> tuple[object, str]:
    label = _LEGACY_LABELS.get(label, label)
    if label not in ("Integer", "Float", "String", "List", "None"):
        raise ValueError(f"{where}: unknown answer_format {label!r}")
    return (json_list_answer(answer, where) if label == "List" else answer), label


def _item(
    dataset: str, source: str, qid, doc_id: str, doc_name: str, row: dict, answer, label, pages, prefix=""
) -> dict:
    """An eval item: id ``<prefix or dataset>/<qid>`` (unique across an import), qa_id the source's own id."""
    return {
        "id": f"{prefix or dataset}/{qid}",
        "qa_id": str(qid),
        "benchmark": BENCHMARK,
        "dataset": dataset,
        "source": source,
        "task": dataset,
        "doc_id": doc_id,
        "doc_name": doc_name,
        "question": row["question"],
        "answer": answer,
        "answer_format": label,
        "evidence_pages": [p["page"] for p in pages if p["evidence"] and p["doc_id"] == doc_id],
        "pages": pages,
    }


def _sampled(path: Path, rows: list, samples: int, seed: int, log):
    """(row, where) for the sampled rows of one question file, then a line saying how many."""
    keep = sample_indices(len(rows), samples, seed)
    for i in keep:
        yield i, rows[i], f"{path}:{i + 1}"
    log(f"  {path.name}: {len(keep)} of {len(rows)} questions (seed {seed})")


def _need(row: dict, keys, where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"{where}: lacks {', '.join(missing)}")


# ---------------------------------------------------------------------------------------------
# MMLongBench's doc-QA files


def _question_doc(dirs: list[str], doc_name: str) -> str:
    """The directory holding the question's own pages: named like ``doc_name`` (without .pdf), else the most used."""
    stem = re.sub(r"\.pdf$", "", str(doc_name), flags=re.I)
    if stem in dirs:
        return stem
    return Counter(dirs).most_common(1)[0][0]


def _page_number(dataset: str, relative: str, label: str, position: int) -> int:
    if dataset == "slidevqa":
        m = _SLIDE_NUMBER.search(relative)
        return int(m.group(1)) - 1 if m else position  # slide files are numbered from 1
    return int(label) if label.isdigit() else position  # mmlongdoc/longdocurl files from 0


def import_mmlongbench(
    files, image_root, samples: int = SAMPLES, seed: int = SEED, lengths=None, log=print, family: str = DEFAULT_FAMILY
) -> list[dict]:
    """Items from MMLongBench's doc-QA files (``<dataset>_K<n>.jsonl``: id, doc_name, question,
    answer, answer_format, page_list, ans_page_list), ``target_tokens`` n x 1024 from the file name.

    ``lengths`` (token counts) keeps only those files. ``ans_page_list`` holds 0-based pages of the
    question's document, marked as evidence on its pages.
    """
    images = ImageIndex(image_root, family)
    items = []
    for path in sorted(Path(f) for f in files):
        m = _MMLB_FILE.match(path.name)
        if not m:
            raise ValueError(f"{path.name} is not an MMLongBench doc-QA file (<dataset>_K<n>.jsonl)")
        dataset, target = m.group(1), int(m.group(2)) * 1024
        if lengths and target not in lengths:
            continue
        for _, row, where in _sampled(path, read_jsonl(path), samples, seed, log):
            _need(row, ("id", "doc_name", "question", "answer", "answer_format", "page_list"), where)
            answer, label = _format(row["answer_format"], row["answer"], where)
            labels = [mmlongbench_label(str(rel)) for rel in row["page_list"]]
            doc_id = _question_doc([d for d, _ in labels], row["doc_name"]) if labels else ""
            evidence = set(row.get("ans_page_list") or [])
            pages = []
            for pos, (rel, (doc, label_text)) in enumerate(zip(row["page_list"], labels)):
                number = _page_number(dataset, rel, label_text, pos)
                pages.append(
                    images.page(
                        rel,
                        doc_id=doc,
                        page=number,
                        page_label=label_text,
                        evidence=doc == doc_id and number in evidence,
                    )
                )
            item = _item(
                dataset, "MMLongBench", row["id"], doc_id, row["doc_name"], row, answer, label, pages, path.stem
            )
            item["target_tokens"] = target
            items.append(item)
    return items


# ---------------------------------------------------------------------------------------------
# the datasets as their authors publish them (whole documents; build --from-jsonl sets lengths)


def import_mmlongbench_doc(
    samples_json, documents, output, dpi: int = 144, samples: int = SAMPLES, seed: int = SEED, log=print,
    family: str = DEFAULT_FAMILY,
) -> list[dict]:
    """Items from MMLongBench-Doc's samples.json (doc_id = PDF file name, evidence_pages "[5, 6]"
    1-based, answer_format Int/Float/Str/List/None, List answers as Python literals), each PDF in
    ``documents`` rendered at ``dpi`` into ``output``/images/<doc>/<doc>_page<i>.png (0-based)."""
    from megatron_vlm.data.pdf import PdfError, open_pdf

    path = Path(samples_json)
    rows = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(rows, list):
        raise ValueError(f"{path} is not a JSON list of questions")
    keep = sample_indices(len(rows), samples, seed)
    output = Path(output)
    rendered: dict[str, list[dict]] = {}
    items = []
    for k, i in enumerate(keep, 1):
        row, where = rows[i], f"{path}[{i}]"
        _need(row, ("doc_id", "question", "answer", "answer_format", "evidence_pages"), where)
        pdf_name = safe_name(str(row["doc_id"]), "doc_id")
        doc_id = safe_name(re.sub(r"\.pdf$", "", pdf_name, flags=re.I), "doc_id")
        if doc_id not in rendered:
            try:
                doc = open_pdf(inside(documents, pdf_name, "document").read_bytes())
            except PdfError as e:
                raise ValueError(f"{where}: {pdf_name}: {e}") from None
            index = ImageIndex(output, family)
            pages = []
            for n, page in enumerate(doc):
                rel = f"images/{doc_id}/{doc_id}_page{n}.png"
                target = inside(output, rel, "image")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(page.get_pixmap(dpi=dpi).tobytes("png"))
                pages.append(index.page(rel, doc_id=doc_id, page=n, page_label=str(n)))
            doc.close()
            rendered[doc_id] = pages
            log(f"  [{k}/{len(keep)}] rendered {pdf_name}: {len(pages)} pages")
        evidence = ast.literal_eval(str(row["evidence_pages"])) if row["evidence_pages"] else []
        wanted = {int(e) - 1 for e in evidence}  # 1-based in samples.json
        pages = [{**p, "evidence": p["page"] in wanted} for p in rendered[doc_id]]
        answer, label = _format(row["answer_format"], row["answer"], where)
        items.append(_item("mmlongdoc", "MMLongBench-Doc", i, doc_id, pdf_name, row, answer, label, pages))
    return items


def import_longdocurl(jsonl, image_root, samples: int = SAMPLES, seed: int = SEED, log=print,
                      family: str = DEFAULT_FAMILY) -> list[dict]:
    """Items from LongDocURL's jsonl (question_id, doc_no, question, answer, answer_format, evidence_pages
    1-based, images: the pages its main experiments show, ``<doc_no>_<i>.png`` 0-based). Image paths
    are taken relative to ``image_root`` (the pdf_pngs directory) from the part after "pdf_pngs/",
    else their last three components."""
    path = Path(jsonl)
    images = ImageIndex(image_root, family)
    items = []
    for _, row, where in _sampled(path, read_jsonl(path), samples, seed, log):
        _need(row, ("question_id", "doc_no", "question", "answer", "answer_format", "images"), where)
        doc_id = safe_name(str(row["doc_no"]), "doc_no")
        wanted = {int(e) - 1 for e in row.get("evidence_pages") or []}
        pages = []
        for pos, image in enumerate(row["images"]):
            image = str(image)
            rel = image.split("pdf_pngs/", 1)[1] if "pdf_pngs/" in image else "/".join(image.split("/")[-3:])
            m = re.search(r"_(\d+)\.\w+$", rel)
            number = int(m.group(1)) if m else pos
            pages.append(
                images.page(rel, doc_id=doc_id, page=number, page_label=str(number), evidence=number in wanted)
            )
        answer, label = _format(row["answer_format"], row["answer"], where)
        items.append(_item("longdocurl", "LongDocURL", row["question_id"], doc_id, doc_id, row, answer, label, pages))
    return items


def import_slidevqa(jsonl, image_root, samples: int = SAMPLES, seed: int = SEED, log=print,
                    family: str = DEFAULT_FAMILY) -> list[dict]:
    """Items from SlideVQA's annotations/qa/<split>.jsonl (qa_id, deck_name, image_urls, question,
    answer, evidence_pages 1-20); images at ``image_root``/<deck_name>/<file name of the URL>
    (``images/<split>`` of its download script). SlideVQA has no answer formats: a list answer is
    List, else the label is what MMLongBench's scorer infers from the text (Integer, Float, String)."""
    path = Path(jsonl)
    images = ImageIndex(image_root, family)
    items = []
    for _, row, where in _sampled(path, read_jsonl(path), samples, seed, log):
        _need(row, ("qa_id", "deck_name", "image_urls", "question", "answer"), where)
        deck = safe_name(str(row["deck_name"]), "deck_name")
        wanted = {int(e) - 1 for e in row.get("evidence_pages") or []}
        pages = []
        for pos, url in enumerate(row["image_urls"]):
            rel = f"{deck}/{safe_name(str(url).rsplit('/', 1)[-1], 'image file name')}"
            pages.append(images.page(rel, doc_id=deck, page=pos, page_label=str(pos + 1), evidence=pos in wanted))
        answer = row["answer"]
        label = "List" if isinstance(answer, list) else string_kind(str(answer))
        answer, label = _format(label, answer, where)
        items.append(_item("slidevqa", "SlideVQA", row["qa_id"], deck, deck, row, answer, label, pages))
    return items
