"""How fast fixed-length eval contexts are planned from a large pool (no images read or written).

    PYTHONPATH=. python benchmarks/eval_contexts.py [--docs 20000] [--pages 40] [--questions 50]

Builds an in-memory pool of --docs documents of --pages US-Letter pages at 144 DPI (2,508 image
tokens each), then one context per (question, length, depth) for 32K..512K and 5 depths, and prints
contexts per second and the worst length/depth error seen, with the command line.
"""

from __future__ import annotations

import argparse
import sys
import time

from megatron_vlm.data import image_rule
from megatron_vlm.eval.contexts import Document, Page, Question, build_context
from megatron_vlm.models.family import get_family

LENGTHS = (32768, 65536, 131072, 262144, 524288)
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--pages", type=int, default=40)
    ap.add_argument("--questions", type=int, default=50)
    args = ap.parse_args()
    h, w = image_rule.page_pixels(612, 792, 144)
    rule = get_family("qwen2_5_vl").image
    tokens, grid = rule.token_count(h, w), rule.grid_thw(h, w)
    docs = [
        Document(f"d{i}", [Page(f"d{i}", k, tokens, grid, "png", bytes) for k in range(args.pages)])
        for i in range(args.docs)
    ]
    t0 = time.perf_counter()
    n, worst_len, worst_depth = 0, 0, 0
    for q in range(args.questions):
        doc = docs[q]
        question = Question(f"q{q}", doc.doc_id, "extract-single", "?", "a", "Str", [args.pages // 2])
        for length in LENGTHS:
            for depth in DEPTHS:
                ctx = build_context(question, doc, docs, length, depth, prompt_tokens=80)
                n += 1
                worst_len = max(worst_len, length - 80 - ctx.tokens)
                worst_depth = max(worst_depth, abs(ctx.before_tokens - depth * (length - 80 - ctx.anchor_tokens)))
    dt = time.perf_counter() - t0
    print(f"$ PYTHONPATH=. python {' '.join(sys.argv)}")
    print(
        f"pool {args.docs} docs x {args.pages} pages ({tokens + 2} tokens/page); {n} contexts "
        f"({args.questions} questions x {len(LENGTHS)} lengths x {len(DEPTHS)} depths)"
    )
    print(
        f"{n / dt:.1f} contexts/s ({dt:.2f} s); worst shortfall {worst_len} tokens, worst depth error "
        f"{worst_depth:.0f} tokens (one page = {tokens + 2})"
    )


if __name__ == "__main__":
    main()
