"""Autograd-aware collectives over the context-parallel group.

- ``all_gather_cp(x, group)``: concatenate every rank's ``x`` along dim 0 (equal sizes);
  backward reduce-scatters, so each rank gets the summed gradient of its own rows.
- ``all_gather_varlen(x, sizes, group)``: the same with a different row count per rank
  (``sizes[r]`` rows on rank r), e.g. image embeddings encoded on different ranks.

``group=None`` means the default (world) group. With one rank both are the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def group_size(group) -> int:
    """World size of ``group`` (1 without torch.distributed)."""
    return dist.get_world_size(group) if dist.is_initialized() else 1


def group_rank(group) -> int:
    """This process's rank in ``group`` (0 without torch.distributed)."""
    return dist.get_rank(group) if dist.is_initialized() else 0


def gather_rows(x: torch.Tensor, group) -> torch.Tensor:
    """Plain (no autograd) all-gather along dim 0, in rank order."""
    world = group_size(group)
    out = torch.empty((world * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    _all_gather_single(out, x.contiguous(), group=group)
    return out


def _reduce_scatter_rows(x: torch.Tensor, group) -> torch.Tensor:
    world = group_size(group)
    out = torch.empty((x.shape[0] // world, *x.shape[1:]), dtype=x.dtype, device=x.device)
    _reduce_scatter_single(out, x.contiguous(), group=group)
    return out


class _AllGatherCP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return gather_rows(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _reduce_scatter_rows(grad, ctx.group), None


def all_gather_cp(x: torch.Tensor, group=None) -> torch.Tensor:
    """[n, ...] on every rank -> [world*n, ...] in rank order; backward: reduce-scatter."""
    if group_size(group) == 1:
        return x
    return _AllGatherCP.apply(x, group)


class _AllGatherVarlen(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sizes, group):
        ctx.group, ctx.sizes = group, sizes
        longest = max(max(sizes), 1)  # a zero-row collective is not portable
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        gathered = gather_rows(padded, group).view(len(sizes), longest, *x.shape[1:])
        return torch.cat([gathered[r, :n] for r, n in enumerate(sizes)])

    @staticmethod
    def backward(ctx, grad):
        sizes, longest = ctx.sizes, max(max(ctx.sizes), 1)
        padded = grad.new_zeros((len(sizes), longest, *grad.shape[1:]))
        for r, piece in enumerate(grad.split(sizes)):
            padded[r, : piece.shape[0]] = piece
        mine = _reduce_scatter_rows(padded.view(-1, *grad.shape[1:]), ctx.group)
        return mine[: sizes[group_rank(ctx.group)]], None, None


def all_gather_varlen(x: torch.Tensor, sizes: list[int], group=None) -> torch.Tensor:
    """Rank r's [sizes[r], ...] -> [sum(sizes), ...] in rank order; backward: each rank gets
    the gradient of its own rows summed over all ranks."""
    if x.shape[0] != sizes[group_rank(group)]:
        raise ValueError(f"rank {group_rank(group)} has {x.shape[0]} rows, sizes say {sizes[group_rank(group)]}")
    if group_size(group) == 1:
        return x
    return _AllGatherVarlen.apply(x, list(sizes), group)
