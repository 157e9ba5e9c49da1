"""Move weights between one full (unsharded) Megatron state dict and this rank's model shard.

    load_full_state_dict(model, full)        # full: hf_names.hf_to_mcore(hf_state, cfg)
    local_to_full(model, tensors)            # e.g. gradients of this rank -> full names, TP-gathered

Full names use global layer numbers; a pipeline stage's ``decoder.layers.{i}`` is mapped through
each layer's ``layer_number``. Tensor-parallel shards follow the parameters' own
``tensor_model_parallel`` / ``partition_dim`` attributes, except the gated MLP's ``linear_fc1``
([gate; up]), whose gate and up halves are split separately (Megatron's layout per rank).
"""

from __future__ import annotations

import re

import torch
import torch.distributed as dist
from megatron.core import parallel_state

_LAYER = re.compile(r"^(language_model\.decoder\.layers\.)(\d+)(\..*)$")


def _tp() -> tuple[int, int]:
    if not parallel_state.model_parallel_is_initialized():
        return 0, 1
    return parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_tensor_model_parallel_world_size()


def full_name(model, local_name: str) -> str:
    """The full-state-dict name of a local parameter name (global LLM layer index; tied output)."""
    m = _LAYER.match(local_name)
    if m:
        layer = model.language_model.decoder.layers[int(m.group(2))]
        return f"{m.group(1)}{layer.layer_number - 1}{m.group(3)}"
    if local_name == "language_model.output_layer.weight" and model.share_embeddings_and_output_weights:
        return "language_model.embedding.word_embeddings.weight"  # the last stage's copy of the tied weight
    return local_name


def _is_gated_fc1(model, name: str) -> bool:
    """Whether local parameter ``name`` is a gated MLP's fc1 ([gate; up]): asks the MLP's config
    (Qwen2.5-VL's ViT blocks are gated, Qwen3-VL's are not, no merger is)."""
    if not name.endswith(("mlp.linear_fc1.weight", "mlp.linear_fc1.bias")):
        return False
    return bool(model.get_submodule(name.rsplit(".", 2)[0]).config.gated_linear_unit)


def shard(name: str, full: torch.Tensor, param: torch.Tensor, gated: bool = False) -> torch.Tensor:
    """This TP rank's piece of ``full`` for ``param`` (named ``name``; ``gated``: a gated MLP's fc1)."""
    rank, size = _tp()
    if size == 1 or not getattr(param, "tensor_model_parallel", False):
        return full
    dim = param.partition_dim
    if gated:
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(size, dim)[rank], up.chunk(size, dim)[rank]], dim=0)
    return full.chunk(size, dim)[rank]


@torch.no_grad()
def load_full_state_dict(model, full: dict[str, torch.Tensor]) -> None:
    """Copy this rank's shard of every parameter from ``full``; raises on a missing name or bad shape."""
    for name, param in model.named_parameters():
        key = full_name(model, name)
        if key not in full:
            raise KeyError(f"full state dict has no {key!r} (for local parameter {name!r})")
        piece = shard(name, full[key], param, _is_gated_fc1(model, name))
        if piece.shape != param.shape:
            raise ValueError(f"{name}: shard shape {tuple(piece.shape)} != parameter shape {tuple(param.shape)}")
        param.copy_(piece.to(param.dtype))


def local_to_full(model, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gather per-parameter tensors (local names, e.g. grads) over TP into full names.

    Collective over the TP group: every TP rank must call it with the same names.
    """
    rank, size = _tp()
    params = dict(model.named_parameters())
    out = {}
    for name, local in tensors.items():
        param = params[name]
        key = full_name(model, name)
        if size == 1 or not getattr(param, "tensor_model_parallel", False):
            out[key] = local
            continue
        parts = [torch.empty_like(local) for _ in range(size)]
        dist.all_gather(parts, local.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
        dim = param.partition_dim
        if _is_gated_fc1(model, name):
            halves = [p.chunk(2, dim=0) for p in parts]
            out[key] = torch.cat([torch.cat([h[0] for h in halves], dim), torch.cat([h[1] for h in halves], dim)], 0)
        else:
            out[key] = torch.cat(parts, dim)
    return out
