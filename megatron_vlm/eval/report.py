"""Reports from scored predictions: JSON + markdown per context length and task, and base-vs-trained deltas.

A report (docs/eval_format.md) holds MMLongBench's accuracy and F1 (scoring.summarize) overall,
per context length (``target_tokens``), per task and per (length, task). ``compare`` puts two
reports side by side with trained - base, the way the paper's tables read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

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


def build_report(scored: Iterable[dict], model: str | None = None) -> dict:
    """Summaries of scored records (each with ``score``, ``answer_format``, ``extracted``, ``task``, ``target_tokens``)."""
    scored = list(scored)
    by_length, by_task, by_both = defaultdict(list), defaultdict(list), defaultdict(lambda: defaultdict(list))
    by_evidence = defaultdict(list)
    for r in scored:
        length, task = str(int(r.get("target_tokens") or 0)), r.get("task") or "unknown"
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
    }


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
    return "\n".join(lines) + "\n"


def _delta(base: dict | None, trained: dict | None) -> float | None:
    if not base or not trained:
        return None
    return trained["accuracy"] - base["accuracy"]


def compare_reports(base: dict, trained: dict) -> dict:
    """Both reports and trained - base accuracy per length, task and (length, task)."""
    lengths = sorted(set(base["by_length"]) | set(trained["by_length"]), key=int)
    tasks = sorted(set(base["by_task"]) | set(trained["by_task"]))
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
    return "\n".join(lines) + "\n"
