"""`preprocess_data.py stats`: a report on built shards, measured from the shards themselves.

    python tools/preprocess_data.py stats SHARD_DIR [--output REPORT_DIR] [--tolerance 0.01]

Reads every instance's json from the tars (not the build's own bookkeeping) and writes, to
SHARD_DIR/report/ by default: lengths.png (token-length histogram per task type), report.md
(achieved vs target mixture and length distribution, totals, drops and exclusions by reason) and
report.json (the same numbers). A target is met when the achieved share is within the tolerance
(1 point) of the target, or for long-biased when the long share is at least the target. Exits 0
when all targets are met, 1 when one is not, 2 on bad input.
"""

from __future__ import annotations

import json
import sys
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

from megatron_vlm.utils import atomic


def add_arguments(parser) -> None:
    parser.add_argument("shards", help="directory of training shards (with index.json)")
    parser.add_argument("--output", default=None, help="report directory (default SHARD_DIR/report)")
    parser.add_argument("--tolerance", type=float, default=0.01, help="allowed |achieved - target| share")


def main(args) -> int:
    shard_dir = Path(args.shards)
    try:
        report = compute(shard_dir, args.tolerance)
    except (FileNotFoundError, ValueError) as e:
        print(f"stats: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.output) if args.output else shard_dir / "report"
    write(report, out)
    print(render_markdown(report))
    print(f"stats: report written to {out} (report.md, report.json, lengths.png)")
    return 0 if report["targets_met"] else 1


def read_instances(shard_dir: Path, index: dict) -> list[dict]:
    rows = []
    for shard in index["shards"]:
        with tarfile.open(shard_dir / shard["name"], "r:") as tf:
            for m in tf:
                if m.isfile() and m.name.endswith(".json") and m.name.count(".") == 1:
                    r = json.loads(tf.extractfile(m).read())
                    rows.append({"task": r["task"], "num_tokens": r["num_tokens"], "images": len(r["pages"])})
    return rows


def compute(shard_dir: Path, tolerance: float = 0.01) -> dict:
    index_path = shard_dir / "index.json"
    if not index_path.is_file():
        raise FileNotFoundError(f"no index.json in {shard_dir} (not a finished build)")
    index = json.loads(index_path.read_text())
    rows = read_instances(shard_dir, index)
    if not rows:
        raise ValueError(f"{shard_dir} holds no samples")
    targets = index["targets"]
    n = len(rows)
    task_counts = Counter(r["task"] for r in rows)
    mixture_rows = []
    for task in sorted(set(targets["mixture"]) | set(task_counts)):
        want, got = targets["mixture"].get(task, 0.0), task_counts[task] / n
        mixture_rows.append({"task": task, "target": want, "achieved": got, "met": abs(got - want) <= tolerance})
    docs = [r for r in rows if r["task"] != "short"]
    length_rows = []
    if docs:
        for lo, hi, want in targets["length_bins"]:
            got = sum(lo <= r["num_tokens"] < hi for r in docs) / len(docs)
            length_rows.append({"range": f"{lo}-{hi}", "target": want, "achieved": got, "met": abs(got - want) <= tolerance})
        at_least = targets.get("long_share_at_least")
        if at_least is not None:
            got = sum(r["num_tokens"] >= targets["long_threshold"] for r in docs) / len(docs)
            length_rows = [{"range": f">={targets['long_threshold']}", "target": at_least, "achieved": got, "met": got >= at_least, "at_least": True}]
    per_task = defaultdict(list)
    for r in rows:
        per_task[r["task"]].append(r["num_tokens"])
    return {
        "shards": str(shard_dir),
        "length_distribution": targets["length_distribution"],
        "totals": {"samples": n, "tokens": sum(r["num_tokens"] for r in rows), "images": sum(r["images"] for r in rows), "shards": len(index["shards"])},
        "index_totals": index["totals"],
        "mixture": mixture_rows,
        "length": length_rows,
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
        "| task | target | achieved | met |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['task']} | {r['target']:.2%} | {r['achieved']:.2%} | {'yes' if r['met'] else 'NO'} |" for r in report["mixture"]]
    lines += ["", f"length distribution: {report['length_distribution']}", "", "| tokens | target | achieved | met |", "|---|---|---|---|"]
    lines += [
        f"| {r['range']} | {'>= ' if r.get('at_least') else ''}{r['target']:.2%} | {r['achieved']:.2%} | {'yes' if r['met'] else 'NO'} |"
        for r in report["length"]
    ]
    lines += ["", "| dropped / excluded | count |", "|---|---|"]
    lines += [f"| dropped: {k} | {v} |" for k, v in report["dropped"].items()]
    lines += [f"| excluded: {k} | {v} |" for k, v in report["excluded"].items()]
    if not report["dropped"] and not report["excluded"]:
        lines.append("| (none) | 0 |")
    lines += ["", f"all targets met: {'yes' if report['targets_met'] else 'NO'}"]
    return "\n".join(lines)


def plot_lengths(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(report["lengths_by_task"])
    fig, axes = plt.subplots(len(tasks), 1, figsize=(8, 2.2 * len(tasks) + 0.6), sharex=True, squeeze=False)
    top = report["max_seq_length"]
    bins = [i * top / 32 for i in range(33)]
    for ax, task in zip(axes[:, 0], tasks):
        values = [v / 1000 for v in report["lengths_by_task"][task]]
        ax.hist(values, bins=[b / 1000 for b in bins], color="tab:blue", edgecolor="white")
        ax.set_ylabel("samples")
        ax.set_title(f"{task}: {len(values)} samples", fontsize=10, loc="left")
    axes[-1, 0].set_xlabel("instance length (K tokens)")
    fig.suptitle(f"Length per task ({report['length_distribution']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, data in (("report.md", render_markdown(report)), ("report.json", json.dumps({k: v for k, v in report.items() if k != "lengths_by_task"}, indent=1, sort_keys=True))):
        atomic.write_text(out / name, data + "\n")
    with atomic.atomic_path(out / "lengths.png") as tmp:
        plot_lengths(report, tmp)
