"""A crafted Megatron dist checkpoint runs no code on any path that loads one.

A dist checkpoint holds pickles in three places: torch DCP's `.metadata`, byte items inside the
`.distcp` files (Megatron's ShardedObjects, e.g. `_extra_state` and optimizer settings) and
`common.pt`. For each place a copy of a real trainer checkpoint gets a pickle whose `__reduce__`
creates a marker file when unpickled; every command that loads a dist checkpoint (train resume,
train `checkpoint.init_from`, `convert_checkpoint.py mcore-to-hf`, `compare_hf.py --mcore`) must
refuse it with a one-line error, and the marker must not exist. Runs with
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, a setting users adopt to load old checkpoints, under which
torch.load's own default no longer protects common.pt.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from tests.dist_utils import run_distributed

PLACES = ("metadata", "bytes", "common")
UNSAFE_ENV = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}


class _Payload:
    """Unpickled, it creates ``marker`` (builtins.open(marker, "w")): the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _linked_copy(src: Path, dst: Path) -> None:
    """A copy of a checkpoint directory tree whose files are hard links (files replaced later are rewritten)."""
    shutil.copytree(src, dst, copy_function=os.link)


def _rewrite(path: Path, data: bytes) -> None:
    path.unlink()  # break the hard link before writing
    path.write_bytes(data)


def craft(run_dir: Path, dst: Path, place: str, marker: Path) -> Path:
    """A copy of the run directory ``run_dir`` whose latest checkpoint carries the payload in ``place``."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    _linked_copy(run_dir, dst)
    ckpt = dst / (dst / "latest").read_text().strip()
    metadata = pickle.loads((ckpt / ".metadata").read_bytes())  # our own, trusted here
    if place == "metadata":
        metadata.planner_data = {"note": _Payload(marker)}
    elif place == "bytes":  # a model ShardedObject every model load reads, pointed at a new file
        key = next(k for k, v in metadata.state_dict_metadata.items()
                   if isinstance(v, BytesStorageMetadata) and k.startswith("language_model.") and "_extra_state" in k)
        index = next(i for i in metadata.storage_data if i.fqn == key)
        import io

        buf = io.BytesIO()
        torch.save([_Payload(marker)], buf)
        (ckpt / "__9_0.distcp").write_bytes(buf.getvalue())
        metadata.storage_data[index] = _StorageInfo(relative_path="__9_0.distcp", offset=0, length=len(buf.getvalue()))
    elif place == "common":
        import io

        common = torch.load(ckpt / "common.pt", weights_only=True)
        common["note"] = _Payload(marker)
        buf = io.BytesIO()
        torch.save(common, buf)
        _rewrite(ckpt / "common.pt", buf.getvalue())
    if place != "common":
        _rewrite(ckpt / ".metadata", pickle.dumps(metadata))
    return dst


def _recipe_args(ckpt_dir: Path, *extra: str) -> list[str]:
    return ["model.kind=qwen2_5_vl", "model.flavor=debug", "train.data_source=synthetic", "data.max_seq_length=128",
            "train.global_batch_tokens=128", "train.tokens=256", "train.precision=fp32", "train.lr=1e-3",
            f"checkpoint.dir={ckpt_dir}", "logging.wandb_mode=disabled", *extra]


def _make_run(tmp: str, tokenizer: str) -> None:
    """One step of the debug Qwen2.5-VL (with optimizer state), and its HF export for compare_hf."""
    from megatron_vlm.checkpoint.convert import mcore_to_hf
    from megatron_vlm.parallel import destroy
    from megatron_vlm.training.config import load_recipe
    from megatron_vlm.training.loop import train

    train(load_recipe(None, _recipe_args(Path(tmp) / "run", "train.max_steps=1")))
    mcore_to_hf(str(Path(tmp) / "run"), str(Path(tmp) / "hf"), progress=lambda _: None)
    destroy()


def _attempts(tmp: str, tokenizer: str, attempts: list[tuple[str, str, list[str]]]) -> list[tuple[str, int, str]]:
    """Each (name, command, argv) as the CLI's main() in this process: (name, exit status, stderr)."""
    import contextlib
    import importlib.util
    import io

    from megatron_vlm.parallel import destroy
    from tests.dist_utils import REPO

    results = []
    for name, target, argv in attempts:
        if target.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(target).stem, Path(REPO) / target)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = module.main(argv)
            except SystemExit as exc:
                code = exc.code
            except Exception as exc:  # noqa: BLE001 - a traceback where a one-line error belongs
                code, err = -1, io.StringIO(f"{type(exc).__name__}: {exc}\n")
        with contextlib.suppress(Exception):
            destroy()
        results.append((name, code, err.getvalue()))
    return results


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory, qwen_tokenizer_dir):
    tmp = tmp_path_factory.mktemp("safe_load")
    run_distributed(_make_run, 1, str(tmp), str(qwen_tokenizer_dir), timeout_s=400)
    return tmp


@pytest.mark.slow(55)
def test_crafted_checkpoint_runs_no_code_anywhere(trainer_run, qwen_tokenizer_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("{}\n")
    attempts, markers = [], {}
    for place in PLACES:
        marker = tmp_path / f"ran-{place}"
        markers[place] = marker
        run = craft(trainer_run / "run", tmp_path / f"crafted-{place}", place, marker)
        ckpt = run / (run / "latest").read_text().strip()
        attempts += [
            (f"mcore-to-hf/{place}", "tools/convert_checkpoint.py",
             ["mcore-to-hf", "--mcore", str(run), "--output", str(tmp_path / f"out-{place}")]),
            (f"init_from/{place}", "megatron_vlm.train",
             ["--config", str(recipe), *_recipe_args(tmp_path / f"fresh-{place}", f"checkpoint.init_from={run}")]),
            (f"resume/{place}", "megatron_vlm.train", ["--config", str(recipe), *_recipe_args(run)]),
            (f"compare_hf/{place}", "tools/compare_hf.py",
             ["--hf", str(trainer_run / "hf"), "--mcore", str(ckpt), "--tokenizer", str(qwen_tokenizer_dir)]),
        ]
    results = run_distributed(_attempts, 1, str(tmp_path), str(qwen_tokenizer_dir), attempts,
                              timeout_s=600, env=UNSAFE_ENV)[0]
    ran = sorted(place for place, marker in markers.items() if marker.exists())
    assert not ran, f"code from a crafted checkpoint ran (places: {ran}); results: {results}"
    for name, code, err in results:
        if name in ("mcore-to-hf/bytes", "mcore-to-hf/common"):  # the converter reads .metadata and tensors only
            assert code == 0, (name, err)
            continue
        assert code not in (0, -1), (name, code, err)
        errors = [line for line in err.splitlines() if "error:" in line]  # stderr also holds library warnings
        assert len(errors) == 1 and "unsafe checkpoint" in errors[0] and "Traceback" not in err, (name, err[-2000:])


@pytest.mark.slow(35)
def test_clean_checkpoint_still_loads_on_every_path(trainer_run, qwen_tokenizer_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("{}\n")
    run = tmp_path / "run"
    _linked_copy(trainer_run / "run", run)
    ckpt = run / (run / "latest").read_text().strip()
    attempts = [
        ("compare_hf", "tools/compare_hf.py", ["--hf", str(trainer_run / "hf"), "--mcore", str(ckpt),
                                               "--tokenizer", str(qwen_tokenizer_dir), "--atol", "1e-4"]),
        ("init_from", "megatron_vlm.train",
         ["--config", str(recipe), *_recipe_args(tmp_path / "fresh", f"checkpoint.init_from={run}", "train.max_steps=1")]),
        ("resume", "megatron_vlm.train", ["--config", str(recipe), *_recipe_args(run)]),
    ]
    results = run_distributed(_attempts, 1, str(tmp_path), str(qwen_tokenizer_dir), attempts, timeout_s=600)[0]
    for name, code, err in results:
        assert code == 0, (name, err[-3000:])
    assert (run / "latest").read_text().strip() == "iter_0000002"  # resumed at step 1 and trained step 2
