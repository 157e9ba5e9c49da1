"""Vision work under context parallelism: each CP rank encodes a share of the images.

Every CP rank holds the whole micro-batch's ``pixel_values`` (the loader does not split them),
but encodes only the images :func:`assign_images_to_ranks` gives it, balanced by patch count.
The merged embeddings are then all-gathered (variable sizes per rank) and put back in image
order, so each rank can place the rows its own image-pad tokens need
(``image_token_rows`` from :func:`megatron_vlm.parallel.context_parallel.split_batch_for_cp`).
The all-gather's backward sums every rank's gradient for an image's rows on the rank that
encoded it, so the vision tower gets its full gradient there; the CP ranks' gradients then sum
to the single-rank gradient (Megatron reduces gradients over data x context parallel ranks).

The same functions serve videos (``video_grid_thw`` / ``video_token_rows``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from megatron_vlm.parallel.cp_comm import all_gather_varlen, group_rank, group_size


def assign_images_to_ranks(patch_counts: Sequence[int], cp_size: int) -> list[int]:
    """CP rank that encodes each image: largest image first, each to the least-loaded rank
    (ties to the lower rank). Deterministic, so every rank computes the same plan. With two or
    more images and CP >= 2, no rank encodes them all."""
    load = [0] * cp_size
    owner = [0] * len(patch_counts)
    for i in sorted(range(len(patch_counts)), key=lambda i: (-patch_counts[i], i)):
        rank = min(range(cp_size), key=lambda r: (load[r], r))
        owner[i] = rank
        load[rank] += patch_counts[i]
    return owner


def encode_images_cp(
    encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    pixel_values: torch.Tensor,
    grid_thw: torch.Tensor,
    hidden_size: int,
    dtype: torch.dtype | None = None,
    group=None,
    spatial_merge_size: int = 2,
    encoder_params: Iterable[torch.nn.Parameter] | None = None,
) -> torch.Tensor:
    """Merged embeddings [N_tokens, hidden_size] of ALL images, in image order, computed with
    each image encoded on one CP rank only.

    ``encode(pixel_values_subset, grid_thw_subset)`` is the vision tower: patch rows of some
    images (in order) and their grids -> their merged embeddings, one row per LLM token
    (t*h*w / merge^2 per image). ``pixel_values`` [P, C] holds every image's patches in image
    order. ``hidden_size`` / ``dtype`` describe the output, for a rank that encodes no image.
    ``encoder_params``: if given, a rank that encodes no image adds them to the graph with
    weight 0, so it still produces a (zero) gradient for every vision parameter (Megatron's
    overlapped gradient reduction waits for every parameter).
    """
    cp, rank = group_size(group), group_rank(group)
    patches = (grid_thw[:, 0] * grid_thw[:, 1] * grid_thw[:, 2]).tolist()
    tokens = [n // spatial_merge_size**2 for n in patches]
    owner = assign_images_to_ranks(patches, cp)
    mine = [i for i, r in enumerate(owner) if r == rank]
    starts = [0, *torch.tensor(patches, dtype=torch.long).cumsum(0).tolist()]
    dtype = dtype or pixel_values.dtype
    if mine:
        rows = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in mine]).to(pixel_values.device)
        local = encode(pixel_values.index_select(0, rows), grid_thw[mine]).to(dtype)
        if local.shape != (sum(tokens[i] for i in mine), hidden_size):
            raise ValueError(f"encoder returned {tuple(local.shape)} for images {mine} with {tokens} tokens each")
    else:
        local = pixel_values.new_zeros((0, hidden_size), dtype=dtype)
        if encoder_params is not None:
            local = local + sum(p.reshape(-1)[:1].sum() for p in encoder_params).to(dtype) * 0.0
    sizes = [sum(tokens[i] for i in range(len(owner)) if owner[i] == r) for r in range(cp)]
    gathered = all_gather_varlen(local, sizes, group)
    return gathered.index_select(0, _image_order(owner, tokens, cp).to(gathered.device))


def _image_order(owner: list[int], tokens: list[int], cp: int) -> torch.Tensor:
    """Rows of the rank-order gather (rank 0's images, rank 1's, ...), listed in image order."""
    rank_order = [i for r in range(cp) for i in range(len(owner)) if owner[i] == r]
    start_in_gather, at = {}, 0
    for i in rank_order:
        start_in_gather[i] = at
        at += tokens[i]
    pieces = [torch.arange(start_in_gather[i], start_in_gather[i] + tokens[i]) for i in range(len(owner))]
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


def place_embeddings(
    embeds: torch.Tensor, local_tokens: torch.Tensor, token_id: int, full: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """``embeds`` [T_loc, H] with the slots where ``local_tokens`` [T_loc] == ``token_id``
    replaced, in order, by ``full[rows]`` (rows from ``split_batch_for_cp``). Differentiable."""
    slots = (local_tokens == token_id).nonzero().squeeze(1)
    if slots.numel() != rows.numel():
        raise ValueError(f"{slots.numel()} local slots of token {token_id} but {rows.numel()} embedding rows")
    return embeds.index_put((slots,), full.index_select(0, rows.to(full.device)).to(embeds.dtype))
