"""Teacher prompts (versioned) and the schema a teacher's answer must follow.

A change to any prompt text must bump PROMPT_VERSION: records carry it, and the openai teacher's
cache is keyed by the request, so new prompts are never answered from old cache entries.
"""

from __future__ import annotations

import base64
import json

PROMPT_VERSION = "v2"
ANSWER_FORMATS = ("Int", "Float", "Str", "List", "None")

SYSTEM = (
    "You write question-answer pairs that train a model to read long documents. Each pair is later "
    "asked with the WHOLE document in context, so the model has to find the right page itself. You "
    "see a segment of consecutive pages of one document; each page image is preceded by a marker "
    '"Page N:" giving its index in the full document. Use these markers only for evidence_pages.\n'
    "Rules for the question:\n"
    "- Ask what a reader of this document would ask. Never mention a page: no page numbers, no page "
    "indices, neither the markers nor the numbers printed on the pages. Name a table or figure by its "
    'label ("Table 3") or a section by its title instead.\n'
    "- Name what you ask for: the table's row and column headers, the section, the quantity and its "
    "unit. No fill-in-the-blank questions and no quoted sentence with a gap.\n"
    "- The question must pick out exactly one fact in the whole document: no other place in the "
    "document may answer it with a different value, and a text answer should be printed only once "
    "in the document.\n"
    "- Use only facts from the body text and tables. Never use running headers, footers, page "
    "numbers, captions, or text that is garbled or hard to read.\n"
    "Reply with one JSON object only, no prose, with the keys: "
    '"question" (string), "answer" (string; for a List, a JSON array of strings), "answer_format" '
    '(one of "Int", "Float", "Str", "List", "None"), "evidence_pages" (list of the page markers '
    'you used, as numbers), "evidence_description" (one sentence saying where the answer is: the '
    "table with its row and column, or the section; for reasoning, which values were combined and how)."
)

TASK_INSTRUCTIONS = {
    "extract-single": (
        "Ask one question whose answer is a short span (a value, name, date or phrase) printed on "
        "exactly one page of the segment, copied exactly as printed."
    ),
    "extract-multi": (
        "Ask one question whose answer gathers 2-4 short spans of one kind (for example the same "
        "column's value for different rows, or the same quantity for different items) printed on "
        "different pages of the segment (answer_format List), each copied exactly as printed, in the "
        "order the question asks for them."
    ),
    "reasoning": (
        "Ask one question that combines comparable values (the same column of a table, or the same "
        "quantity in the same unit) from one or more pages of the segment by a calculation or "
        "comparison (a sum, difference, ratio, count, or which is largest), and say the operation "
        "in the question. Give the final result as the answer (Int or Float for numbers) and name "
        "the values used and the operation in evidence_description."
    ),
}


def _data_url(image: bytes) -> str:
    mime = "image/png" if image[:4] == b"\x89PNG" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(image).decode()}"


def build_messages(job, send_text: bool) -> list[dict]:
    """The chat messages for one job: the segment's pages (image, optionally OCR text) and the task."""
    content: list[dict] = []
    for p in range(*job.segment):
        content.append({"type": "text", "text": f"Page {p + 1}:"})
        if p in job.images:
            content.append({"type": "image_url", "image_url": {"url": _data_url(job.images[p])}})
        if send_text:
            content.append({"type": "text", "text": f"OCR text of page {p + 1}:\n{job.doc['pages'][p]['text']}"})
    first, last = job.segment[0] + 1, job.segment[1]
    content.append({"type": "text", "text": f"Task ({job.task}, pages {first}-{last}): {TASK_INSTRUCTIONS[job.task]}"})
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]


def parse_answer(text: str) -> tuple[dict | None, str | None]:
    """(candidate with 0-based evidence pages, None) or (None, what is wrong with the reply)."""
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    try:
        obj = json.loads(body)
    except ValueError:
        return None, "reply is not JSON"
    if not isinstance(obj, dict):
        return None, "reply is not a JSON object"
    missing = [k for k in ("question", "answer", "answer_format", "evidence_pages", "evidence_description") if k not in obj]
    if missing:
        return None, f"missing keys: {', '.join(missing)}"
    answer = obj["answer"]
    if isinstance(answer, list):
        answer = json.dumps([str(a) for a in answer])
    elif isinstance(answer, (int, float)):
        answer = str(answer)
    if not isinstance(obj["question"], str) or not isinstance(answer, str):
        return None, "question and answer must be strings"
    if obj["answer_format"] not in ANSWER_FORMATS:
        return None, f"answer_format must be one of {', '.join(ANSWER_FORMATS)}"
    pages = obj["evidence_pages"]
    if not isinstance(pages, list) or not all(isinstance(p, int) or (isinstance(p, str) and p.isdigit()) for p in pages):
        return None, "evidence_pages must be a list of page numbers"
    return {
        "question": obj["question"].strip(),
        "answer": answer.strip(),
        "answer_format": obj["answer_format"],
        "evidence_pages": sorted({int(p) - 1 for p in pages}),
        "evidence_description": str(obj["evidence_description"]).strip(),
    }, None


def reask_message(error: str) -> dict:
    return {"role": "user", "content": f"Your reply could not be used ({error}). Reply again with only the JSON object described."}
