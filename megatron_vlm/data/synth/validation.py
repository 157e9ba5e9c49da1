"""What a QA record must satisfy to be kept, for every teacher; rejections are counted by reason.

`problems(record, doc, facts)` lists every rule a record breaks (qa-check reports them all);
`Validator.check` keeps a record only when it breaks none and counts the first by reason. Rules:

- format: question and answer present; answer_format one of Int/Float/Str/List/None and the
  answer fits it; evidence pages present and inside the segment.
- extraction answers (extract-single, extract-multi: each list item) occur in the evidence
  pages' text (case, whitespace and thousands separators ignored, whole words), and in their
  usable text: body blocks (and section headings) of good-quality pages, not running headers,
  footers, captions or text repeated across pages (facts.py);
- OCR tasks transcribe exactly the evidence pages' text;
- a reader's question (extract-single, extract-multi, reasoning): names no page (neither a PDF
  index nor a printed number: the model must find the page), has no blank to fill, names what
  it asks for (at least three content words);
- it picks out one fact in the whole document: a text answer occurs once in the document (or
  only after the label the question names), and no fact the question names (facts.py: its
  anchors all appear in the question) has another value elsewhere under the same name;
- reasoning states its operation and names at least two facts of the document (facts.py), all
  comparable (one column of one table, or quantities with one unit): values the fact reader cannot
  find (in figures, say) cannot be checked, so such questions are not kept;
- a question already kept for the same document is a duplicate.
"""

from __future__ import annotations

import json
import re
from collections import Counter

from megatron_vlm.data.synth.facts import (
    STOPWORDS,
    Fact,
    FactCache,
    block_usable,
    is_repeated,
    normalize,
    occurs_once,
    page_problem,
    parse_number,
    word_pattern,
)
from megatron_vlm.data.synth.prompts import ANSWER_FORMATS

READER_TASKS = ("extract-single", "extract-multi", "reasoning")
PAGE_REFERENCE = re.compile(
    r"\b(?:pages?|pp?\.|seiten?|pagina|página)\s*(?:(?:numbered|number|no\.?)\s*)?(?:\d|[ivxlcdm]+\b)|第\s*\d+\s*页"
    r"|\b(?:first|second|third|fourth|fifth|last|next|previous|same|\d+(?:st|nd|rd|th))\s+page\b",
    re.IGNORECASE,
)
BLANK = re.compile(r"_{2,}|\[\s*blank\s*\]|\(\s*\?\s*\)|…\s*\?$")
OPERATION = re.compile(
    r"\b(?:sum|total|difference|minus|plus|more|less|fewer|larger|largest|smaller|smallest|greater|greatest|higher|"
    r"highest|lower|lowest|average|mean|ratio|times|how many|compare|combined|exceed|increase|decrease|change|count|"
    r"together|product|divided|maximum|minimum|most|least)\b",
    re.IGNORECASE,
)

# qa-check's report groups the rules into what the issue asks to see.
CATEGORIES = {
    "question names a page": "names a page",
    "question is a fill-in-the-blank": "blank or vague question",
    "question names too little": "blank or vague question",
    "question does not pick out one fact": "does not pick out one fact",
    "the answer text occurs more than once in the document": "does not pick out one fact",
    "answer comes from a header, footer, caption or repeated text": "fact from header/footer/caption or low-quality text",
    "answer comes from low-quality text": "fact from header/footer/caption or low-quality text",
    "reasoning question states no operation": "reasoning not over comparable values",
    "reasoning combines values of different kinds": "reasoning not over comparable values",
    "reasoning operands are not facts of the document": "reasoning not over comparable values",
}


def names_a_page(question: str) -> bool:
    """True when a question points at a page by number ("page 12", "p. 3", "pages iv", "第3页", "the 2nd page")."""
    return bool(PAGE_REFERENCE.search(question))


def named_words(text: str) -> list[str]:
    """The words a question names things with: content words, numbers and labels, CJK characters."""
    words = [w for w in re.findall(r"[^\W\d_]{3,}", text) if w.casefold() not in STOPWORDS]
    return words + re.findall(r"\d+(?:[.,]\d+)*", text) + re.findall(r"[\u3400-\u9fff]", text)


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


def _contains(text: str, item: str) -> bool:
    """`item` occurs in normalised `text` as whole words (a number may carry a unit: "10pt")."""
    needle = normalize(item)
    if not needle:
        return False
    if parse_number(item) is not None:
        return re.search(rf"(?<![\w.]){re.escape(needle)}(?![\d]|[.,]\d)", text) is not None
    return re.search(word_pattern(needle), text) is not None


def usable_text(doc: dict, page_index: int, repeated: set[str]) -> str:
    """The page's text a fact may come from (normalised): body blocks and headings of a good page,
    without captions, running headers/footers and text repeated on several pages."""
    page = doc["pages"][page_index]
    if page_problem(page) is not None or "blocks" not in page:
        return ""
    parts = []
    for block in page["blocks"]:
        if block_usable(block) or block["kind"] == "heading":
            parts += [line for line in block["text"].splitlines() if not is_repeated(line, repeated)]
    return normalize(" \n ".join(parts))


def named_facts(question: str, facts: list[Fact], pages: list[int]) -> list[Fact]:
    """The facts on `pages` a question names: a cell's table, row and column (quoted, when the
    question quotes), a quantity's section, unit and clause words, a section's number."""
    q = normalize(question)
    quoted = '"' in q  # a question that quotes headers names a cell by its quoted row and column
    # A table named by its columns ('the table with the columns "a", "b" and "c"') names no cell by them.
    q = re.sub(r'with the columns (?:"[^"]*"(?:,\s*|\s+and\s+|\s*…\s*)?)+', "with the columns ", q)
    parts = q.split(";")  # a question listing several things names each within one part
    unquoted = re.sub(r'"[^"]*"', " ", q)  # "section 2.1" names a section; a quoted title does not
    sections = {n for m in re.finditer(r"\b(?:sub)?sections?\s+((?:\d+(?:\.\d+)*(?:,\s*|\s+and\s+)?)+)", unquoted)
                for n in re.findall(r"\d+(?:\.\d+)*", m[1])}
    found = []
    for f in facts:
        if f.page not in pages:
            continue
        anchors = [normalize(a) for a in f.anchors if a]
        if f.kind == "section":
            if f.anchors[0] in sections:
                found.append(f)
            continue
        if f.kind == "quantity":
            if any(_names_quantity(f, part) for part in parts):
                found.append(f)
            continue
        if quoted:
            anchors = [a if i == 0 else f'"{a}"' for i, a in enumerate(normalize(x) for x in f.anchors) if a]
        if anchors and any(all(a in part for a in anchors) for part in parts):
            found.append(f)
    return found


def _stems(text: str) -> set[str]:
    return {w[:5] for w in re.findall(r"[^\W\d_]{3,}", normalize(text)) if w not in STOPWORDS}


def _names_quantity(f: Fact, part: str) -> bool:
    """A question (part) names a quantity when it names its section (if any) and unit, and two
    thirds of the clause's words (by their first five letters, so "included" ~ "include")."""
    section, before, unit = (normalize(a) for a in f.anchors)
    if section and section not in part:
        return False
    if unit == "%":
        if not re.search(r"%|percent|per cent", part):
            return False
    elif not re.search(rf"(?<!\w){re.escape(unit)}(?!\w)", part):
        return False
    words = _stems(before)
    return bool(words) and len(words & _stems(part)) >= 2 * len(words) / 3


def _format_problem(r: dict) -> str | None:
    if not r["question"].strip() or (not r["answer"].strip() and r["answer_format"] != "None"):
        return "empty question or answer"
    if r["answer_format"] not in ANSWER_FORMATS:
        return "unknown answer format"
    if answer_items(r["answer"], r["answer_format"]) is None:
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
    return None


def problems(r: dict, doc: dict, cache: FactCache | None = None) -> list[str]:
    """Every rule the record breaks (module docstring), in the order listed there; [] when it is good."""
    found = []
    fmt = _format_problem(r)
    if fmt:
        return [fmt]
    items = answer_items(r["answer"], r["answer_format"])
    pages = r["evidence_pages"]
    evidence_text = normalize(" ".join(doc["pages"][p]["text"] for p in pages))
    cache = cache or FactCache()
    if r["task"] in ("extract-single", "extract-multi"):
        first, last = r["segment"]
        segment_text = normalize(" ".join(doc["pages"][p]["text"] for p in range(first, last)))
        missing = [i for i in items if not _contains(evidence_text, i)]
        if missing:
            return ["answer not on its evidence pages" if all(_contains(segment_text, i) for i in missing) else "answer not in the OCR text"]
        repeated = cache.repeated(doc)
        usable = " \n ".join(usable_text(doc, p, repeated) for p in pages)
        if any(not _contains(usable, i) for i in items):
            bad_quality = any(page_problem(doc["pages"][p]) for p in pages)
            found.append("answer comes from low-quality text" if bad_quality else "answer comes from a header, footer, caption or repeated text")
    if r["task"] in ("ocr-full", "ocr-needle"):
        if normalize(re.sub(r"(?m)^Page \d+:$", "", r["answer"])) != evidence_text:
            found.append("transcript differs from the evidence pages' text")
    if r["task"] in READER_TASKS:
        q = r["question"]
        if names_a_page(q):
            found.append("question names a page")
        if BLANK.search(q):
            found.append("question is a fill-in-the-blank")
        if len(named_words(BLANK.sub(" ", q))) < 3:
            found.append("question names too little")
        named = named_facts(q, cache.facts(doc), pages)
        if r["task"] != "reasoning":
            text = cache.text(doc)
            names = tuple(re.findall(r"[\w.]+", q))
            if any(parse_number(i) is None and not occurs_once(i, text, names) for i in items):
                found.append("the answer text occurs more than once in the document")
            values = {normalize(i) for i in items}
            named = [f for f in named if normalize(f.value) in values]
        if any(f.problem for f in named):
            found.append("question does not pick out one fact")
        if r["task"] == "reasoning":
            if not OPERATION.search(q):
                found.append("reasoning question states no operation")
            distinct = {(f.key, normalize(f.value)): f for f in named}.values()  # a table printed twice names each fact twice
            kinds = {(f.kind, f.table_id, normalize(f.column)) if f.kind == "cell" else (f.kind, f.unit) for f in distinct}
            if len(kinds) > 1:
                found.append("reasoning combines values of different kinds")
            elif len(named) < 2:
                found.append("reasoning operands are not facts of the document")
    return found


class Validator:
    def __init__(self, cache: FactCache | None = None):
        self.rejected: Counter = Counter()
        self.cache = cache or FactCache()
        self._questions: set[tuple[str, str]] = set()

    def check(self, record: dict, doc: dict) -> str | None:
        """The reason to reject `record`, or None to keep it (then its question counts as seen)."""
        found = problems(record, doc, self.cache)
        if not found and (record["doc_id"], normalize(record["question"])) in self._questions:
            found = ["duplicate question"]
        if found:
            self.rejected[found[0]] += 1
            return found[0]
        self._questions.add((record["doc_id"], normalize(record["question"])))
        return None
