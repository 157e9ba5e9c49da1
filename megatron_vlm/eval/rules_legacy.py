"""The ``legacy`` rules: this project's first document-VQA scorer (``--rules legacy``).

A variant of MMLongBench-Doc's (mayubo2333) rules with a fixed extraction step instead of its
GPT-4o one; it is NOT MMLongBench's scorer (that is rules_mmlongbench) and has not been checked
against MMLongBench-Doc's code, hence the plain name. Labels: Int, Float, Str, List, None.

Two steps, both pure functions:

1. ``extract_answer(output, answer_format)`` turns free-form model output into a short answer.
   The rule, in order:
   a. If the output has a line starting ``Extracted answer:`` or ``Answer:`` (case-insensitive,
      markdown bold allowed), take the text after the LAST such marker up to the end of that line;
      otherwise take the whole output if it is one line, else its last non-empty line.
   b. Strip markdown emphasis/backticks, a lead-in "(the) (final) answer is", surrounding quotes
      and a trailing period (``drop_trailing_period``; string answers lose theirs too before
      they are compared, so a verbatim "10:30 a.m." matches).
   c. If it says the question cannot be answered (``NOT_ANSWERABLE_PATTERNS``) -> ``Not answerable``.
   d. Int/Float: the first number in the span (thousands commas dropped, a trailing % kept off).
      List: the span parsed as a JSON/Python list if it is one, else split on ``;`` / ``,`` / `` and ``.
      Str/None: the span itself.

2. ``score_answer(answer, prediction, answer_format)`` gives a score in [0, 1]:
   - strings are first cleaned (``clean``): lower-cased, parenthesised parts removed, surrounding
     quotes, a leading ``$`` and a trailing ``%`` removed, thousands commas dropped from numbers;
     strings compared as strings also lose a trailing period on both sides.
   - Int: 1 if the prediction parses as a number equal to the integer answer (``"3.0"`` matches 3,
     ``"3.7"`` does not), else 0.
   - Float: 1 if the prediction is within 1% (relative) of the answer, of answer x 100 or of
     answer / 100 (so 0.25 matches 25 and 25% matches 0.25), else 0.
   - Str: exact match (after ``clean``) when the answer is a URL, an email address, a date
     (YYYY-MM-DD, YYYY-MM), a clock time (a.m./p.m.), a number-like code (phone numbers, digit
     groups), a file name (.py/.ipynb) or a page reference ("page ..."); otherwise a soft string
     score: ANLS (MMLongBench's metric: 1 - Levenshtein distance / longer length, set to 0 when
     <= 0.5) by default, or token F1 (``string_metric="f1"``: F1 of the bags of lower-cased
     alphanumeric tokens, set to 0 when < 0.5).
   - None ("not answerable" questions): the answer is ``Not answerable``; 1 if the extracted
     prediction is ``Not answerable``, else 0. An answerable question predicted as not
     answerable scores 0 under its own format's rule.
   - List: both sides parsed as lists; 0 if the lengths differ; else both sorted after ``clean``
     and compared item by item (numbers numerically equal, exact-match kinds equal, other strings
     by the soft score); the list score is the minimum item score.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections import Counter

FORMATS = ("Int", "Float", "Str", "List", "None")
NOT_ANSWERABLE = "Not answerable"
NOT_ANSWERABLE_PATTERNS = (
    r"\bnot answerable\b",
    r"\bunanswerable\b",
    r"\bcannot be answered\b",
    r"\bcan ?not be determined\b",
    r"\bnot (?:be )?(?:mentioned|provided|specified|stated) in the (?:document|context|pages?)\b",
)
ANLS_THRESHOLD = 0.5
F1_THRESHOLD = 0.5
FLOAT_REL_TOL = 0.01

_MARKER = re.compile(r"^\s*\**\s*(?:extracted answer|final answer|answer)\s*\**\s*:\s*\**\s*(.*)$", re.I | re.M)
_LEAD_IN = re.compile(r"^(?:so,?\s+)?(?:the\s+)?(?:final\s+)?answer\s+is\s*:?\s*", re.I)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


# ---------------------------------------------------------------------------------------------
# extraction


def is_not_answerable(text: str) -> bool:
    t = str(text).lower()
    return any(re.search(p, t) for p in NOT_ANSWERABLE_PATTERNS)


def _answer_span(output: str) -> str:
    matches = list(_MARKER.finditer(output))
    if matches:
        span = matches[-1].group(1)
    else:
        lines = [ln for ln in output.strip().splitlines() if ln.strip()]
        span = lines[-1] if lines else ""
    span = re.sub(r"[*`]+", "", span).strip()
    span = _LEAD_IN.sub("", span).strip()
    return drop_trailing_period(span.strip("\"'").strip())


def drop_trailing_period(text: str) -> str:
    """``text`` without a final sentence period (a number's decimal point is kept)."""
    if text.endswith(".") and not _NUMBER.fullmatch(text):
        return text[:-1].rstrip()
    return text


def _first_number(text: str) -> str | None:
    m = _NUMBER.search(text)
    return m.group(0).replace(",", "") if m else None


def _parse_list(value) -> list | None:
    """A list from a list, or from a string holding a JSON/Python list literal; else None."""
    if isinstance(value, list):
        return value
    s = str(value).strip()
    if s.startswith("[") and s.endswith("]"):
        for parse in (json.loads, ast.literal_eval):
            try:
                parsed = parse(s)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(parsed, list):
                return parsed
    return None


def extract_answer(output: str, answer_format: str):
    """The short answer in free-form ``output`` by the rule in the module docstring.

    Returns a str for Int/Float/Str/None (possibly empty), a list for List.
    """
    _check_format(answer_format)
    span = _answer_span(str(output))
    if is_not_answerable(span) or (not span and is_not_answerable(output)):
        return NOT_ANSWERABLE
    if answer_format in ("Int", "Float"):
        number = _first_number(span)
        return number if number is not None else span
    if answer_format == "List":
        parsed = _parse_list(span)
        if parsed is not None:
            return parsed
        parts = re.split(r"\s*;\s*|\s*,\s*|\s+and\s+", span)
        return [p.strip().strip("\"'") for p in parts if p.strip()]
    return span


# ---------------------------------------------------------------------------------------------
# scoring


def _check_format(answer_format: str) -> None:
    if answer_format not in FORMATS:
        raise ValueError(f"answer_format must be one of {FORMATS}, got {answer_format!r}")


def clean(s) -> str:
    """Normalise a string answer before comparison (see module docstring)."""
    s = str(s).lower().strip()
    s = re.sub(r"\s*\([^)]*\)", "", s).strip()
    s = s.strip("\"'").strip()
    s = s.lstrip("$").strip().rstrip("%").strip()
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)
    return s


def to_number(s) -> float | None:
    try:
        value = float(clean(s))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def is_exact_match_kind(s: str) -> bool:
    """Answers that only an exact match can score: URLs, emails, dates, times, codes, files, pages."""
    s = clean(s)
    return bool(
        "http://" in s
        or "https://" in s
        or "www." in s
        or s.endswith((".py", ".ipynb"))
        or s.startswith("page")
        or re.fullmatch(r"\d+(?:-\d+|\s\d+)*", s)
        or "a.m." in s
        or "p.m." in s
        or re.fullmatch(r"\d{4}[-/\s]\d{1,2}(?:[-/\s]\d{1,2})?", s)
        or re.fullmatch(r"\d{1,2}/\d{1,2}/\d{2,4}", s)
        or re.fullmatch(r"[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}", s)
    )


def levenshtein(a: str, b: str) -> int:
    if len(a) > len(b):
        a, b = b, a
    previous = list(range(len(a) + 1))
    for j, cb in enumerate(b, 1):
        current = [j]
        for i, ca in enumerate(a, 1):
            current.append(min(previous[i] + 1, current[i - 1] + 1, previous[i - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(answer: str, prediction: str, threshold: float = ANLS_THRESHOLD) -> float:
    """1 - edit distance / longer length; 0 when that is <= threshold (MMLongBench's rule)."""
    length = max(len(answer), len(prediction))
    value = 1.0 if length == 0 else 1.0 - levenshtein(answer, prediction) / length
    return value if value > threshold else 0.0


def token_f1(answer: str, prediction: str, threshold: float = F1_THRESHOLD) -> float:
    """F1 of the bags of lower-cased alphanumeric tokens; 0 when below threshold."""
    a = re.findall(r"[a-z0-9]+", answer.lower())
    p = re.findall(r"[a-z0-9]+", prediction.lower())
    if not a or not p:
        return float(a == p)
    common = sum((Counter(a) & Counter(p)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(a)
    f1 = 2 * precision * recall / (precision + recall)
    return f1 if f1 >= threshold else 0.0


def _soft(answer: str, prediction: str, string_metric: str) -> float:
    if string_metric == "anls":
        return anls(answer, prediction)
    if string_metric == "f1":
        return token_f1(answer, prediction)
    raise ValueError(f"string_metric must be 'anls' or 'f1', got {string_metric!r}")


def _score_str(answer, prediction, string_metric: str) -> float:
    a, p = clean(answer), clean(prediction)
    exact = is_exact_match_kind(a)
    a, p = drop_trailing_period(a), drop_trailing_period(p)
    return float(a == p) if exact else _soft(a, p, string_metric)


def _score_float(answer, prediction) -> float:
    a, p = to_number(answer), to_number(prediction)
    if a is None or p is None:
        return 0.0
    return float(any(math.isclose(ref, p, rel_tol=FLOAT_REL_TOL) for ref in (a, a * 100, a / 100)))


def _score_int(answer, prediction) -> float:
    a, p = to_number(answer), to_number(prediction)
    if a is None or p is None:
        return 0.0
    return float(p == a)


def _score_list(answer, prediction, string_metric: str) -> float:
    gt = _parse_list(answer)
    gt = gt if gt is not None else [answer]
    pred = _parse_list(prediction)
    pred = pred if pred is not None else [prediction]
    if len(gt) != len(pred):
        return 0.0
    if not gt:
        return 1.0
    gt = sorted(clean(x) for x in gt)
    pred = sorted(clean(x) for x in pred)
    scores = []
    for a, p in zip(gt, pred):
        na, np_ = to_number(a), to_number(p)
        if na is not None:
            scores.append(float(np_ is not None and na == np_))
        else:
            scores.append(_score_str(a, p, string_metric))
    return min(scores)


def score_answer(answer, prediction, answer_format: str, string_metric: str = "anls") -> float:
    """Score an already-extracted ``prediction`` against ``answer`` (rules in the module docstring)."""
    _check_format(answer_format)
    if answer_format == "None" or (isinstance(answer, str) and answer.strip().lower() == NOT_ANSWERABLE.lower()):
        return float(isinstance(prediction, str) and is_not_answerable(prediction))
    if isinstance(prediction, str) and is_not_answerable(prediction):
        return 0.0
    if answer_format == "Int":
        return _score_int(answer, prediction)
    if answer_format == "Float":
        return _score_float(answer, prediction)
    if answer_format == "List":
        return _score_list(answer, prediction, string_metric)
    return _score_str(answer, prediction, string_metric)


def score_output(answer, output: str, answer_format: str, string_metric: str = "anls") -> tuple[object, float]:
    """Extract the answer from free-form ``output`` and score it: (extracted, score)."""
    extracted = extract_answer(output, answer_format)
    return extracted, score_answer(answer, extracted, answer_format, string_metric)
