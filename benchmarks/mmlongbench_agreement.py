#!/usr/bin/env python
"""Agreement of our scorers with MMLongBench's own doc-QA scoring code on generated answer/prediction pairs.

    git -C /tmp clone https://github.com/EdinburghNLP/MMLongBench && git -C /tmp/MMLongBench checkout 26197d2
    python benchmarks/mmlongbench_agreement.py --peer /tmp/MMLongBench [--pairs 600] [--seed 0]

Imports ``utils.py`` from the given checkout (its ``parse_output`` and ``calculate_metrics(...,
"doc_qa")``, run as its data.py's doc-QA post-processing does) and scores seeded random pairs of
every answer format (numbers with units, percentages and thousands commas; exact-match kinds;
free strings; "Not answerable"; JSON lists of mixed items; outputs with and without the
pre-filled "Answer:", several lines, repeated markers). Prints how many pairs the mmlongbench
rules and the legacy rules score exactly as the peer does (both refusing an unscorable answer
counts as agreeing), the mean scores, and the first disagreements. Nothing of the peer's code is
kept here; its rouge_score import is stubbed when that package is missing (doc-QA never uses it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import shlex
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_vlm.eval import rules_legacy, rules_mmlongbench  # noqa: E402

WORDS = "revenue the Annual report blue whale a Paris Rome growth net income an Board of Directors chart Table 3 Q4".split()
EXACT = ["https://www.example.com/a", "report.py", "notebook.ipynb", "page 12", "10:30 a.m.", "2019-03-04", "2019/3",
         "03/04/2019", "jane.doe@example.org", "123-456", "12 34", "Page 5", "2019"]  # fmt: skip
LEADS = ["", "The answer is ", "It is ", "approximately ", "about $", "Answer: ", "answer: "]
TAILS = ["", ".", " in total.", "%", " million", "\nExplanation: page 3 shows 7 items.", " (see page 4)",
         "\n\nAnswer: 999", " kg", ",", " m"]  # fmt: skip


def load_peer(checkout: Path):
    if importlib.util.find_spec("rouge_score") is None:
        stub = types.ModuleType("rouge_score")
        stub.rouge_scorer = types.SimpleNamespace(RougeScorer=lambda *a, **k: None)
        sys.modules["rouge_score"] = stub
    spec = importlib.util.spec_from_file_location("mmlongbench_utils", checkout / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Pairs:
    """Seeded (answer, output, answer_format) triples."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def phrase(self, k: int) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(k))

    def numeric(self, fmt: str):
        r = self.rng
        if fmt == "Integer":
            answer = r.choice([5, 12, 1000, 2019, -3, 0, 250000, "1,204", "$35", "12 million", "7"])
        else:
            answer = r.choice([3.14, 0.25, 12.5, "25%", "0.5", 100.0, "$1.25", "4.7 kg", 99.5, "12.5%"])
        base = str(answer)
        options = [base, base.replace(",", ""), str(r.randint(0, 3000)), f"{base} and 17", f"17 or {base}",
                   self.phrase(2), "Not answerable", f"{r.uniform(0, 200):.2f}"]  # fmt: skip
        try:
            v = float(rules_mmlongbench.number_text(base))
            options += [str(v * 100), str(v / 100), f"{v * 1.005:.4f}", f"{v * 1.02:.4f}", f"{int(v):,}", f"{v}%"]
        except ValueError:
            pass
        return answer, r.choice(options)

    def string(self):
        answer = self.rng.choice(EXACT) if self.rng.random() < 0.35 else self.phrase(self.rng.randint(1, 4))
        words = answer.split()
        options = [answer, answer.lower(), answer.upper(), answer + ".", f"'{answer}'", self.phrase(3),
                   " ".join(words[: max(1, len(words) // 2)]), answer + " " + self.phrase(2), "Not answerable",
                   "The " + answer, answer.replace(" ", "")]  # fmt: skip
        return answer, self.rng.choice(options)

    def listed(self):
        r, items = self.rng, []
        for _ in range(r.randint(1, 4)):
            c = r.random()
            items.append(
                self.phrase(r.randint(1, 2)) if c < 0.4 else r.choice(EXACT) if c < 0.55 else r.randint(0, 60)
                if c < 0.7 else round(r.uniform(0, 10), 1) if c < 0.8 else r.choice(["12", "3.5", "40%", "$7"])
            )  # fmt: skip
        shown = [str(x) for x in items]
        r.shuffle(shown)
        if r.random() < 0.4:
            shown = shown[: max(1, len(shown) - 1)]
        if r.random() < 0.3:
            shown.append(self.phrase(1))
        text = r.choice([", ", "; ", " and ", "\n"]).join(shown)
        return json.dumps(items), r.choice([text, f"[{text}]", json.dumps(shown), self.phrase(2)])

    def one(self):
        r = self.rng
        fmt = r.choice(["Integer", "Float", "String", "String", "List", "None"])
        if fmt in ("Integer", "Float"):
            answer, pred = self.numeric(fmt)
        elif fmt == "String":
            answer, pred = self.string()
        elif fmt == "List":
            answer, pred = self.listed()
        else:
            answer = "Not answerable"
            pred = r.choice(["Not answerable", "Not answerable.", "not answerable", "The question is not answerable",
                             "unanswerable", "42", "It cannot be answered from the document", self.phrase(2)])  # fmt: skip
        generated = r.choice(LEADS) + pred + r.choice(TAILS)
        output = "Answer:" + r.choice(["", " "]) + generated if r.random() < 0.85 else generated
        return answer, output, fmt


def outcome(score, *args):
    """``score(*args)``, or ("refused", error name) when it raises."""
    try:
        return score(*args)
    except Exception as e:  # noqa: BLE001 - the peer raises whatever its code meets
        return ("refused", type(e).__name__)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", required=True, type=Path, help="a checkout of EdinburghNLP/MMLongBench (26197d2)")
    ap.add_argument("--pairs", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print("$", shlex.join([sys.executable, *sys.argv]))
    peer = load_peer(args.peer)
    legacy_label = {"Integer": "Int", "String": "Str"}

    def peer_score(answer, output, fmt):
        parsed = peer.parse_output(output, prefix="Answer:")
        parsed = output if parsed is None else parsed
        return parsed, float(peer.calculate_metrics(parsed, [answer, fmt], "doc_qa")["doc_qa"])

    gen = Pairs(args.seed)
    rows = [gen.one() for _ in range(args.pairs)]
    same = {"mmlongbench": 0, "legacy": 0}
    means = {"peer": 0.0, "mmlongbench": 0.0, "legacy": 0.0}
    differ = []
    for answer, output, fmt in rows:
        p = outcome(peer_score, answer, output, fmt)
        ours = outcome(rules_mmlongbench.score_output, answer, output, fmt)
        old_answer = json.loads(answer) if fmt == "List" else answer
        old = outcome(rules_legacy.score_output, old_answer, output, legacy_label.get(fmt, fmt))
        refused = p[0] == "refused"
        same["mmlongbench"] += (refused and ours[0] == "refused") or p == ours
        same["legacy"] += (refused and old[0] == "refused") or (not refused and old[0] != "refused" and old[1] == p[1])
        if not refused:
            means["peer"] += p[1]
            means["mmlongbench"] += ours[1] if ours[0] != "refused" else 0.0
            means["legacy"] += old[1] if old[0] != "refused" else 0.0
        if p != ours and not (refused and ours[0] == "refused"):
            differ.append({"answer": answer, "output": output, "format": fmt, "peer": p, "ours": ours})
    n = len(rows)
    print(f"{n} pairs (seed {args.seed}): mmlongbench rules agree with the peer on {same['mmlongbench']}, "
          f"legacy rules on {same['legacy']}")  # fmt: skip
    print("mean score: " + ", ".join(f"{k} {v / n:.3f}" for k, v in means.items()))
    for d in differ[:10]:
        print("differs:", json.dumps(d, default=str))
    return 0 if not differ else 1


if __name__ == "__main__":
    sys.exit(main())
