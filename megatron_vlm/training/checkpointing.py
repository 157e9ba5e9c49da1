"""Save and resume a run with Megatron dist checkpointing.

    CKPT_DIR/iter_0000040/         one checkpoint: dist-checkpoint shards of model + optimizer + RNG,
             recipe.yaml           the resolved recipe,
             train_state.json      step, tokens, layout, W&B run id,
             loader/dp-00000.json  each data-parallel rank's loader position
    CKPT_DIR/latest                "iter_0000040", replaced atomically only after every rank finished

A kill during a save leaves ``latest`` on the previous complete checkpoint; the next save of the
same step clears the half-written directory first. Resume restores model, optimizer (with its
fp32 master weights), the step (hence the LR schedule), the loader position and every RNG, so
the resumed run sees exactly the samples it had not seen and, on the same layout, computes the
same numbers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_vlm.parallel.cpu_compat import cuda_type_names
from megatron_vlm.parallel.state import device
from megatron_vlm.training.config import Recipe, RecipeError, load_recipe, recipe_to_yaml
from megatron_vlm.utils import atomic

LATEST = "latest"
OPTIM_META = {"distrib_optim_sharding_type": "dp_reshardable"}


def iter_dir(ckpt_dir: str | Path, step: int) -> Path:
    return Path(ckpt_dir) / f"iter_{step:07d}"


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The complete checkpoint ``latest`` points to, or None."""
    pointer = Path(ckpt_dir) / LATEST
    if not pointer.is_file():
        return None
    path = Path(ckpt_dir) / pointer.read_text().strip()
    return path if path.is_dir() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir given either directly (iter_*) or as a run dir with a ``latest`` pointer."""
    path = Path(path)
    if (path / "train_state.json").is_file():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"no complete Megatron checkpoint at {path} (no train_state.json, no {LATEST})")
    return found


def _model_state(chunks: list) -> dict:
    if len(chunks) == 1:
        return {"model": chunks[0].module.sharded_state_dict()}
    return {f"model{i}": chunk.module.sharded_state_dict() for i, chunk in enumerate(chunks)}


def _rng_state(rank: int, world: int) -> dict:
    from megatron.core import tensor_parallel
    from megatron.core.dist_checkpointing import ShardedTensor

    states = {"cpu": torch.get_rng_state()}
    if device().is_cuda:
        states["cuda"] = torch.cuda.get_rng_state()
    for name, state in tensor_parallel.get_cuda_rng_tracker().get_states().items():
        states[f"tracker.{name}"] = state
    return {
        key: ShardedTensor.from_rank_offsets(f"rng.{key}", value.cpu()[None], (0, rank, world), replica_id=0)
        for key, value in states.items()
    }


def _set_rng_state(states: dict) -> None:
    from megatron.core import tensor_parallel

    torch.set_rng_state(states["cpu"][0])
    if "cuda" in states and device().is_cuda:
        torch.cuda.set_rng_state(states["cuda"][0])
    tracker = {k[len("tracker."):]: v[0] for k, v in states.items() if k.startswith("tracker.")}
    if tracker:
        tensor_parallel.get_cuda_rng_tracker().set_states(tracker)


def _sharded_state(chunks, optimizer, rng: bool, loading: bool) -> dict:
    state = _model_state(chunks)
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=loading, metadata=OPTIM_META)
    if rng:
        state["rng"] = _rng_state(dist.get_rank(), dist.get_world_size())
    return state


def _start_writer_helpers() -> None:
    """Start the process Megatron's checkpoint writer keeps for its results (a spawned
    multiprocessing Manager, as its _get_write_results_queue does) so that it ignores the stop
    signals Slurm sends to every process, and dies with this rank (signals.die_with_parent)."""
    import multiprocessing as mp
    from multiprocessing.managers import SyncManager

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    from megatron_vlm.training.signals import children_ignore_stop_signals, die_with_parent

    if hasattr(filesystem_async, "_get_write_results_queue") and getattr(filesystem_async, "_results_queue", None) is None:
        manager = SyncManager(ctx=mp.get_context("spawn"))
        with children_ignore_stop_signals():
            manager.start(initializer=die_with_parent)
        filesystem_async._results_queue = manager.Queue()  # the queue keeps its manager


def save_checkpoint(ckpt_dir: str | Path, step: int, chunks: list, optimizer, loader, train_state: dict,
                    recipe: Recipe, dp_rank: int, is_loader_writer: bool, keep_last: int = 0) -> Path:
    """Save everything for ``step``; returns the iter_ directory. Collective over all ranks."""
    from megatron.core import dist_checkpointing

    target = iter_dir(ckpt_dir, step)
    _start_writer_helpers()
    if dist.get_rank() == 0:
        if target.exists():  # left by a save that was killed: never complete, never `latest`
            shutil.rmtree(target)
        target.mkdir(parents=True)
    dist.barrier()
    with cuda_type_names():
        dist_checkpointing.save(_sharded_state(chunks, optimizer, rng=True, loading=False), str(target))
    if is_loader_writer:
        (target / "loader").mkdir(exist_ok=True)
        atomic.write_text(target / "loader" / f"dp-{dp_rank:05d}.json", json.dumps(loader.state_dict(), sort_keys=True))
    if dist.get_rank() == 0:
        atomic.write_text(target / "recipe.yaml", recipe_to_yaml(recipe))
        atomic.write_text(target / "train_state.json", json.dumps(train_state, sort_keys=True, indent=1))
    dist.barrier()
    if dist.get_rank() == 0:
        atomic.write_text(Path(ckpt_dir) / LATEST, target.name + "\n")
        if keep_last > 0:
            complete = sorted(p for p in Path(ckpt_dir).glob("iter_*") if (p / "train_state.json").is_file())
            for old in complete[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return target


# The model fields that decide the checkpoint's tensor shapes (null: the flavor's own value).
MODEL_SHAPE_FIELDS = ("kind", "flavor", "num_layers")


def model_differences(path: Path, recipe: Recipe) -> list[str]:
    """The shape-deciding model fields whose value in the checkpoint's recipe.yaml differs from ``recipe``
    (none when that recipe does not load)."""
    try:
        saved = load_recipe(path / "recipe.yaml").model
    except (RecipeError, OSError):
        return []
    def shown(value):
        return "unset (the flavor's)" if value is None else value

    return [f"model.{name}: {shown(getattr(saved, name))} there, {shown(getattr(recipe.model, name))} now"
            for name in MODEL_SHAPE_FIELDS if getattr(saved, name) != getattr(recipe.model, name)]


def load_checkpoint(path: Path, chunks: list, optimizer, loader, dp_rank: int, recipe: Recipe | None = None) -> dict:
    """Resume from checkpoint ``path``: model, optimizer, RNG and loader. Returns its train_state.

    A checkpoint that does not load is a one-line CheckpointError; when ``recipe`` describes another
    model than the checkpoint's recipe.yaml, the message says which fields differ."""
    from megatron_vlm.checkpoint import safe_load
    from megatron_vlm.training.optimizer import init_empty_state, restore_adam_steps

    train_state = json.loads((path / "train_state.json").read_text())
    init_empty_state(optimizer)
    same_world = train_state.get("world_size") == dist.get_world_size()
    with cuda_type_names():
        state = _sharded_state(chunks, optimizer, rng=same_world, loading=True)
        try:
            loaded = safe_load.load(state, path)
        except safe_load.CheckpointError as err:
            differ = model_differences(path, recipe) if recipe is not None else []
            if not differ or isinstance(err, safe_load.UnsafeCheckpointError):
                raise
            raise safe_load.CheckpointError(
                f"{path} was saved for another model ({'; '.join(differ)}): a resume needs the same model; use a new "
                f"checkpoint.dir ({err})") from None
        _load_model(chunks, loaded)
        with torch.no_grad():  # fp32 master shards are views of the (grad-requiring) params
            optimizer.load_state_dict(loaded["optimizer"])
        restore_adam_steps(optimizer)
    if same_world:
        _set_rng_state(loaded["rng"])
    loader_file = path / "loader" / f"dp-{dp_rank:05d}.json"
    if not loader_file.is_file():
        raise FileNotFoundError(f"{loader_file} missing: the checkpoint was saved with a different data-parallel size")
    loader.load_state_dict(json.loads(loader_file.read_text()))
    return train_state


def _load_model(chunks: list, loaded: dict) -> None:
    if len(chunks) == 1:
        chunks[0].module.load_state_dict(loaded["model"], strict=True)
    else:
        for i, chunk in enumerate(chunks):
            chunk.module.load_state_dict(loaded[f"model{i}"], strict=True)


def load_model_weights(path: str | Path, chunks: list) -> Path:
    """Initialise the model (only) from a Megatron checkpoint (a run dir or an iter_ dir)."""
    from megatron_vlm.checkpoint import safe_load

    path = resolve_checkpoint(path)
    _load_model(chunks, safe_load.load(_model_state(chunks), path))
    return path
