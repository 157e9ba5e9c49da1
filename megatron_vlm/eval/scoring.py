"""Scoring predictions: which rules apply to a file, answer-format labels, and the summary numbers.

Two rule sets (docs/eval_format.md, "Scoring"):

- ``mmlongbench`` (megatron_vlm/eval/rules_mmlongbench.py): EdinburghNLP/MMLongBench's rule-based
  doc-QA scorer and answer parsing at its first release (26197d2), the numbers of the paper's tables.
- ``legacy`` (megatron_vlm/eval/rules_legacy.py): this project's earlier rules, kept by name; the only
  ones that take ``string_metric`` (anls | f1).

A file's default: ``mmlongbench`` when its lines say ``"benchmark": "mmlongbench"`` (the importers
write that), ``legacy`` when they name no benchmark; a file that mixes them needs ``--rules``.
Both label sets are accepted under both rules: ours (Int, Float, Str, List, None) and
MMLongBench's (Integer, Float, String, List, None).
"""

from __future__ import annotations

from collections.abc import Iterable

from megatron_vlm.eval import rules_legacy, rules_mmlongbench

RULES = ("mmlongbench", "legacy")
STRING_METRICS = ("anls", "f1")
ANSWER_FORMATS = ("Int", "Integer", "Float", "Str", "String", "List", "None")
_TO_MMLONGBENCH = {"Int": "Integer", "Str": "String"}
_TO_LEGACY = {"Integer": "Int", "String": "Str"}
BENCHMARK_RULES = {"mmlongbench": "mmlongbench"}


def check_format(answer_format) -> None:
    """ValueError unless ``answer_format`` is one of ``ANSWER_FORMATS``."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {', '.join(ANSWER_FORMATS)}, got {answer_format!r}")


def format_for(rules: str, answer_format: str) -> str:
    """The label ``rules`` uses for ``answer_format`` (either spelling accepted)."""
    check_format(answer_format)
    table = _TO_MMLONGBENCH if rules == "mmlongbench" else _TO_LEGACY
    return table.get(answer_format, answer_format)


def default_rules(records: Iterable[dict]) -> str:
    """The rules for a file whose lines carry (or not) a ``benchmark`` field (module docstring)."""
    names = {r.get("benchmark") for r in records}
    unknown = sorted(str(n) for n in names - {None} if n not in BENCHMARK_RULES)
    if unknown:
        raise ValueError(f"unknown benchmark {unknown[0]!r} in the predictions; pass --rules ({' | '.join(RULES)})")
    rules = {BENCHMARK_RULES.get(n, "legacy") for n in names}
    if len(rules) > 1:
        raise ValueError("the predictions mix benchmarks scored by different rules; pass --rules")
    return rules.pop() if rules else "legacy"


def score_record(record: dict, rules: str = "mmlongbench", string_metric: str | None = None) -> tuple[object, float]:
    """(extracted answer, score) of one record with ``answer``, ``answer_format``, ``prediction``."""
    if rules == "mmlongbench":
        if string_metric is not None:
            raise ValueError("--string-metric applies to --rules legacy only (mmlongbench scores strings by token F1)")
        fmt = format_for(rules, record["answer_format"])
        return rules_mmlongbench.score_output(record["answer"], record["prediction"], fmt)
    if rules == "legacy":
        fmt = format_for(rules, record["answer_format"])
        return rules_legacy.score_output(record["answer"], record["prediction"], fmt, string_metric or "anls")
    raise ValueError(f"rules must be one of {', '.join(RULES)}, got {rules!r}")


def score_records(records: Iterable[dict], rules: str | None = None, string_metric: str | None = None,
                  source=None) -> list[dict]:
    """Each record with ``extracted``, ``score`` and ``rules`` added (``rules`` None: ``default_rules``).

    ValueError naming the line (1-based) of the first record that lacks a field or cannot be scored,
    as ``SOURCE:LINE: why`` when the records came from the file ``source``.
    """
    records = list(records)
    rules = rules or default_rules(records)
    out = []
    for n, record in enumerate(records, 1):
        where = f"{source}:{n}" if source else f"line {n}"
        missing = [k for k in ("answer", "answer_format", "prediction") if k not in record]
        if missing:
            raise ValueError(f"{where}: lacks {', '.join(missing)}")
        try:
            extracted, score = score_record(record, rules, string_metric)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        out.append({**record, "extracted": extracted, "score": score, "rules": rules})
    return out


def summarize(records: Iterable[dict]) -> dict:
    """Accuracy (mean score) and MMLongBench-Doc's F1 over records with ``answer_format``, ``extracted``, ``score``.

    F1: recall = summed score over answerable questions / their count; precision = the same sum /
    the number of predictions that are not "Not answerable"; F1 their harmonic mean.
    """
    records = list(records)
    n = len(records)
    if n == 0:
        return {"n": 0, "accuracy": 0.0, "f1": 0.0}
    total = sum(r["score"] for r in records)
    answerable = [r for r in records if r["answer_format"] != "None"]
    answered = [
        r
        for r in records
        if not (isinstance(r.get("extracted"), str) and rules_legacy.is_not_answerable(r["extracted"]))
    ]
    hit = sum(r["score"] for r in answerable)
    recall = hit / len(answerable) if answerable else 0.0
    precision = hit / len(answered) if answered else 0.0
    f1 = 2 * recall * precision / (recall + precision) if recall + precision > 0 else 0.0
    return {"n": n, "accuracy": total / n, "f1": f1}
