"""MMLongBench's rule-based doc-QA scoring and answer parsing (EdinburghNLP/MMLongBench, first release 26197d2).

Written from the published behaviour of that commit's ``utils.py`` (``parse_output``,
``eval_docqa_score``) and ``data.py`` (the doc-QA post-processing); docs/eval_format.md lists the
rules and how they were checked against the peer code. Labels are MMLongBench's: ``Integer``,
``Float``, ``String``, ``List``, ``None`` (megatron_vlm.eval.scoring maps ours onto them).

Parsing (``parse_answer``): the text after the FIRST ``Answer:`` (any case) up to the end of that
line, with one repeated leading ``Answer:`` dropped; without the marker, the first line. The
harness pre-fills the assistant turn with ``Answer:`` and puts it in front of the generated text
before parsing, so for its own prompt the answer is the first generated line.

Scoring (``score_answer(answer, parsed, answer_format)`` in [0, 1]):

- Integer: the answer must be a whole number (after ``number_text``); 1 if ANY whole number in the
  prediction equals it (``number_text`` of the prediction, then every ``-12``, ``3.5``, ``.5``).
- Float: 1 if ANY number in the prediction is within 1% (relative, ``math.isclose``) of the
  answer, the answer / 100 or the answer x 100.
- String and None: when the answer looks like a URL, a file, a page reference, a number code, a
  clock time, a date or an email (``needs_exact_match``), 1 if the raw answer is a substring of
  the raw prediction (case-sensitive); otherwise SQuAD token F1 (lower-case, punctuation and
  articles removed), no threshold. "Not answerable" is such a string: F1 against its two tokens.
- List: the answer is a JSON list (a list is taken as is). Its plain-string items (not numbers,
  not exact-match kinds) are joined by spaces into one item placed first; each item is then scored
  against the WHOLE prediction by its own type (int -> Integer, float -> Float, a string by
  ``string_kind``), and the score is the mean: recall-like, extra predicted items cost nothing.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter

FORMATS = ("Integer", "Float", "String", "List", "None")
PREFIX = "Answer:"

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_UNIT_SUFFIXES = (
    "kg",
    "meters",
    "acres",
    "minutes",
    "miles",
    "mile",
    "feet",
    "million",
    "thousand",
    "billion",
    "mm",
    "m",
)
_NUMBER = re.compile(r"-?\d+(?:\.\d*)?|-?\.\d+")
_EXACT_MATCH = tuple(
    re.compile(p)
    for p in (
        r"https://",
        r"\.(?:py|ipynb)$",
        r"^page",
        r"^\d+(?:-\d+|\s\d+)?$",
        r"a\.m\.|p\.m\.",
        r"^\d{4}[-/\s]\d{1,2}[-/\s]\d{1,2}$",
        r"^\d{1,2}[-/\s]\d{1,2}[-/\s]\d{2,4}$",
        r"^\d{4}[-/\s]\d{1,2}$",
        r"^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}$",
    )
)


# ---------------------------------------------------------------------------------------------
# parsing


def parse_answer(output: str, prefix: str = PREFIX) -> str:
    """The answer in ``output``: after the first ``prefix`` (any case) to the end of its line, else the first line."""
    output = str(output)
    found = re.search(re.escape(prefix) + r"(.*)", output, re.IGNORECASE)
    line = found.group(1) if found else re.match(r"(.*)", output).group(1)
    # chat models sometimes repeat the prefix: one more leading prefix is dropped
    return re.sub("^" + re.escape(prefix), "", line.strip(), flags=re.IGNORECASE).strip()


# ---------------------------------------------------------------------------------------------
# string helpers


def squad_normalize(text: str) -> str:
    """Lower-case, drop ASCII punctuation, replace the articles a/an/the by spaces, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, answer: str) -> float:
    """SQuAD token F1 of the normalised texts (0 when they share no token)."""
    pred, gold = squad_normalize(prediction).split(), squad_normalize(answer).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def number_text(value) -> str:
    """What numbers are read from: lower-cased, commas gone, a unit word at the end (kg, miles,
    million, m, ...) and surrounding quotes, ``$``, ``£`` and ``%`` taken off."""
    s = str(value).lower().strip().replace(",", "")
    for suffix in _UNIT_SUFFIXES:
        s = re.sub(re.escape(suffix) + "$", "", s).strip()
    s = re.sub("^['\"]|['\"]$", "", s).strip()
    for ch in ("$", "£", "%"):
        s = s.strip().strip(ch).strip()
    return s


def numbers_in(text: str) -> list[float]:
    """Every finite number written in ``text`` (``-12``, ``3.``, ``3.5``, ``.5``), commas ignored."""
    out = []
    for m in _NUMBER.findall(text.replace(",", "")):
        value = float(m)
        if math.isfinite(value):
            out.append(value)
    return out


def needs_exact_match(answer: str) -> bool:
    """Answers scored by a substring test instead of F1: URLs (https), .py/.ipynb files, "page..."
    references, digit codes (``123``, ``12-34``, ``12 34``), a.m./p.m. times, dates and emails."""
    return any(p.search(answer) for p in _EXACT_MATCH)


def string_kind(value: str) -> str:
    """How a list item written as text is scored: Integer, Float (a number with a fraction or a %), or String."""
    try:
        number = float(number_text(value))
    except ValueError:
        return "String"
    if not math.isfinite(number):
        return "String"
    return "Integer" if number == int(number) and "%" not in value else "Float"


# ---------------------------------------------------------------------------------------------
# scoring


def _answer_number(answer, answer_format: str) -> float:
    try:
        return float(number_text(answer))
    except ValueError:
        raise ValueError(f"answer {answer!r} is not a number ({answer_format})") from None


def _score_integer(answer, prediction: str) -> float:
    gold = _answer_number(answer, "Integer")
    if not math.isfinite(gold) or gold != int(gold):
        raise ValueError(f"answer {answer!r} is not a whole number (Integer)")
    whole = [int(x) for x in numbers_in(number_text(prediction)) if x == int(x)]
    return float(int(gold) in whole)


def _score_float(answer, prediction: str) -> float:
    gold = _answer_number(answer, "Float")
    targets = (gold / 100, gold, gold * 100)
    return float(any(math.isclose(t, x, rel_tol=0.01) for x in numbers_in(number_text(prediction)) for t in targets))


def _score_string(answer, prediction: str) -> float:
    if not isinstance(answer, str):
        raise ValueError(f"answer {answer!r} is not a string (String/None)")
    if needs_exact_match(answer):
        return float(answer in prediction)
    return token_f1(prediction, answer)


def _list_items(answer) -> list:
    items = answer
    if isinstance(answer, str):
        try:
            items = json.loads(answer)
        except json.JSONDecodeError:
            raise ValueError(f"List answer {answer[:60]!r} is not a JSON list") from None
    if not isinstance(items, list) or not items:
        raise ValueError(f"List answer {str(answer)[:60]!r} is not a non-empty list")
    return items


def _score_list(answer, prediction: str) -> float:
    items = _list_items(answer)
    plain = [isinstance(x, str) and string_kind(x) == "String" and not needs_exact_match(x) for x in items]
    merged = " ".join(x for x, p in zip(items, plain) if p).strip()
    if merged:
        items = [merged] + [x for x, p in zip(items, plain) if not p]
    scores = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float, str)):
            raise ValueError(f"List answer item {item!r} is not a number or a string")
        kind = "Integer" if isinstance(item, int) else "Float" if isinstance(item, float) else string_kind(item)
        scores.append(score_answer(item, prediction, kind))
    return sum(scores) / len(scores)


def score_answer(answer, prediction: str, answer_format: str) -> float:
    """Score a parsed prediction against ``answer`` by MMLongBench's rule for ``answer_format`` (module docstring).

    ValueError when the answer cannot be scored under its format (MMLongBench's code stops there too).
    """
    prediction = str(prediction)
    if answer_format == "Integer":
        return _score_integer(answer, prediction)
    if answer_format == "Float":
        return _score_float(answer, prediction)
    if answer_format in ("String", "None"):
        return _score_string(answer, prediction)
    if answer_format == "List":
        return _score_list(answer, prediction)
    raise ValueError(f"answer_format must be one of {FORMATS}, got {answer_format!r}")


def score_output(answer, output: str, answer_format: str) -> tuple[str, float]:
    """Parse free-form ``output`` and score it: (parsed answer, score)."""
    parsed = parse_answer(output)
    return parsed, score_answer(answer, parsed, answer_format)
