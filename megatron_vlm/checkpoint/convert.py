"""Convert checkpoints of a model family (Qwen2.5-VL, Qwen3-VL) between HF directories and Megatron
dist checkpoints, streaming. The family comes from config.json's ``model_type`` (or the trainer
recipe's ``model.kind``); its provider (training/providers.py) names its model class and name map.

    hf_to_mcore(hf_dir, output)      HF safetensors -> Megatron dist checkpoint (layout-free)
    mcore_to_hf(mcore_dir, output)   Megatron dist checkpoint (ours or the trainer's) -> HF directory

How memory stays near one copy of the weights: our model is built on the meta device only to
get its ``sharded_state_dict()`` (exact keys, TP axes and the fused-GLU factories Megatron uses),
and the name map (hf_names) is fed lazy mappings. Importing reads HF tensors one at a time;
exporting loads one layer's tensors at a time from the dist checkpoint and writes safetensors
shard by shard.

A Megatron dist checkpoint stores global tensors, so one written here loads at any TP/PP/CP; the
``tp``/``pp`` given at import are checked against the model's shape and recorded as the
suggested layout. A converted checkpoint carries ``hf/`` (the source config.json, tokenizer,
chat template, preprocessor and generation config) so the export can rebuild a complete HF
directory without the source. Outputs appear atomically (hf_io.atomic_output_dir); an output that
is, contains or lies inside an input is refused, so --overwrite never removes an input. Dist
checkpoints are read through checkpoint.safe_load (no pickle runs code).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

from megatron_vlm.checkpoint import hf_names, safe_load
from megatron_vlm.checkpoint.hf_io import (
    ConversionError,
    HFReader,
    ShardedSafetensorsWriter,
    atomic_output_dir,
    check_tensor_sets,
    copy_processor_files,
    read_config,
    tensor_shapes,
)

HF_SUBDIR = "hf"
CONVERSION_META = "conversion.json"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_LAYER = re.compile(r"^(.*?\.layers\.\d+)\.")


# ---------------------------------------------------------------- process group and model


def _ensure_single_process_group() -> None:
    """Megatron's checkpointing needs torch.distributed; start a 1-rank gloo group if none."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_vlm.parallel import ParallelLayout, initialize

    if dist.is_initialized() and parallel_state.model_parallel_is_initialized():
        return
    if not dist.is_initialized():
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        if "MASTER_PORT" not in os.environ:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    initialize(ParallelLayout())


def _provider(family: str):
    """The family's provider: its ``model_class()`` and ``name_map()`` (the one registry of both)."""
    from megatron_vlm.training.providers import PROVIDERS

    return PROVIDERS[family]


def _meta_sharded_state_dict(cfg, family: str, spec: str = "local") -> dict:
    """The model's sharded state dict at the current layout, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = _provider(family).model_class()(cfg, spec=spec)
    return model.sharded_state_dict()


def _tensor_entries(sharded: dict) -> dict:
    """name -> ShardedTensor / ShardedTensorFactory (objects such as _extra_state dropped)."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    return {k: v for k, v in sharded.items() if isinstance(v, (ShardedTensor, ShardedTensorFactory))}


# ---------------------------------------------------------------- configs


def check_layout(cfg, tp: int, pp: int) -> None:
    """Refuse a TP/PP layout the model's shape cannot be split into."""
    t, v = cfg.text, cfg.vision
    problems = []
    for what, n in (("attention heads", t.num_attention_heads), ("KV heads", t.num_key_value_heads),
                    ("vision heads", v.num_heads)):
        if n % tp:
            problems.append(f"{what} ({n}) not divisible by tp={tp}")
    if t.num_hidden_layers < pp:
        problems.append(f"{t.num_hidden_layers} layers cannot fill pp={pp} stages")
    if problems:
        raise ConversionError("layout does not fit the model: " + "; ".join(problems))


def _qwen_config_from_hf(config: dict, where: str):
    """(family name, model config) of an HF config.json dict; ConversionError naming what is wrong."""
    from megatron_vlm.models.family import FAMILIES, family_of_hf_config

    try:
        family = family_of_hf_config(config)
    except ValueError:
        raise ConversionError(f"{where}: model_type is {config.get('model_type')!r}, expected one of "
                              f"{', '.join(repr(f) for f in FAMILIES)}") from None
    try:
        return family.name, family.from_hf_config(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConversionError(f"{where}: config.json does not describe a {family.name} model ({exc})") from None


def _recipe_and_config(recipe_path: Path):
    """A trainer checkpoint's recipe, loaded as the trainer loads it, and the model config the
    trainer built from it (the provider's ``model_config``: one function for both)."""
    from megatron_vlm.models.family import FAMILIES
    from megatron_vlm.training.config import RecipeError, load_recipe
    from megatron_vlm.training.providers import get_provider

    try:
        recipe = load_recipe(recipe_path)
        if recipe.model.kind not in FAMILIES:
            raise ConversionError(f"{recipe_path}: model.kind={recipe.model.kind!r} is not a model family "
                                  f"({', '.join(FAMILIES)})")
        return recipe, get_provider(recipe).model_config(recipe)
    except RecipeError as exc:
        raise ConversionError(f"{recipe_path}: {exc}") from None


def _resolve_mcore(path: Path) -> Path:
    """A checkpoint directory: given directly, or a run directory with a ``latest`` pointer."""
    if (path / "metadata.json").is_file():
        return path
    pointer = path / "latest"
    if pointer.is_file():
        target = path / pointer.read_text().strip()
        if (target / "metadata.json").is_file():
            return target
    raise ConversionError(f"{path}: not a Megatron dist checkpoint (no metadata.json, no complete 'latest')")


def refuse_overlap(output: Path, inputs: list[Path]) -> None:
    """Refuse (before anything is read or written) an output that is, contains or lies inside an
    input: with --overwrite it would be removed first."""
    from megatron_vlm.utils.atomic import refuse_inputs

    try:
        refuse_inputs(output, inputs)
    except ValueError as exc:
        raise ConversionError(str(exc)) from None


# ---------------------------------------------------------------- lazy mappings for the name map


class _LazyHF(Mapping):
    """HF tensors read on access (one at a time), cast to ``dtype`` when given."""

    def __init__(self, reader: HFReader, dtype: torch.dtype | None):
        self.reader, self.dtype = reader, dtype

    def __getitem__(self, name: str) -> torch.Tensor:
        t = self.reader.get(name)
        return t.to(self.dtype) if self.dtype is not None else t

    def __iter__(self) -> Iterator[str]:
        return iter(self.reader.names())

    def __len__(self) -> int:
        return len(self.reader.names())

    def __contains__(self, name) -> bool:
        return name in self.reader.weight_map


class _LazyMcore(Mapping):
    """Megatron tensors (full, TP=1 names) loaded from a dist checkpoint one layer at a time."""

    def __init__(self, ckpt_dir: Path, entries: dict, dtype: torch.dtype | None, progress: Callable[[str], None]):
        self.dir, self.entries, self.dtype, self.progress = ckpt_dir, entries, dtype, progress
        self._group_key: str | None = None
        self._group: dict[str, torch.Tensor] = {}
        self.loaded = 0
        self._stored_dtypes = _stored_dtypes(ckpt_dir)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.entries:
            raise KeyError(name)
        group = _group_of(name)
        if group != self._group_key:
            names = [n for n in self.entries if _group_of(n) == group]
            self._group = self._load(names)
            self._group_key = group
        return self._group[name]

    def _load(self, names: list[str]) -> dict[str, torch.Tensor]:
        out, regions = {}, []
        for name in names:
            entry = self.entries[name]
            dest = torch.empty(entry.data.shape, dtype=self._stored_dtypes.get(entry.key, entry.data.dtype))
            regions.extend(_regions_of(entry, dest))
            out[name] = dest
        read_regions(self.dir, regions)
        self.loaded += len(names)
        self.progress(f"loaded {self.loaded}/{len(self.entries)} tensors")
        if self.dtype is not None:
            out = {k: v.to(self.dtype) for k, v in out.items()}
        return out

    def __iter__(self):
        return iter(self.entries)

    def __len__(self):
        return len(self.entries)



def _regions_of(entry, dest: torch.Tensor) -> list[tuple[str, tuple[int, ...], torch.Tensor]]:
    """(key, global offsets, destination view) for each stored chunk behind one model tensor.

    A ShardedTensor is one region (its prepended layer axes have size 1); a factory (the fused GLU
    fc1) is built on ``dest`` so its parts are views into it.
    """
    regions = []
    for part in _parts(entry, dest):
        data = dest if part is entry else part.data
        view = data.view((1,) * part.prepend_axis_num + tuple(data.shape))
        regions.append((part.key, tuple(part.global_offset), view))
    return regions


def _parts(entry, dest: torch.Tensor | None = None) -> list:
    """The ShardedTensors behind a model tensor: itself, or what its factory builds on ``dest``."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    if isinstance(entry, ShardedTensor):
        return [entry]
    data = dest if dest is not None else torch.empty(entry.data.shape, device="meta")
    return list(nested_values(_with_data(entry, data).build()))


def read_regions(ckpt_dir: Path, regions: list[tuple[str, tuple[int, ...], torch.Tensor]]) -> None:
    """Fill each destination tensor with the region of a stored tensor at the given global offsets.

    Reads only the bytes of those regions (torch.distributed.checkpoint with a planner that asks
    for exactly these chunks), without a process group.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorStorageMetadata
    from torch.distributed.checkpoint.planner import LoadPlan
    from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

    by_chunk = {(key, tuple(offsets)): dest for key, offsets, dest in regions}

    class RegionPlanner(safe_load.SafeLoadPlanner):
        def create_local_plan(self) -> LoadPlan:
            items = []
            for (key, offsets), dest in by_chunk.items():
                md = self.metadata.state_dict_metadata.get(key)
                if not isinstance(md, TensorStorageMetadata):
                    raise ConversionError(f"{ckpt_dir}: checkpoint has no tensor {key}")
                chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=dest.shape)
                items += create_read_items_for_chunk_list(key, md, [chunk])
            return LoadPlan(items)

        def resolve_tensor(self, read_item):
            dest = by_chunk[(read_item.dest_index.fqn, tuple(read_item.dest_index.offset))]
            for dim, (start, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
                dest = dest.narrow(dim, start, length)
            return dest

    state = {key: dest for (key, _), dest in by_chunk.items()}  # keys only matter for set-up
    try:
        dcp.load(state, storage_reader=safe_load.SafeReader(str(ckpt_dir)), planner=RegionPlanner(), no_dist=True)
    except Exception as exc:  # noqa: BLE001 - DCP wraps errors; one line for the CLI
        raise safe_load.as_checkpoint_error(exc, ckpt_dir) from None


def _group_of(name: str) -> str:
    """Tensors of one transformer layer load together; every other tensor alone."""
    m = _LAYER.match(name)
    return m.group(1) if m else name


def _with_data(entry, data: torch.Tensor):
    import copy

    new = copy.copy(entry)
    new.data = data
    return new


def _stored_dtypes(ckpt_dir: Path) -> dict[str, torch.dtype]:
    """Dtype of each stored tensor key, from the checkpoint's metadata."""
    meta = safe_load.read_metadata(ckpt_dir)
    return {
        key: value.properties.dtype
        for key, value in meta.state_dict_metadata.items()
        if getattr(value, "properties", None) is not None and getattr(value.properties, "dtype", None) is not None
    }


def _check_stored_shapes(ckpt: Path, entries: dict, described_by: str) -> None:
    """Refuse before writing when the checkpoint lacks a tensor the model needs or stores another shape."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    stored = {k: tuple(v.size) for k, v in safe_load.read_metadata(ckpt).state_dict_metadata.items()
              if isinstance(v, TensorStorageMetadata)}
    wanted = {part.key: part.global_shape for entry in entries.values() for part in _parts(entry)}
    missing = sorted(wanted.keys() - stored.keys())
    if missing:
        raise ConversionError(f"{ckpt}: checkpoint lacks tensors the model needs: {', '.join(missing[:5])}"
                              + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
    for key in sorted(wanted):
        if tuple(wanted[key]) != stored[key]:
            raise ConversionError(f"{ckpt}: tensor {key} has shape {stored[key]} but {described_by} "
                                  f"expects {tuple(wanted[key])}")


def _expected_hf_shapes(entries: dict, cfg, names, layout: str) -> dict[str, tuple[int, ...]]:
    """HF names and shapes our model implies, from meta tensors through the family's name map ``names``."""
    meta = {name: torch.empty(entry.data.shape, device="meta") for name, entry in entries.items()}
    return {n: tuple(t.shape) for n, t in names.mcore_to_hf(meta, cfg, "local", layout).items()}


# ---------------------------------------------------------------- the two directions


def hf_to_mcore(
    hf_dir: str | Path,
    output: str | Path,
    tp: int = 1,
    pp: int = 1,
    dtype: str | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] = print,
) -> dict:
    """HF directory -> Megatron dist checkpoint. Refuses (ConversionError) before writing anything."""
    from megatron.core import dist_checkpointing

    hf_dir, output = Path(hf_dir), Path(output)
    refuse_overlap(output, [hf_dir])
    config = read_config(hf_dir)
    family, cfg = _qwen_config_from_hf(config, str(hf_dir))
    names = _provider(family).name_map()
    check_layout(cfg, tp, pp)
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    reader = HFReader(hf_dir)
    layout = hf_names.detect_layout(reader.names())
    if layout not in names.LAYOUTS:
        raise ConversionError(f"{hf_dir}: tensor names in the {layout!r} layout, which {family} never had")
    _ensure_single_process_group()
    sharded = _meta_sharded_state_dict(cfg, family)
    entries = _tensor_entries(sharded)
    expected = _expected_hf_shapes(entries, cfg, names, layout)
    found = tensor_shapes(hf_dir)
    if cfg.text.tie_word_embeddings and "lm_head.weight" not in found:
        expected.pop("lm_head.weight", None)
    check_tensor_sets(expected, found, str(hf_dir))

    progress(f"[hf-to-mcore] {hf_dir} ({len(found)} tensors, naming layout '{layout}') -> {output}")
    with atomic_output_dir(output, overwrite=overwrite) as scratch:
        full = names.hf_to_mcore(_LazyHF(reader, DTYPES.get(dtype)), cfg, "local")
        for name, entry in entries.items():
            tensor = full.pop(name)
            if tuple(tensor.shape) != tuple(entry.data.shape):
                raise ConversionError(f"{name}: mapped shape {tuple(tensor.shape)} != model {tuple(entry.data.shape)}")
            sharded[name] = _with_data(entry, tensor)
        if full:
            raise ConversionError(f"name map produced tensors the model has no place for: {sorted(full)[:5]}")
        progress(f"[hf-to-mcore] writing dist checkpoint ({len(entries)} tensors)")
        dist_checkpointing.save(sharded, str(scratch))
        (scratch / HF_SUBDIR).mkdir()
        (scratch / HF_SUBDIR / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        carried = copy_processor_files(hf_dir, scratch / HF_SUBDIR)
        meta = {"source": str(hf_dir.resolve()), "hf_layout": layout, "suggested_layout": {"tp": tp, "pp": pp},
                "dtype": dtype or "as stored", "tensors": len(entries), "processor_files": carried}
        (scratch / CONVERSION_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    progress(f"[hf-to-mcore] wrote {output} (loadable at any TP/PP/CP; suggested tp={tp} pp={pp})")
    return meta


def _export_config(cfg, family: str, template: dict | None, max_positions: int | None, dtype) -> dict:
    """config.json for an export: our model fields (the family's ``to_hf_config``: Qwen2.5-VL's flat
    layout, read by every transformers version; Qwen3-VL's text_config/vision_config) over the
    template's other fields (architectures, token ids, ...). The template's nested text/vision/rope
    sections are dropped so no stale rope_theta can contradict the trained one."""
    from megatron_vlm.models.family import get_family

    nested = ("text_config", "vision_config", "rope_parameters", "rope_scaling")
    config = {k: v for k, v in (template or {}).items() if k not in nested}
    config.update(get_family(family).module("config").to_hf_config(cfg))
    if max_positions is not None:
        section = config.get("text_config", config)  # where the family keeps the text model's fields
        section["max_position_embeddings"] = max(int(section.get("max_position_embeddings", 0)), int(max_positions))
    # transformers 5 reads "dtype", older versions "torch_dtype": write both, so no stale one wins.
    config["dtype"] = config["torch_dtype"] = str(dtype).replace("torch.", "")
    return config


def mcore_to_hf(
    mcore_dir: str | Path,
    output: str | Path,
    hf_template: str | Path | None = None,
    layout: str = "new",
    dtype: str | None = None,
    max_shard_gb: float = 2.0,
    overwrite: bool = False,
    progress: Callable[[str], None] = print,
) -> dict:
    """Megatron dist checkpoint (a converted one, or the trainer's run/iteration dir) -> HF directory."""
    ckpt = _resolve_mcore(Path(mcore_dir))
    output = Path(output)
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    template_dir = Path(hf_template) if hf_template else ckpt / HF_SUBDIR
    template = read_config(template_dir) if (template_dir / "config.json").is_file() else None
    if hf_template and template is None:
        raise ConversionError(f"--hf-template {hf_template}: no config.json there")
    refuse_overlap(output, [Path(mcore_dir), ckpt] + ([template_dir] if hf_template else []))
    recipe = ckpt / "recipe.yaml"
    max_positions = None
    if recipe.is_file():
        loaded, cfg = _recipe_and_config(recipe)
        family = loaded.model.kind
        max_positions = loaded.data.max_seq_length
        if template is None:
            tok = Path(loaded.data.tokenizer)
            template_dir = tok if loaded.data.tokenizer and tok.is_dir() else template_dir
            refuse_overlap(output, [template_dir])
    elif template is not None:
        family, cfg = _qwen_config_from_hf(template, str(template_dir))
    else:
        raise ConversionError(f"{ckpt}: no recipe.yaml or hf/config.json to describe the model; pass --hf-template")
    names = _provider(family).name_map()
    if layout not in names.LAYOUTS:
        raise ConversionError(f"unknown HF naming layout {layout!r} for {family}; use one of {', '.join(names.LAYOUTS)}")

    _ensure_single_process_group()
    entries = _tensor_entries(_meta_sharded_state_dict(cfg, family))
    _check_stored_shapes(ckpt, entries, "the model described by " + ("recipe.yaml" if recipe.is_file() else str(template_dir)))
    progress(f"[mcore-to-hf] {ckpt} -> {output} (naming layout '{layout}')")
    with atomic_output_dir(output, overwrite=overwrite) as scratch:
        lazy = _LazyMcore(ckpt, entries, DTYPES.get(dtype), lambda msg: progress(f"[mcore-to-hf] {msg}"))
        hf_state = names.mcore_to_hf(lazy, cfg, "local", layout)
        if cfg.text.tie_word_embeddings:
            hf_state.pop("lm_head.weight", None)  # tied: HF stores the embedding only
        out_dtype = next(iter(hf_state.values())).dtype
        writer = ShardedSafetensorsWriter(scratch, max_shard_bytes=int(max_shard_gb * 1024**3))
        for name in sorted(hf_state):
            writer.add(name, hf_state.pop(name))
        writer.close()
        config = _export_config(cfg, family, template, max_positions, out_dtype)
        (scratch / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        carried = copy_processor_files(template_dir, scratch) if template_dir.is_dir() else []
    progress(f"[mcore-to-hf] wrote {output}: {writer.total_bytes / 1e9:.2f} GB, processor files: {', '.join(carried) or 'none'}")
    return {"bytes": writer.total_bytes, "processor_files": carried}
