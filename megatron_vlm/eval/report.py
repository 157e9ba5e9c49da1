"""Reports from scored predictions: JSON + markdown per context length and task, and base-vs-trained deltas.

A report (docs/eval_format.md) holds the accuracy and F1 (scoring.summarize) overall, per context
length (``target_tokens``), per task and per (length, task). Lines that name a ``dataset`` (the
importers write mmlongdoc | longdocurl | slidevqa) also give the paper's tables (``paper_tables``):
accuracy x 100 per dataset and length, the doc-VQA average over the datasets per length (as
MMLongBench's figure scripts average its three doc-QA datasets), the 64K/128K mean of Table 1,
and the 256K and 512K averages of Table 5. ``compare`` puts two reports side by side with
trained - base.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from megatron_vlm.eval.scoring import summarize

ALL = "all"


def _length_label(n) -> str:
    n = int(n)
    if n == 0:
        return "n/a"
    return f"{n // 1024}K" if n % 1024 == 0 and n >= 1024 else str(n)


def evidence_kind(record: dict) -> str:
    """MMLongBench's split: unanswerable (answer_format None), single-page, cross-page, or unknown."""
    if record.get("answer_format") == "None":
        return "unanswerable"
    n = record.get("evidence_count")
    if n is None:
        return "unknown"
    return "single-page" if n <= 1 else "cross-page"


def _length_key(record: dict, n: int) -> str:
    value = record.get("target_tokens") or 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"line {n}: target_tokens {value!r} is not a whole number of tokens")
    return str(value)


def build_report(scored: Iterable[dict], model: str | None = None) -> dict:
    """Summaries of scored records (each with ``score``, ``answer_format``, ``extracted``, ``task``, ``target_tokens``).

    ValueError naming the line when a ``target_tokens`` is not a whole number.
    """
    scored = list(scored)
    by_length, by_task, by_both = defaultdict(list), defaultdict(list), defaultdict(lambda: defaultdict(list))
    by_evidence = defaultdict(list)
    for n, r in enumerate(scored, 1):
        length, task = _length_key(r, n), r.get("task") or "unknown"
        by_length[length].append(r)
        by_task[task].append(r)
        by_both[length][task].append(r)
        by_evidence[evidence_kind(r)].append(r)
    return {
        "model": model,
        "overall": summarize(scored),
        "by_length": {k: summarize(v) for k, v in sorted(by_length.items(), key=lambda kv: int(kv[0]))},
        "by_task": {k: summarize(v) for k, v in sorted(by_task.items())},
        "by_evidence": {k: summarize(v) for k, v in sorted(by_evidence.items())},
        "by_length_task": {
            k: {t: summarize(v) for t, v in sorted(tasks.items())}
            for k, tasks in sorted(by_both.items(), key=lambda kv: int(kv[0]))
        },
        **({"paper_tables": paper_tables(scored)} if any(r.get("dataset") for r in scored) else {}),
    }


PAPER_AVERAGES = {"64K/128K": (65536, 131072), "256K": (262144,), "512K": (524288,)}


def paper_tables(scored: Sequence[dict]) -> dict:
    """The paper's numbers (x 100): per dataset and length, their average per length, and the
    averages the paper reports (64K/128K mean of the per-length averages; 256K; 512K).

    A per-length average needs every dataset of the report at that length; an average the paper
    reports needs all its lengths; missing ones are None.
    """
    cells = defaultdict(lambda: defaultdict(list))
    for n, r in enumerate(scored, 1):
        cells[r.get("dataset") or "unknown"][_length_key(r, n)].append(r["score"])
    datasets = sorted(cells)
    lengths = sorted({k for d in cells.values() for k in d}, key=int)
    table = {d: {k: 100 * sum(v) / len(v) for k, v in sorted(cells[d].items(), key=lambda kv: int(kv[0]))} for d in datasets}
    counts = {d: {k: len(v) for k, v in cells[d].items()} for d in datasets}
    average = {}
    for k in lengths:
        values = [table[d].get(k) for d in datasets]
        average[k] = None if None in values else sum(values) / len(values)
    reported = {}
    for name, wanted in PAPER_AVERAGES.items():
        values = [average.get(str(k)) for k in wanted]
        reported[name] = None if None in values else sum(values) / len(values)
    return {"datasets": table, "n": counts, "average": average, "reported": reported}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def report_markdown(report: dict) -> str:
    """One table: tasks as rows, context lengths as columns (accuracy %), with an all-tasks row and column."""
    lengths = list(report["by_length"])
    tasks = list(report["by_task"])
    name = report.get("model") or "model"
    lines = [
        f"## {name}",
        "",
        f"Overall accuracy {_pct(report['overall']['accuracy'])}, F1 "
        f"{_pct(report['overall']['f1'])} over {report['overall']['n']} questions.",
        "",
    ]
    lines.append("| task | " + " | ".join(_length_label(n) for n in lengths) + " | all |")
    lines.append("|---|" + "---:|" * (len(lengths) + 1))
    for task in tasks:
        cells = [report["by_length_task"][n].get(task) for n in lengths]
        row = [_pct(c["accuracy"]) if c else "-" for c in cells] + [_pct(report["by_task"][task]["accuracy"])]
        lines.append(f"| {task} | " + " | ".join(row) + " |")
    row = [_pct(report["by_length"][n]["accuracy"]) for n in lengths] + [_pct(report["overall"]["accuracy"])]
    lines.append("| **all** | " + " | ".join(row) + " |")
    lines.append(
        "| n | " + " | ".join(str(report["by_length"][n]["n"]) for n in lengths) + f" | {report['overall']['n']} |"
    )
    evidence = report.get("by_evidence") or {}
    if evidence:
        lines += [
            "",
            "By evidence: " + ", ".join(f"{k} {_pct(v['accuracy'])} (n={v['n']})" for k, v in evidence.items()) + ".",
        ]
    if report.get("paper_tables"):
        lines += ["", *paper_markdown({name: report["paper_tables"]})]
    return "\n".join(lines) + "\n"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def paper_markdown(tables_by_model: dict[str, dict]) -> list[str]:
    """Lines of the paper-style table (accuracy x 100): one row per (dataset, model) and per
    (doc-VQA average, model), one column per context length, then the averages the paper reports."""
    first = next(iter(tables_by_model.values()))
    datasets = sorted({d for t in tables_by_model.values() for d in t["datasets"]})
    lengths = sorted({k for t in tables_by_model.values() for k in t["average"]}, key=int)
    names = list(first["reported"])
    several = len(tables_by_model) > 1
    head = "| dataset | " + ("model | " if several else "") + " | ".join(_length_label(k) for k in lengths)
    lines = [head + " | " + " | ".join(names) + " |", "|---|" + ("---|" if several else "") + "---:|" * (len(lengths) + len(names))]
    for d in [*datasets, None]:
        for model, t in tables_by_model.items():
            row = t["average"] if d is None else t["datasets"].get(d, {})
            cells = [_num(row.get(k)) for k in lengths] + [_num(t["reported"][x]) if d is None else "" for x in names]
            label = "**doc-VQA avg**" if d is None else d
            lines.append(f"| {label} | " + (f"{model} | " if several else "") + " | ".join(cells) + " |")
    return lines


def _delta(base: dict | None, trained: dict | None) -> float | None:
    if not base or not trained:
        return None
    return trained["accuracy"] - base["accuracy"]


def compare_reports(base: dict, trained: dict) -> dict:
    """Both reports and trained - base accuracy per length, task and (length, task)."""
    lengths = sorted(set(base["by_length"]) | set(trained["by_length"]), key=int)
    tasks = sorted(set(base["by_task"]) | set(trained["by_task"]))
    paper = {}
    if base.get("paper_tables") and trained.get("paper_tables"):
        b, t = base["paper_tables"], trained["paper_tables"]
        paper = {
            part: {k: None if b[part].get(k) is None or t[part].get(k) is None else t[part][k] - b[part][k]
                   for k in sorted(set(b[part]) | set(t[part]))}
            for part in ("average", "reported")
        }
    return {
        "base": base,
        "trained": trained,
        "delta": {
            "overall": _delta(base["overall"], trained["overall"]),
            "by_length": {n: _delta(base["by_length"].get(n), trained["by_length"].get(n)) for n in lengths},
            "by_task": {t: _delta(base["by_task"].get(t), trained["by_task"].get(t)) for t in tasks},
            "by_length_task": {
                n: {
                    t: _delta(base["by_length_task"].get(n, {}).get(t), trained["by_length_task"].get(n, {}).get(t))
                    for t in tasks
                }
                for n in lengths
            },
            **({"paper_tables": paper} if paper else {}),
        },
    }


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}"


def compare_markdown(comparison: dict) -> str:
    """Side by side: per context length and per task, base | trained | delta (accuracy %)."""
    base, trained, delta = comparison["base"], comparison["trained"], comparison["delta"]
    b_name, t_name = base.get("model") or "base", trained.get("model") or "trained"

    def acc(report, *keys):
        node = report
        for k in keys:
            node = (node or {}).get(k)
        return node["accuracy"] if node else None

    lengths = list(delta["by_length"])
    tasks = list(delta["by_task"])
    lines = [f"## {t_name} vs {b_name}", "", "| context | " + f"{b_name} | {t_name} | delta |", "|---|---:|---:|---:|"]
    for n in lengths:
        lines.append(
            f"| {_length_label(n)} | {_pct(acc(base, 'by_length', n))} | {_pct(acc(trained, 'by_length', n))}"
            f" | {_signed(delta['by_length'][n])} |"
        )
    lines.append(
        f"| **all** | {_pct(base['overall']['accuracy'])} | {_pct(trained['overall']['accuracy'])} | "
        f"{_signed(delta['overall'])} |"
    )
    lines += ["", "| task | " + f"{b_name} | {t_name} | delta |", "|---|---:|---:|---:|"]
    for t in tasks:
        lines.append(
            f"| {t} | {_pct(acc(base, 'by_task', t))} | {_pct(acc(trained, 'by_task', t))} | "
            f"{_signed(delta['by_task'][t])} |"
        )
    lines += [
        "",
        f"Delta ({t_name} - {b_name}) per task and context length:",
        "",
        "| task | " + " | ".join(_length_label(n) for n in lengths) + " |",
        "|---|" + "---:|" * len(lengths),
    ]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(_signed(delta["by_length_task"][n][t]) for n in lengths) + " |")
    if base.get("paper_tables") and trained.get("paper_tables"):
        t_key = t_name if t_name != b_name else f"{t_name} (trained)"
        tables = {b_name: base["paper_tables"], t_key: trained["paper_tables"]}
        lines += ["", "Paper tables (accuracy x 100):", "", *paper_markdown(tables)]
    return "\n".join(lines) + "\n"
