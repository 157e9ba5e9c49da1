#!/usr/bin/env python
"""Data preprocessing: PDFs -> document pool -> QA records -> training shards.

    python tools/preprocess_data.py pool  --input PDF_DIR_OR_LIST --output POOL_DIR [--dpi 144] [--workers N]
    python tools/preprocess_data.py synth --pool POOL_DIR --output QA_DIR --teacher template|openai
    python tools/preprocess_data.py build --pool POOL_DIR --qa QA_DIR --recipe RECIPE.yaml --output SHARD_DIR
    python tools/preprocess_data.py stats SHARD_DIR
    python tools/preprocess_data.py qa-check QA_DIR --pool POOL_DIR
    python tools/preprocess_data.py review --pool POOL_DIR --qa QA_DIR --output REVIEW_DIR [--num 40]

Argument parsing only; each stage lives in megatron_vlm.data.<stage> as add_arguments(parser) (the
flags generated from the stage's options dataclass) and main(args) -> exit code.
"""

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = {
    "pool": ("megatron_vlm.data.pool", "validate and render PDFs into a document pool"),
    "synth": ("megatron_vlm.data.synth.run", "synthesize long-document QA records from a pool"),
    "build": ("megatron_vlm.data.build", "build training shards from a pool and QA records"),
    "stats": ("megatron_vlm.data.stats", "report on a directory of training shards"),
    "qa-check": ("megatron_vlm.data.synth.qa_check", "count QA records that break the reader-question rules"),
    "review": ("megatron_vlm.data.synth.review", "write an HTML page of sampled QA records with their evidence pages"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    argv = sys.argv[1:] if argv is None else argv
    # Import only the chosen stage, so one stage's dependencies never slow another.
    chosen = argv[0] if argv and argv[0] in STAGES else None
    modules = {}
    for name, (module_name, help_text) in STAGES.items():
        sp = sub.add_parser(name, help=help_text)
        if name == chosen:
            modules[name] = importlib.import_module(module_name)
            modules[name].add_arguments(sp)
    args = parser.parse_args(argv)
    return modules[args.stage].main(args)


if __name__ == "__main__":
    sys.exit(main())
