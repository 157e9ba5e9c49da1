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

from megatron_vlm.parallel.cp_comm import all_gather_varlen, gather_rows, group_rank, group_size


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


def local_token_rows(local_tokens: torch.Tensor, token_id: int, cu_seqlens_padded: torch.Tensor, group=None):
    """For this rank's ``token_id`` slots (local order), their rows in the token-ordered
    embedding matrix of the whole sequence, found from inside the model: each rank counts the
    tokens in its two chunks of every sub-sequence, the counts are all-gathered over the CP
    group, and a prefix sum in global chunk order gives where each chunk's rows start.

    ``local_tokens`` [T_loc]; ``cu_seqlens_padded`` [n+1] GLOBAL padded boundaries. Equals the
    ``image_token_rows`` of :func:`split_batch_for_cp`, without needing the full batch.
    """
    cp, rank = group_size(group), group_rank(group)
    bounds = (cu_seqlens_padded.long() // cp).tolist()
    is_tok = local_tokens == token_id
    halves = []  # (start, length) of each local half-chunk, in local order
    for a, b in zip(bounds[:-1], bounds[1:]):
        halves += [(a, (b - a) // 2), (a + (b - a) // 2, (b - a) // 2)]
    counts = torch.tensor([int(is_tok[a : a + n].sum()) for a, n in halves], dtype=torch.long)
    if cp > 1:
        everyone = gather_rows(counts.to(local_tokens.device), group).cpu().view(cp, -1, 2)  # [rank, seq, half]
    else:
        everyone = counts.view(1, -1, 2)
    # global chunk c of a sub-sequence lives on rank c (first half) or 2cp-1-c (second half)
    owner = [(c, 0) if c < cp else (2 * cp - 1 - c, 1) for c in range(2 * cp)]
    in_order = torch.stack([everyone[r, :, h] for r, h in owner], dim=1).reshape(-1)  # [n * 2cp]
    starts = (in_order.cumsum(0) - in_order).view(-1, 2 * cp)  # [sub-sequence, chunk]
    rows = []
    for i in range(len(bounds) - 1):
        for h, c in enumerate((rank, 2 * cp - 1 - rank)):
            n = int(everyone[rank, i, h])
            rows.append(torch.arange(int(starts[i, c]), int(starts[i, c]) + n))
    return torch.cat(rows).to(local_tokens.device) if rows else torch.zeros(0, dtype=torch.long)


def place_vision_cp(
    embeds: torch.Tensor,
    local_tokens: torch.Tensor,
    token_id: int,
    encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    pixel_values: torch.Tensor,
    grid_thw: torch.Tensor,
    cu_seqlens_padded: torch.Tensor,
    group=None,
    spatial_merge_size: int = 2,
) -> torch.Tensor:
    """The model's vision step under CP, in one call: encode this rank's share of the images
    (:func:`encode_images_cp`), exchange, and place the rows this rank's ``token_id`` slots
    need. ``embeds`` [T_loc, H] and ``local_tokens`` [T_loc] are this rank's; the rest is the
    whole micro-batch's. Every vision parameter gets a gradient on every rank (zero where the
    rank encoded nothing)."""
    params = list(encode.parameters()) if isinstance(encode, torch.nn.Module) else None
    full = encode_images_cp(
        encode, pixel_values, grid_thw, embeds.shape[-1], embeds.dtype, group, spatial_merge_size, params
    )
    rows = local_token_rows(local_tokens, token_id, cu_seqlens_padded, group)
    return place_embeddings(embeds, local_tokens, token_id, full, rows)
