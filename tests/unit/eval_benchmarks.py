"""Small files in the published formats of MMLongBench's doc-QA data, MMLongBench-Doc, LongDocURL
and SlideVQA (field names and conventions: docs/eval_format.md, "Importing"), for the importer tests.

Nothing here is downloaded: the questions are made up, the page images are flat colours and the
PDFs are drawn with pymupdf.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

# 308 x 420 px -> 11 x 15 = 165 tokens (+2 wrap) a page with the Qwen2.5-VL rule
PAGE_PX = (308, 420)
PAGE_COST = 167


def _image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", PAGE_PX, (shade % 256, (3 * shade) % 256, 90)).save(path)


def write_mmlongbench(root: Path) -> tuple[Path, Path]:
    """mmlb_data/documentQA/mmlongdoc_K8.jsonl (3 questions) and slidevqa_K8.jsonl (1) + mmlb_image/.

    Page lists mix the question's document with padding pages of another one, as MMLongBench's
    files do; ``ans_page_list`` holds 0-based pages of the question's document.
    """
    data, images = root / "mmlb_data" / "documentQA", root / "mmlb_image"
    data.mkdir(parents=True)
    doc_a, doc_b = "PH_2016.06.08_Economy-Final", "4190345"

    def pages(doc, numbers):
        out = []
        for n in numbers:
            rel = f"documentQA/mmlongdoc/{doc}/{doc}_page{n}.jpg"
            _image(images / rel, 7 * n + len(doc))
            out.append(rel)
        return out

    rows = [
        {
            "id": "mmlongdoc_0",
            "doc_name": doc_a + ".pdf",
            "question": "How do 5% of the Latinos see economic upward mobility for their children?",
            "answer": "Less well-off",
            "answer_format": "String",
            "page_list": pages(doc_a, [3, 4, 5]) + pages(doc_b, [0, 1]),
            "ans_page_list": [4],
        },
        {
            "id": "mmlongdoc_1",
            "doc_name": doc_b,
            "question": "How many judging criteria are there?",
            "answer": "5",  # every answer is text: HF datasets' JSON loader (MMLongBench's) wants one type a column
            "answer_format": "Integer",
            "page_list": pages(doc_b, [0, 1, 2]) + pages(doc_a, [0]),
            "ans_page_list": [2],
        },
        {
            "id": "mmlongdoc_2",
            "doc_name": doc_a + ".pdf",
            "question": "Which magazines are named?",
            "answer": '["The Economist", "TIME"]',
            "answer_format": "List",
            "page_list": pages(doc_a, [0, 1]),
            "ans_page_list": [0, 1],
        },
    ]
    (data / "mmlongdoc_K8.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    deck = "private-banking-wealth-management-what-clients-want"
    slides = []
    for n in (1, 2, 3, 4):
        rel = f"documentQA/slidevqa/{deck}/{deck}-{n}-1024.jpg"
        _image(images / rel, 40 + n)
        slides.append(rel)
    slide = {
        "id": "slideVQA_0",
        "doc_name": deck,
        "question": "What share of clients want advice?",
        "answer": "40%",
        "answer_format": "Float",
        "page_list": slides,
        "ans_page_list": [3],
    }
    (data / "slidevqa_K8.jsonl").write_text(json.dumps(slide) + "\n")
    return data, images


def write_mmlongbench_doc(root: Path) -> tuple[Path, Path]:
    """samples.json (a JSON list: doc_id, doc_type, question, answer, evidence_pages "[n]" 1-based,
    evidence_sources, answer_format Int/Float/Str/List/None) + documents/<doc_id> PDFs."""
    import pymupdf

    docs = root / "documents"
    docs.mkdir(parents=True)
    for name, n_pages in (("report-a.pdf", 3), ("report-b.pdf", 2)):
        pdf = pymupdf.open()
        for i in range(n_pages):
            page = pdf.new_page(width=200, height=260)
            page.insert_text((20, 40), f"{name} page {i + 1}", fontsize=11)
        pdf.save(docs / name)
        pdf.close()
    samples = [
        {
            "doc_id": "report-a.pdf",
            "doc_type": "Research report",
            "question": "Which colours?",
            "answer": "['Red', 'Blue']",
            "evidence_pages": "[2]",
            "evidence_sources": "['Chart']",
            "answer_format": "List",
        },
        {
            "doc_id": "report-b.pdf",
            "doc_type": "Guidebook",
            "question": "How many pages?",
            "answer": "2",
            "evidence_pages": "[1, 2]",
            "evidence_sources": "['Pure-text (Plain-text)']",
            "answer_format": "Int",
        },
        {
            "doc_id": "report-a.pdf",
            "doc_type": "Research report",
            "question": "Who won in 2030?",
            "answer": "Not answerable",
            "evidence_pages": "[]",
            "evidence_sources": "[]",
            "answer_format": "None",
        },
    ]
    path = root / "samples.json"
    path.write_text(json.dumps(samples))
    return path, docs


def write_longdocurl(root: Path) -> tuple[Path, Path]:
    """LongDocURL.jsonl (question_id, doc_no, start_end_idx and evidence_pages 1-based, images: absolute
    paths on the authors' machine ending in pdf_pngs/<range>/<doc_no[:4]>/<doc_no>_<i>.png, 0-based)."""
    pngs = root / "pdf_pngs"
    rows = []
    for q, (doc, start, end, evidence, answer, fmt) in enumerate(
        [("4055915", 2, 4, [3], 5, "Integer"), ("4127644", 1, 3, [1, 2], ["Table 4.15", "Figure 4.2"], "List")]
    ):
        images = []
        for page in range(start, end + 1):
            rel = f"4000-4999/{doc[:4]}/{doc}_{page - 1}.png"
            _image(pngs / rel, 11 * page + q)
            images.append(f"/data/oss_bucket_0/public_datasets/pdf_pngs/{rel}")
        rows.append(
            {
                "question_id": f"free_{doc}_{start}_{end}_{q}",
                "doc_no": doc,
                "total_pages": 84,
                "start_end_idx": [start, end],
                "question_type": "extract",
                "question": f"Question {q}?",
                "answer": answer,
                "detailed_evidences": "",
                "evidence_pages": evidence,
                "evidence_sources": ["Table"],
                "answer_format": fmt,
                "task_tag": "Understanding",
                "images": images,
                "pdf_path": f"/data/oss_bucket_0/public_datasets/ccpdf_zip/4000-4999/{doc}.pdf",
                "subTask": ["SP_Text_Understanding"],
            }
        )
    path = root / "LongDocURL.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, pngs


def write_slidevqa(root: Path) -> tuple[Path, Path]:
    """annotations/qa/test.jsonl (deck_name, deck_url, image_urls, qa_id, question, answer,
    arithmetic_expression, evidence_pages 1-20, reasoning_type, answer_type) + images/test/<deck>/<file>."""
    images = root / "images" / "test"
    rows = []
    for q, (deck, answer, evidence) in enumerate([("deck-one", "42", [2]), ("deck-two", "Tokyo and Osaka", [1, 3])]):
        urls = []
        for n in (1, 2, 3):
            name = f"{deck}-{n}-1024.jpg"
            _image(images / deck / name, 23 * n + q)
            urls.append(f"https://image.slidesharecdn.com/{deck}/95/{name}")
        rows.append(
            {
                "deck_name": deck,
                "deck_url": f"https://www.slideshare.net/x/{deck}",
                "image_urls": urls,
                "qa_id": 100 + q,
                "question": f"Slide question {q}?",
                "answer": answer,
                "arithmetic_expression": "None",
                "evidence_pages": evidence,
                "reasoning_type": "single-hop",
                "answer_type": "Single-Span",
            }
        )
    path = root / "annotations" / "qa" / "test.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, images
