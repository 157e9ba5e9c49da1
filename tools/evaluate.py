#!/usr/bin/env python
"""Long-document VQA evaluation at fixed context lengths (formats: docs/eval_format.md).

    python tools/evaluate.py build   --pool POOL_DIR --qa QA_DIR --output EVAL_DIR [--exclude SHARD_DIR|IDS]
                                     [--lengths 32768,65536,131072] [--depths 0,0.5,1] [--tokenizer DIR] [--family qwen3_vl]
    python tools/evaluate.py build   --from-jsonl BENCH.jsonl [--image-root DIR] --output EVAL_DIR ...
    python tools/evaluate.py import  mmlongbench --input MMLB_DATA/documentQA --image-root MMLB_IMAGE --output EVAL_DIR
    python tools/evaluate.py import  mmlongbench-doc|longdocurl|slidevqa --input QUESTIONS [--image-root DIR | --documents PDF_DIR] --output EVAL_DIR
    python tools/evaluate.py run     --eval-set EVAL_DIR [--image-root DIR] [--prompt default|mmlongbench] --output PRED.jsonl --backend hf --model HF_DIR
    python tools/evaluate.py run     --eval-set EVAL_DIR --output PRED.jsonl --backend openai --url URL --served-model NAME
    python tools/evaluate.py score   --predictions PRED.jsonl [--rules mmlongbench|legacy] [--string-metric anls|f1] [--output SCORED.jsonl]
    python tools/evaluate.py compare --base A.scored.jsonl --trained B.scored.jsonl --output DIR
    python tools/evaluate.py needle  build --pool POOL_DIR --output NEEDLE_DIR [--lengths ...] [--depths ...]
    python tools/evaluate.py needle  plot --predictions PRED.scored.jsonl --output heatmap.png

Argument parsing only; the work is in megatron_vlm.eval.commands.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_LENGTHS = "32768,65536,131072,262144,524288"
DEFAULT_DEPTHS = "0,0.25,0.5,0.75,1"
NEEDLE_DEPTHS = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1"


def _ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text):
    return [float(x) for x in text.split(",") if x.strip()]


def _backend_args(p):
    p.add_argument("--backend", choices=["hf", "openai"], required=True)
    p.add_argument("--model", help="HF checkpoint directory (--backend hf)")
    p.add_argument("--tokenizer", help="tokenizer dir if not in --model")
    p.add_argument("--preprocessor", help="dir with preprocessor_config.json if not in --model")
    p.add_argument("--device", help="cuda | cpu (default: cuda when available, unless $MEGATRON_VLM_DEVICE=cpu)")
    p.add_argument("--url", help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1 (--backend openai)")
    p.add_argument("--served-model", help="model name the server knows (--backend openai)")
    p.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key (unset: none)"
    )
    p.add_argument("--cache", help="on-disk request cache dir (--backend openai): a rerun resends nothing answered")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (--backend openai)")
    p.add_argument("--retries", type=int, default=4, help="retries per request (--backend openai)")
    p.add_argument(
        "--prompt",
        choices=["default", "mmlongbench"],
        default="default",
        help="default: pages then question, 'Answer:' on the last line; mmlongbench: MMLongBench's doc-QA prompt "
        "(26197d2) with a pre-filled 'Answer:' assistant turn",
    )
    p.add_argument("--max-new-tokens", type=int, help="default 64, or 128 with --prompt mmlongbench")
    p.add_argument("--name", help="model name written into the predictions (default: --model or --served-model)")


def _family_arg(p, default="the pool's"):
    from megatron_vlm.models.family import FAMILIES

    p.add_argument("--family", choices=FAMILIES,
                   help=f"model family to cost pages for: its image rule sets each page's tokens (default: {default})")


def parser():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build a fixed-length eval set")
    b.add_argument("--pool")
    b.add_argument("--qa", help="QA_DIR with records-*.jsonl, or one records .jsonl")
    b.add_argument("--from-jsonl", help="eval JSONL whose pages are re-padded instead of a pool")
    b.add_argument("--image-root", help="directory the --from-jsonl image paths are relative to (default: its directory)")
    b.add_argument("--output", required=True)
    b.add_argument("--exclude", help="training doc ids: SHARD_DIR, a text file (one a line) or a JSON list")
    b.add_argument("--lengths", type=_ints, default=_ints(DEFAULT_LENGTHS))
    b.add_argument("--depths", type=_floats, default=_floats(DEFAULT_DEPTHS))
    b.add_argument("--tokenizer", help="tokenizer dir: count prompt tokens exactly (else a 96-token reserve)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--max-questions", type=int)
    _family_arg(b)

    r = sub.add_parser("run", help="answer an eval set with a model")
    r.add_argument("--eval-set", required=True, help="EVAL_DIR or an eval .jsonl")
    r.add_argument("--output", required=True, help="predictions .jsonl")
    r.add_argument("--limit", type=int, help="only the first N items")
    r.add_argument("--image-root", help="directory the eval set's image paths are relative to (default: the eval set's)")
    _backend_args(r)

    im = sub.add_parser("import", help="import a public benchmark (MMLongBench's doc-QA files, or a dataset as published)")
    im.add_argument("kind", choices=["mmlongbench", "mmlongbench-doc", "longdocurl", "slidevqa"])
    im.add_argument("--input", nargs="+", required=True, help="question file(s), or MMLongBench's documentQA directory")
    im.add_argument("--output", required=True, help="EVAL_DIR to create")
    im.add_argument("--image-root", help="directory of the page images (all but mmlongbench-doc)")
    im.add_argument("--documents", help="directory of MMLongBench-Doc's PDFs (mmlongbench-doc)")
    im.add_argument("--samples", type=int, help="questions per file, seeded shuffle as MMLongBench's config (default 100; 0: all)")
    im.add_argument("--seed", type=int, help="sampling seed (default 42)")
    im.add_argument("--lengths", type=_ints, help="mmlongbench: only files of these lengths (e.g. 65536,131072)")
    im.add_argument("--dpi", type=int, default=144, help="mmlongbench-doc: page render resolution")
    _family_arg(im, default="qwen2_5_vl")

    s = sub.add_parser("score", help="score a predictions JSONL and write per-line scores and a report")
    s.add_argument("--predictions", required=True)
    s.add_argument("--output", help="scored JSONL (default PRED.scored.jsonl)")
    s.add_argument("--report-dir", help="where report .json/.md go (default beside --output)")
    s.add_argument(
        "--rules",
        choices=["mmlongbench", "legacy"],
        help="scoring rules (default: mmlongbench for lines with benchmark=mmlongbench, else legacy)",
    )
    s.add_argument("--string-metric", choices=["anls", "f1"], help="legacy rules only: string metric (default anls)")
    s.add_argument("--name", help="model name for the report")
    s.add_argument("--judge-url", help="optional LLM judge: OpenAI-compatible base URL")
    s.add_argument("--judge-model", help="optional LLM judge: model name")
    s.add_argument("--judge-concurrency", type=int, default=4)

    c = sub.add_parser("compare", help="base vs trained side by side with deltas")
    c.add_argument("--base", required=True, help="scored predictions .jsonl or report .json")
    c.add_argument("--trained", required=True, help="scored predictions .jsonl or report .json")
    c.add_argument("--output", required=True, help="directory for compare.json and compare.md")

    n = sub.add_parser("needle", help="needle-in-a-document test: build the set, or plot scored predictions")
    nsub = n.add_subparsers(dest="needle_command", required=True)
    nb = nsub.add_parser("build")
    nb.add_argument("--pool", required=True, help="held-out pool for the haystack pages")
    nb.add_argument("--output", required=True)
    nb.add_argument("--lengths", type=_ints, default=_ints(DEFAULT_LENGTHS))
    nb.add_argument("--depths", type=_floats, default=_floats(NEEDLE_DEPTHS))
    nb.add_argument("--trials", type=int, default=1)
    nb.add_argument("--dpi", type=int, default=144)
    nb.add_argument("--exclude")
    nb.add_argument("--tokenizer")
    nb.add_argument("--seed", type=int, default=0)
    _family_arg(nb)
    npl = nsub.add_parser("plot")
    npl.add_argument("--predictions", required=True, help="scored (or raw) needle predictions .jsonl")
    npl.add_argument("--output", required=True, help="heatmap .png")
    npl.add_argument("--title")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from megatron_vlm.eval import commands

    try:
        if args.command == "build":
            commands.build(
                args.output,
                args.lengths,
                args.depths,
                args.pool,
                args.qa,
                args.from_jsonl,
                args.exclude,
                args.tokenizer,
                args.seed,
                args.max_questions,
                args.image_root,
                family=args.family,
            )
        elif args.command == "import":
            commands.import_benchmark(
                args.kind,
                args.input,
                args.output,
                args.image_root,
                args.documents,
                args.samples,
                args.seed,
                args.lengths,
                args.dpi,
                family=args.family,
            )
        elif args.command == "run":
            items = commands.prepare_run(args.eval_set, args.output, args.image_root, args.limit)
            backend = commands.make_backend(
                args.backend,
                args.model,
                args.url,
                args.served_model,
                args.max_new_tokens,
                args.concurrency,
                args.retries,
                args.tokenizer,
                args.preprocessor,
                args.device,
                args.api_key_env,
                args.cache,
                args.prompt,
            )
            name = args.name or (Path(args.model).name if args.model else args.served_model)
            commands.run(args.eval_set, args.output, backend, name, items=items)
        elif args.command == "score":
            commands.score(
                args.predictions,
                args.output,
                args.report_dir,
                args.rules,
                args.string_metric,
                args.name,
                args.judge_url,
                args.judge_model,
                args.judge_concurrency,
            )
        elif args.command == "compare":
            commands.compare(args.base, args.trained, args.output)
        elif args.needle_command == "build":
            commands.needle_build(
                args.pool,
                args.output,
                args.lengths,
                args.depths,
                args.trials,
                args.dpi,
                args.exclude,
                args.tokenizer,
                args.seed,
                family=args.family,
            )
        else:
            commands.needle_plot(args.predictions, args.output, args.title)
    except (ValueError, KeyError, OSError) as e:  # OSError covers missing files and FileExistsError
        print(f"evaluate.py {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
