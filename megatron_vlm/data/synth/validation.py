"""What a QA record must satisfy to be kept, for every teacher; rejections are counted by reason.

- question and answer present; answer_format one of Int/Float/Str/List/None and the answer fits it;
- evidence pages present and all inside the segment;
- extraction answers (extract-single, extract-multi: each list item) occur in the OCR text of the
  evidence pages (case, whitespace and thousands separators ignored);
- OCR tasks transcribe exactly the evidence pages' text;
- a question already kept for the same document is a duplicate.
"""

from __future__ import annotations

import json
import re
from collections import Counter

from megatron_vlm.data.synth.facts import parse_number
from megatron_vlm.data.synth.prompts import ANSWER_FORMATS


def normalize(text: str) -> str:
    text = " ".join(text.casefold().replace("|", " ").split())
    return re.sub(r"(?<=\d),(?=\d{3})", "", text)


def answer_items(answer: str, answer_format: str) -> list[str] | None:
    if answer_format != "List":
        return [answer]
    try:
        items = json.loads(answer)
    except ValueError:
        return None
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i.strip() for i in items):
        return None
    return items


class Validator:
    def __init__(self):
        self.rejected: Counter = Counter()
        self._questions: set[tuple[str, str]] = set()

    def check(self, record: dict, doc: dict) -> str | None:
        """The reason to reject `record`, or None to keep it (then its question counts as seen)."""
        reason = self._reason(record, doc)
        if reason:
            self.rejected[reason] += 1
            return reason
        self._questions.add((record["doc_id"], normalize(record["question"])))
        return None

    def _reason(self, r: dict, doc: dict) -> str | None:
        if not r["question"].strip() or (not r["answer"].strip() and r["answer_format"] != "None"):
            return "empty question or answer"
        if r["answer_format"] not in ANSWER_FORMATS:
            return "unknown answer format"
        items = answer_items(r["answer"], r["answer_format"])
        if items is None:
            return "List answer is not a JSON array of strings"
        if r["answer_format"] in ("Int", "Float"):
            value = parse_number(r["answer"])
            if value is None or (r["answer_format"] == "Int" and value != int(value)):
                return f"answer does not fit {r['answer_format']}"
        first, last = r["segment"]
        if not r["evidence_pages"]:
            return "no evidence pages"
        if any(not first <= p < last for p in r["evidence_pages"]):
            return "evidence page outside the segment"
        evidence_text = normalize(" ".join(doc["pages"][p]["text"] for p in r["evidence_pages"]))
        if r["task"] in ("extract-single", "extract-multi"):
            segment_text = normalize(" ".join(doc["pages"][p]["text"] for p in range(first, last)))
            for item in items:
                if normalize(item) not in evidence_text:
                    return "answer not on its evidence pages" if normalize(item) in segment_text else "answer not in the OCR text"
        if r["task"] in ("ocr-full", "ocr-needle"):
            if normalize(re.sub(r"(?m)^Page \d+:$", "", r["answer"])) != evidence_text:
                return "transcript differs from the evidence pages' text"
        if (r["doc_id"], normalize(r["question"])) in self._questions:
            return "duplicate question"
        return None
