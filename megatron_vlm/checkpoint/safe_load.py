"""Load Megatron dist checkpoints without running code from them (docs/security.md).

A dist checkpoint is untrusted data (a colleague's directory, a download), but it holds pickles:

- ``.metadata``, torch DCP's index, which torch reads with a plain ``pickle.load``;
- byte items inside the ``__*.distcp`` files (Megatron's ShardedObjects: ``_extra_state``,
  optimizer settings), which torch DCP's default load planner, and Megatron's after it, read
  with ``torch.load(weights_only=False)``;
- ``common.pt``, read with ``torch.load`` at its default (which an environment variable,
  TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, turns unsafe);
- and, on the Transformer Engine spec, each layer's ``_extra_state`` tensor, which TE's
  ``set_extra_state`` passes to ``pickle.loads``.

Here ``.metadata`` is unpickled with an allow-list of torch DCP's metadata classes, the byte
items and ``common.pt`` with ``weights_only=True``, and TE's extra state is checked against an
allow-list of TE recipe classes before the model sees it. Anything else is refused with
:class:`UnsafeCheckpointError` (one line naming the file and the global it asked for).

    state = load(sharded_state_dict, ckpt_dir)   # instead of megatron.core.dist_checkpointing.load
    reader = SafeReader(ckpt_dir)                # a torch DCP FileSystemReader for direct reads
    metadata = read_metadata(ckpt_dir)
"""

from __future__ import annotations

import contextlib
import io
import pickle
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded (missing or truncated files, another model); one line."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file asked for code to run when loaded; one line naming the file."""


# Globals a torch DCP `.metadata` pickle may name: its dataclasses and enums, torch.Size, dtypes
# and layouts, paths, and Megatron's two placeholder classes for older checkpoints. Every one is a
# plain data holder: constructing it runs no code of the file's choosing.
_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.distributed.checkpoint.planner": {"SavePlan", "WriteItem", "WriteItemType", "TensorWriteData", "BytesIOWriteData"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "collections": {"OrderedDict"},
    "pathlib": {"Path", "PosixPath", "PurePosixPath"},  # StorageMeta.checkpoint_id
    "megatron.core.dist_checkpointing.strategies.torch": {"MCoreMetadata", "MCoreSavePlan"},
}


def _torch_dtype(module: str, name: str):
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    return None


class _AllowListUnpickler(pickle.Unpickler):
    """A pickle.Unpickler that resolves only allow-listed globals."""

    allowed: dict[str, set[str]] = {}

    def __init__(self, file, where: str):
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str):
        dtype = _torch_dtype(module, name)
        if dtype is not None:
            return dtype
        if name in self.allowed.get(module, ()):
            return super().find_class(module, name)
        return self.refuse(module, name)

    def refuse(self, module: str, name: str):
        raise UnsafeCheckpointError(f"unsafe checkpoint: {self.where} asks to import {module}.{name} when "
                                    "loaded; refusing (only torch DCP metadata classes are allowed)")


class _MetadataUnpickler(_AllowListUnpickler):
    allowed = _METADATA_GLOBALS


def _unpickle(unpickler_cls, data: io.IOBase, where: str):
    try:
        return unpickler_cls(data, where).load()
    except UnsafeCheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated or garbage: any unpickling failure
        raise CheckpointError(f"{where}: unreadable ({type(exc).__name__}: {_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class SafeReader(FileSystemReader):
    """torch DCP's FileSystemReader whose ``.metadata`` goes through the allow-list."""

    def read_metadata(self, *args, **kwargs):
        from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

        path = self._get_metadata_path(kwargs.get("rank"))
        try:
            with self.fs.create_stream(path, "rb") as f:
                metadata = _unpickle(_MetadataUnpickler, f, str(path))
        except FileNotFoundError:
            raise CheckpointError(f"{path} missing: not a complete dist checkpoint") from None
        if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict) \
                or not isinstance(metadata.storage_data, dict):
            raise CheckpointError(f"{path}: not torch DCP metadata")
        _check_storage(metadata, Path(self.path), path)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _check_storage(metadata, ckpt_dir: Path, where) -> None:
    """Every item's file is a plain name inside the checkpoint, exists, and is long enough."""
    ends: dict[str, int] = {}
    for info in metadata.storage_data.values():
        name = getattr(info, "relative_path", None)
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            raise CheckpointError(f"{where}: names a data file outside the checkpoint ({name!r})")
        ends[name] = max(ends.get(name, 0), int(info.offset) + int(info.length))
    for name, end in sorted(ends.items()):
        path = ckpt_dir / name
        if not path.is_file():
            raise CheckpointError(f"{path} missing: the checkpoint is incomplete")
        if path.stat().st_size < end:
            raise CheckpointError(f"{path} is truncated ({path.stat().st_size} bytes, its items need {end})")


class CachedSafeReader(SafeReader):
    """SafeReader that reads ``.metadata`` once (Megatron asks for it again after loading)."""

    def __init__(self, path):
        super().__init__(path)
        self._cached = None

    def read_metadata(self, *args, **kwargs):
        if self._cached is None:
            self._cached = super().read_metadata(*args, **kwargs)
        return self._cached


def read_metadata(ckpt_dir: str | Path):
    """The torch DCP metadata of a dist checkpoint, read through the allow-list."""
    return SafeReader(str(ckpt_dir)).read_metadata()


def _weights_only_load(source, where: str):
    """torch.load with weights_only=True; a refused global is an UnsafeCheckpointError naming it."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"asks to import {found.group(1)}" if found else "holds objects other than tensors and plain data"
        raise UnsafeCheckpointError(f"unsafe checkpoint: {where} {what} when loaded; refusing") from None
    except Exception as exc:  # noqa: BLE001 - truncated or not a torch file
        raise CheckpointError(f"{where}: unreadable ({type(exc).__name__}: {_first_line(exc)[:200]})") from None


def load_bytes_safely(value: io.BytesIO, where: str):
    """A byte item of a ``.distcp`` file: tensors and plain containers only (weights_only)."""
    return _weights_only_load(value, f"byte item {where}")


class SafeBytesPlanner:
    """Mixin for a torch DCP load planner: byte items loaded with ``weights_only=True``."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        loaded = load_bytes_safely(value, read_item.dest_index.fqn)
        if getattr(self, "flatten_state_dict", False):
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


class SafeLoadPlanner(SafeBytesPlanner, DefaultLoadPlanner):
    """torch DCP's default load planner, byte items loaded safely."""


# ---------------------------------------------------------------- Megatron's load, made safe


def _megatron_strategies():
    """Megatron's torch_dist load strategy and common-state strategy, reading through the above."""
    from megatron.core.dist_checkpointing.strategies import torch as mcore_torch
    from megatron.core.dist_checkpointing.strategies.common import TorchCommonLoadStrategy
    from megatron.core.dist_checkpointing.strategies.torch import MCoreLoadPlanner, TorchDistLoadShardedStrategy

    class SafeMCorePlanner(SafeBytesPlanner, MCoreLoadPlanner):
        pass

    @contextlib.contextmanager
    def reading_safely() -> Iterator[None]:
        # TorchDistLoadShardedStrategy builds its reader and planner from these module globals.
        saved = mcore_torch._get_filesystem_reader, mcore_torch.MCoreLoadPlanner
        mcore_torch._get_filesystem_reader = lambda path, cache_metadata=False: (
            CachedSafeReader if cache_metadata else SafeReader)(path)
        mcore_torch.MCoreLoadPlanner = SafeMCorePlanner
        try:
            yield
        finally:
            mcore_torch._get_filesystem_reader, mcore_torch.MCoreLoadPlanner = saved

    class SafeShardedStrategy(TorchDistLoadShardedStrategy):
        def load(self, sharded_state_dict, checkpoint_dir):
            with reading_safely():
                return super().load(sharded_state_dict, checkpoint_dir)

        def load_tensors_metadata(self, checkpoint_dir, metadata=None):
            return super().load_tensors_metadata(checkpoint_dir, metadata or read_metadata(checkpoint_dir))

        def load_sharded_metadata(self, checkpoint_dir):
            with reading_safely():
                return super().load_sharded_metadata(checkpoint_dir)

    class SafeCommonStrategy(TorchCommonLoadStrategy):
        def load_common(self, checkpoint_dir):
            path = Path(checkpoint_dir) / "common.pt"
            if not path.is_file():
                raise CheckpointError(f"{path} missing: not a complete dist checkpoint")
            return _weights_only_load(path, str(path))

        def load_sharded_objects(self, sharded_objects_state_dict, checkpoint_dir):
            raise UnsafeCheckpointError(f"unsafe checkpoint: {checkpoint_dir} stores objects as separate pickles; "
                                        "refusing (this project's checkpoints keep them in the .distcp files)")

    return SafeShardedStrategy(), SafeCommonStrategy()


def load(sharded_state_dict: dict, ckpt_dir: str | Path) -> dict:
    """``megatron.core.dist_checkpointing.load`` without unpickling anything but data (module doc).

    Raises UnsafeCheckpointError for a file that asks for code, CheckpointError (one line)
    for a checkpoint that is missing files, truncated, or does not fit the state dict.
    """
    from megatron.core import dist_checkpointing

    ckpt_dir = Path(ckpt_dir)
    read_metadata(ckpt_dir)  # refuse a bad index before Megatron reads anything else
    sharded, common = _megatron_strategies()
    try:
        state = dist_checkpointing.load(sharded_state_dict, str(ckpt_dir), sharded_strategy=sharded, common_strategy=common)
    except (Exception, CheckpointException) as exc:  # noqa: BLE001 - one line for every failure
        raise as_checkpoint_error(exc, ckpt_dir) from None
    check_te_extra_state(state, ckpt_dir)
    return state


def as_checkpoint_error(exc: BaseException, ckpt_dir) -> CheckpointError:
    """The CheckpointError behind a failed load (torch DCP wraps each rank's), else a one-line one."""
    return _our_error(exc) or CheckpointError(f"cannot load {ckpt_dir}: {_describe(exc)}")


def _our_error(exc: BaseException) -> BaseException | None:
    """A CheckpointError inside a (DCP-wrapped) exception, if any."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen or e is None:
            continue
        seen.add(id(e))
        if isinstance(e, CheckpointError):
            return e
        stack += [e.__cause__, e.__context__]
        failures = getattr(e, "failures", None)  # torch DCP's CheckpointException: rank -> exception
        if isinstance(failures, dict):
            stack += [v[0] if isinstance(v, tuple) else v for v in failures.values()]
        stack += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
    return None


def _describe(exc: BaseException) -> str:
    """One line for a failed load: the first rank's error inside torch DCP's wrapper, and of a long
    report (Megatron's key/shape mismatch) its first line."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))
        return _describe(inner[0] if isinstance(inner, tuple) else inner)
    return f"{type(exc).__name__}: {_first_line(exc)[:300]}"


# ---------------------------------------------------------------- Transformer Engine extra state

# TE's get_extra_state pickles {recipe, scale/amax tensors, extra variables}; set_extra_state
# unpickles it with pickle.loads. Allowed: TE's recipe module (dataclasses, enums, named tuples)
# and what a plain pickle of a tensor names; its storage bytes are loaded with weights_only.
_TE_GLOBALS = {
    "torch._utils": {"_rebuild_tensor_v2", "_rebuild_tensor", "_rebuild_parameter"},
    "collections": {"OrderedDict"},
    "torch": {"Size", "device"},
}


def _weights_only_storage(data: bytes):
    return _weights_only_load(io.BytesIO(data), "a tensor storage in TE extra state")


class _ExtraStateUnpickler(_AllowListUnpickler):
    allowed = _TE_GLOBALS

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _weights_only_storage
        if module == "transformer_engine.common.recipe" and not name.startswith("__"):
            return super(_AllowListUnpickler, self).find_class(module, name)
        return super().find_class(module, name)

    def refuse(self, module: str, name: str):
        raise UnsafeCheckpointError(f"unsafe checkpoint: {self.where} asks to import {module}.{name} when "
                                    "loaded; refusing (only Transformer Engine recipe classes and tensors are allowed)")


def check_te_extra_state(state, ckpt_dir: Path, key: str = "") -> None:
    """Refuse a Transformer Engine ``_extra_state`` whose pickle names anything beyond the allow-list.

    Walks the loaded state dict; values under ``*_extra_state`` keys that are non-empty byte
    tensors (TE's format) or BytesIO (TE's older format) are unpickled here first, restricted.
    """
    if isinstance(state, dict):
        for k, v in state.items():
            check_te_extra_state(v, ckpt_dir, f"{key}.{k}" if key else str(k))
        return
    if isinstance(state, (list, tuple)):
        for v in state:
            check_te_extra_state(v, ckpt_dir, key)
        return
    if not key.endswith("_extra_state"):
        return
    where = f"{ckpt_dir} ({key})"
    if isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.numel():
        _unpickle(_ExtraStateUnpickler, io.BytesIO(state.detach().cpu().numpy().tobytes()), where)
    elif isinstance(state, io.BytesIO):
        state.seek(0)
        load_bytes_safely(io.BytesIO(state.getvalue()), where)
