"""Streaming reads and writes of HF checkpoint directories, and atomic output directories.

An HF directory holds config.json, weights as one `model.safetensors` or several shards with
`model.safetensors.index.json`, and the files a processor needs (tokenizer, chat template,
preprocessor and generation configs). Everything here touches one tensor (reading) or one
shard (writing) at a time, so conversion never holds a second copy of the model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from megatron_vlm.utils import atomic

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# Files carried unchanged from a source HF directory to an export (those that exist).
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "processor_config.json",
    "generation_config.json",
)


class ConversionError(ValueError):
    """A refusal: the inputs do not fit together. The message is one line and names the culprits."""


def _names_preview(names, limit: int = 5) -> str:
    names = sorted(names)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def read_config(hf_dir: str | Path) -> dict:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{hf_dir}: no config.json (is this an HF model directory?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


@contextlib.contextmanager
def open_safetensors(path: Path) -> Iterator:
    """safetensors' ``safe_open`` whose failures (a truncated or garbled file) are one-line ConversionErrors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            yield f
    except (SafetensorError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"{path}: not a complete safetensors file ({reason})") from None


def weight_map(hf_dir: str | Path) -> dict[str, str]:
    """Tensor name -> safetensors file name, from the index or the single weights file."""
    from megatron_vlm.utils.paths import safe_name

    hf_dir = Path(hf_dir)
    index = hf_dir / INDEX_NAME
    if index.is_file():
        try:
            mapping = json.loads(index.read_text())["weight_map"]
            for fname in set(mapping.values()):
                safe_name(fname, "shard file")  # a file beside the index, never a path out of the directory
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConversionError(f"{index}: not a safetensors index ({exc})") from None
        missing = sorted({f for f in mapping.values() if not (hf_dir / f).is_file()})
        if missing:
            raise ConversionError(f"{hf_dir}: index names shard files that are missing: {_names_preview(missing)}")
        return dict(mapping)
    single = hf_dir / SINGLE_NAME
    if single.is_file():
        with open_safetensors(single) as f:
            return {name: SINGLE_NAME for name in f.keys()}
    raise ConversionError(f"{hf_dir}: no {INDEX_NAME} or {SINGLE_NAME}")


def tensor_shapes(hf_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from the safetensors headers only (no tensor data)."""
    hf_dir = Path(hf_dir)
    by_file: dict[str, list[str]] = {}
    for name, fname in weight_map(hf_dir).items():
        by_file.setdefault(fname, []).append(name)
    shapes = {}
    for fname, names in by_file.items():
        with open_safetensors(hf_dir / fname) as f:
            for name in names:
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


class HFReader:
    """Random access to an HF directory's tensors, one at a time.

    Each read opens its file, copies the tensor out and closes it again: safetensors reads through
    mmap, and pages of a file kept open stay mapped (and count as resident memory) for as long as
    it is open, which would add a second copy of the checkpoint to a conversion's footprint.
    """

    def __init__(self, hf_dir: str | Path):
        self.dir = Path(hf_dir)
        self.weight_map = weight_map(self.dir)

    def names(self) -> list[str]:
        return sorted(self.weight_map)

    def get(self, name: str) -> torch.Tensor:
        try:
            fname = self.weight_map[name]
        except KeyError:
            raise ConversionError(f"{self.dir}: missing tensor {name}") from None
        with open_safetensors(self.dir / fname) as f:
            return f.get_tensor(name)

    def iter_by_file(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every tensor, file by file (each file opened once)."""
        by_file: dict[str, list[str]] = {}
        for name, fname in self.weight_map.items():
            by_file.setdefault(fname, []).append(name)
        for fname in sorted(by_file):
            with open_safetensors(self.dir / fname) as f:
                for name in sorted(by_file[fname]):
                    yield name, f.get_tensor(name)


class ShardedSafetensorsWriter:
    """Writes tensors into `model-XXXXX-of-YYYYY.safetensors` shards of at most ``max_shard_bytes``.

    ``add`` buffers tensors until the shard is full, then writes it; ``close`` writes the last
    shard, renames the shards to their final `-of-YYYYY` names and writes the index. Peak memory
    is one shard's worth of tensors.
    """

    def __init__(self, out_dir: str | Path, max_shard_bytes: int = 2 * 1024**3, metadata: dict | None = None):
        self.dir = Path(out_dir)
        self.max_shard_bytes = max_shard_bytes
        self.metadata = {"format": "pt", **(metadata or {})}
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_bytes = 0
        self._files: list[tuple[str, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._buffer or any(name in names for _, names in self._files):
            raise ConversionError(f"tensor {name} written twice")
        nbytes = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffer_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self._buffer[name] = tensor.contiguous()
        self._buffer_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        from safetensors.torch import save_file

        tmp_name = f"shard-{len(self._files) + 1:05d}.safetensors.partial"
        save_file(self._buffer, str(self.dir / tmp_name), metadata=self.metadata)
        self._files.append((tmp_name, sorted(self._buffer)))
        self._buffer, self._buffer_bytes = {}, 0

    def close(self) -> dict[str, str]:
        """Finish writing; returns the weight map (tensor name -> file)."""
        if self._buffer:
            self._flush()
        total = len(self._files)
        mapping = {}
        for i, (tmp_name, names) in enumerate(self._files, start=1):
            final = SINGLE_NAME if total == 1 else f"model-{i:05d}-of-{total:05d}.safetensors"
            os.replace(self.dir / tmp_name, self.dir / final)
            mapping.update({name: final for name in names})
        if total > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(mapping.items()))}
            (self.dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return mapping


def copy_processor_files(src_dir: str | Path, dst_dir: str | Path) -> list[str]:
    """Copy the tokenizer / chat template / preprocessor / generation files that exist in src."""
    copied = []
    for name in PROCESSOR_FILES:
        src = Path(src_dir) / name
        if src.is_file():
            shutil.copy2(src, Path(dst_dir) / name)
            copied.append(name)
    return copied


@contextlib.contextmanager
def atomic_output_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a scratch directory beside ``path``; on success it is renamed to ``path``.

    On any error (or a kill) the final path never appears: what is left is a hidden
    ``.<name>.tmp.*`` directory (utils.atomic), removed here on errors. Refuses an existing non-empty
    ``path`` unless ``overwrite``.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise ConversionError(f"{path} already exists and is not empty (pass --overwrite to replace it)")
    with atomic.atomic_dir(path, replace=True) as scratch:
        yield scratch


def check_tensor_sets(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], where: str
) -> None:
    """Refuse (one line, names given) when tensors are missing, unexpected or of the wrong shape."""
    missing = expected.keys() - found.keys()
    if missing:
        raise ConversionError(f"{where}: missing tensors: {_names_preview(missing)}")
    unexpected = found.keys() - expected.keys()
    if unexpected:
        raise ConversionError(f"{where}: unexpected tensors: {_names_preview(unexpected)}")
    wrong = [f"{n} {tuple(found[n])} != expected {tuple(expected[n])}" for n in sorted(expected) if tuple(found[n]) != tuple(expected[n])]
    if wrong:
        more = f" (+{len(wrong) - 3} more)" if len(wrong) > 3 else ""
        raise ConversionError(f"{where}: shape mismatch: {'; '.join(wrong[:3])}{more}")
