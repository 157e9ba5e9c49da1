"""`preprocess_data.py stats`: a report on built shards, measured from the shards themselves.

    python tools/preprocess_data.py stats SHARD_DIR [--output REPORT_DIR] [--tolerance 0.01] [--check]

Reads every instance's json from the tars (not the build's own bookkeeping) and writes, to
SHARD_DIR/report/ by default: lengths.png (per task, the achieved token-length histogram with the
target distribution drawn over it, and where the evidence sits), report.md (achieved vs target
mixture and length distribution, where the evidence sits, totals, drops and exclusions by reason)
and report.json (the same numbers).

A share target is met when the achieved count is within max(1 sample, tolerance x samples) of
target x samples: with 9 samples one sample is 11 points, and the build's greedy sampler is only
ever one sample off. For long-biased the long share must be at least the target. Where the
evidence sits: its depth in the context (the first evidence page's position among the instance's
pages, in tenths) and its page index in the whole document.

Exit status: 0 when the report is written (2 on bad input: no index.json, a shard that is missing,
truncated or not a tar, an instance json that cannot be read), and with --check 1 when a target
is not met. Nothing is written before every shard has been read.
"""

from __future__ import annotations

import json
import sys
import tarfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from megatron_vlm.data.shard_index import read_index
from megatron_vlm.utils import atomic, options

DOC_PAGE_BINS = [(0, 10), (10, 50), (50, 100), (100, 200), (200, 10**9)]


@dataclass
class StatsOptions:
    """The stats stage's options; the CLI's flags are generated from these fields."""

    shards: str = field(metadata={"positional": True})
    """directory of training shards (with index.json)"""
    output: str | None = None
    """report directory (default SHARD_DIR/report)"""
    tolerance: float = 0.01
    """allowed |achieved - target| share, at least one sample's worth"""
    check: bool = False
    """exit 1 when a target is not met (default: report it and exit 0)"""


def add_arguments(parser) -> None:
    options.add_arguments(parser, StatsOptions)


def main(args) -> int:
    try:
        args = options.from_args(StatsOptions, args)
        shard_dir = Path(args.shards)
        report = compute(shard_dir, args.tolerance)
    except (FileNotFoundError, ValueError) as e:
        print(f"stats: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.output) if args.output else shard_dir / "report"
    write(report, out)
    print(render_markdown(report))
    print(f"stats: report written to {out} (report.md, report.json, lengths.png)")
    return 1 if args.check and not report["targets_met"] else 0


def read_instances(shard_dir: Path, index: dict) -> list[dict]:
    """(task, num_tokens, images, evidence depth, evidence page) of every instance; ValueError
    naming the shard when one cannot be read."""
    rows = []
    for shard in index["shards"]:
        path = shard_dir / shard["name"]
        try:
            with tarfile.open(path, "r:") as tf:
                for m in tf:
                    if m.isfile() and m.name.endswith(".json") and m.name.count(".") == 1:
                        rows.append(_row(json.loads(tf.extractfile(m).read())))
        except FileNotFoundError:
            raise ValueError(f"{path}: missing (index.json lists it)") from None
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ValueError(f"{path}: not a readable tar ({type(e).__name__}: {e})") from None
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: an instance json is unreadable ({type(e).__name__}: {e})") from None
    return rows


def _row(r: dict) -> dict:
    row = {"task": r["task"], "num_tokens": int(r["num_tokens"]), "images": len(r["pages"])}
    evidence = r.get("evidence_pages") or []
    if evidence and r["pages"] and evidence[0] in r["pages"]:
        row["depth"] = r["pages"].index(evidence[0]) / len(r["pages"])
        row["evidence_page"] = evidence[0]
    return row


def _met(count: int, n: int, target: float, tolerance: float) -> bool:
    return abs(count - target * n) <= max(1.0, tolerance * n) + 1e-9


def compute(shard_dir: Path, tolerance: float = 0.01) -> dict:
    index = read_index(shard_dir)
    targets = index.get("targets")
    if not (isinstance(targets, dict) and {"mixture", "length_bins", "length_distribution"} <= set(targets)):
        raise ValueError(f"{shard_dir / 'index.json'}: not a build index (no targets)")
    rows = read_instances(shard_dir, index)
    if not rows:
        raise ValueError(f"{shard_dir} holds no samples")
    n = len(rows)
    task_counts = Counter(r["task"] for r in rows)
    mixture_rows = []
    for task in sorted(set(targets["mixture"]) | set(task_counts)):
        want, got = targets["mixture"].get(task, 0.0), task_counts[task]
        mixture_rows.append({"task": task, "target": want, "achieved": got / n, "count": got, "met": _met(got, n, want, tolerance)})
    docs = [r for r in rows if r["task"] != "short"]
    length_rows = []
    if docs:
        for lo, hi, want in targets["length_bins"]:
            got = sum(lo <= r["num_tokens"] < hi for r in docs)
            length_rows.append({"range": f"{lo}-{hi}", "target": want, "achieved": got / len(docs), "count": got,
                                "met": _met(got, len(docs), want, tolerance)})
        at_least = targets.get("long_share_at_least")
        if at_least is not None:
            got = sum(r["num_tokens"] >= targets["long_threshold"] for r in docs) / len(docs)
            length_rows = [{"range": f">={targets['long_threshold']}", "target": at_least, "achieved": got, "met": got >= at_least, "at_least": True}]
    per_task = defaultdict(list)
    for r in rows:
        per_task[r["task"]].append(r["num_tokens"])
    placed = [r for r in docs if "depth" in r]
    return {
        "shards": str(shard_dir),
        "length_distribution": targets["length_distribution"],
        "totals": {"samples": n, "tokens": sum(r["num_tokens"] for r in rows), "images": sum(r["images"] for r in rows), "shards": len(index["shards"])},
        "index_totals": index.get("totals", {}),
        "mixture": mixture_rows,
        "length": length_rows,
        "length_bins": targets["length_bins"],
        "evidence": {
            "samples": len(placed),
            "depth_tenths": [sum(min(int(r["depth"] * 10), 9) == i for r in placed) for i in range(10)],
            "doc_page_bins": [{"pages": f"{lo}-{hi - 1}" if hi < 10**9 else f"{lo}+", "count": sum(lo <= r["evidence_page"] < hi for r in placed)}
                              for lo, hi in DOC_PAGE_BINS],
            "depths": sorted(r["depth"] for r in placed),
        },
        "dropped": index.get("dropped", {}),
        "excluded": index.get("excluded", {}),
        "drop_examples": index.get("drop_examples", {}),
        "lengths_by_task": {t: sorted(v) for t, v in per_task.items()},
        "max_seq_length": index["max_seq_length"],
        "targets_met": all(r["met"] for r in mixture_rows + length_rows),
    }


def render_markdown(report: dict) -> str:
    t = report["totals"]
    lines = [
        f"# Shard report: {report['shards']}",
        "",
        f"samples {t['samples']:,}  tokens {t['tokens']:,}  images {t['images']:,}  shards {t['shards']}",
        "",
        "| task | target | achieved | samples | met |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['task']} | {r['target']:.2%} | {r['achieved']:.2%} | {r['count']} | {'yes' if r['met'] else 'NO'} |" for r in report["mixture"]]
    lines += ["", f"length distribution: {report['length_distribution']}", "", "| tokens | target | achieved | met |", "|---|---|---|---|"]
    lines += [
        f"| {r['range']} | {'>= ' if r.get('at_least') else ''}{r['target']:.2%} | {r['achieved']:.2%} | {'yes' if r['met'] else 'NO'} |"
        for r in report["length"]
    ]
    ev = report["evidence"]
    if ev["samples"]:
        depth = " ".join(f"{c}" for c in ev["depth_tenths"])
        lines += ["", f"evidence depth in the context (first evidence page among the kept pages, tenths 0-10%..90-100%): {depth}",
                  "", "| evidence page in the document | samples |", "|---|---|"]
        lines += [f"| {b['pages']} | {b['count']} |" for b in ev["doc_page_bins"]]
    lines += ["", "| dropped / excluded | count |", "|---|---|"]
    lines += [f"| dropped: {k} | {v} |" for k, v in report["dropped"].items()]
    lines += [f"| excluded: {k} | {v} |" for k, v in report["excluded"].items()]
    if not report["dropped"] and not report["excluded"]:
        lines.append("| (none) | 0 |")
    lines += ["", f"all targets met: {'yes' if report['targets_met'] else 'NO'}"]
    return "\n".join(lines)


def plot_lengths(report: dict, path: Path) -> None:
    """Top: every document sample's length, achieved (bars) under the target distribution (line),
    in the build's target bins as share per 1K tokens; then one panel per task; last, the
    evidence depth histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(report["lengths_by_task"])
    fig, axes = plt.subplots(len(tasks) + 2, 1, figsize=(8, 2.2 * (len(tasks) + 2) + 0.6), squeeze=False)
    top = report["max_seq_length"]
    docs = [v for t, vs in report["lengths_by_task"].items() if t != "short" for v in vs]
    ax = axes[0, 0]
    if docs and report["length_bins"]:
        for lo, hi, want in report["length_bins"]:
            hi = min(hi, top + 1)
            width = max(hi - lo, 1) / 1000
            got = sum(lo <= v < hi for v in docs) / len(docs)
            ax.bar(lo / 1000, got / width, width=width, align="edge", color="tab:blue", alpha=0.6, edgecolor="white")
            ax.hlines(want / width, lo / 1000, hi / 1000, colors="tab:red", linewidth=2)
        ax.plot([], [], color="tab:red", linewidth=2, label="target")
        ax.bar([], [], color="tab:blue", alpha=0.6, label="achieved")
        ax.legend(fontsize=8)
    ax.set_ylabel("share per 1K tokens")
    ax.set_title(f"all document samples ({len(docs)}): achieved vs target", fontsize=10, loc="left")
    bins = [i * top / 32 / 1000 for i in range(33)]
    for ax, task in zip(axes[1:-1, 0], tasks):
        values = [v / 1000 for v in report["lengths_by_task"][task]]
        ax.hist(values, bins=bins, color="tab:blue", edgecolor="white")
        ax.set_ylabel("samples")
        ax.set_title(f"{task}: {len(values)} samples", fontsize=10, loc="left")
    for ax in axes[:-1, 0]:
        ax.set_xlim(0, top / 1000)
    axes[-2, 0].set_xlabel("instance length (K tokens)")
    ax = axes[-1, 0]
    ax.hist(report["evidence"]["depths"], bins=[i / 10 for i in range(11)], color="tab:green", edgecolor="white")
    ax.set_xlabel("depth of the first evidence page in the context (0 = first page, 1 = last)")
    ax.set_ylabel("samples")
    ax.set_title(f"where the evidence sits: {report['evidence']['samples']} samples", fontsize=10, loc="left")
    fig.suptitle(f"Lengths per task ({report['length_distribution']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    as_json = {k: v for k, v in report.items() if k != "lengths_by_task"}
    as_json["evidence"] = {k: v for k, v in report["evidence"].items() if k != "depths"}
    for name, data in (("report.md", render_markdown(report)), ("report.json", json.dumps(as_json, indent=1, sort_keys=True))):
        atomic.write_text(out / name, data + "\n")
    with atomic.atomic_path(out / "lengths.png") as tmp:
        plot_lengths(report, tmp)
