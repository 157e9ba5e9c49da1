"""Train a model with a recipe: the project's main command.

    python -m megatron_vlm.launch --nproc-per-node N -m megatron_vlm.train --config RECIPE.yaml [section.key=value ...]

Example: ``torchrun --nproc-per-node 2 -m megatron_vlm.train --config examples/recipes/debug.yaml
parallel.tp=2 train.max_steps=10``. Resumes from ``checkpoint.dir/latest`` when it exists.
(megatron_vlm.launch is torchrun, with SIGTERM/SIGUSR1 ending the run with exit 0; see
docs/training.md.) Exits 0 when the budget is done or after SIGTERM/SIGUSR1 (at any point) saved a
checkpoint; 1 with a one-line reason on a bad recipe, an unloadable or unsafe checkpoint, shards
whose index.json is not a build's (or built for another model family), a data stream of bad
samples, a broken image backend, or a run stopped by repeated NaN/Inf.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from megatron_vlm.training.signals import StopSignal

    stop = StopSignal()  # before the heavy imports: a SIGTERM during start-up is honoured too
    parser = argparse.ArgumentParser(prog="megatron_vlm.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="recipe YAML (see examples/recipes/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4 parallel.tp=2")
    args = parser.parse_args(argv)

    from megatron_vlm.checkpoint.safe_load import CheckpointError
    from megatron_vlm.data.image_processing import ImageBackendError
    from megatron_vlm.data.loader import BadDataError
    from megatron_vlm.data.shard_index import ShardsError
    from megatron_vlm.parallel import LayoutError
    from megatron_vlm.training.budget import BudgetError
    from megatron_vlm.training.config import RecipeError, load_recipe
    from megatron_vlm.training.loop import NonFiniteLossError, train

    rank = int(os.environ.get("RANK", "0"))
    try:
        recipe = load_recipe(args.config, args.overrides)
        result = train(recipe, stop)
    except (RecipeError, BudgetError, LayoutError, NonFiniteLossError, CheckpointError, ShardsError,
            FileNotFoundError) as err:
        if rank == 0:  # the same on every rank
            print(f"megatron_vlm.train: error: {err}", file=sys.stderr, flush=True)
        return 1
    except (BadDataError, ImageBackendError) as err:  # this rank's data or backend: every rank says its own
        print(f"megatron_vlm.train: error: rank {rank}: {err}", file=sys.stderr, flush=True)
        return 1
    if rank == 0:
        how = "stopped by signal" if result.stopped_by_signal else "done"
        print(f"[train] {how} at step {result.last_step}; last checkpoint: {result.checkpoint}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
