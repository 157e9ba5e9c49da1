"""mRoPE position ids for Qwen2.5-VL as pure functions, per sample and per packed sub-sequence.

Text tokens get the same id on all three axes (t, h, w), counting up by one. The tokens of an
image or video get (t, h, w) ids from its merged grid, offset by the position where it starts;
after it, the count resumes at start + max(h', w') (h', w' = merged grid). Video frames are
spaced by ``tokens_per_second * second_per_grid`` on the t axis. This matches
transformers' ``Qwen2_5_VLModel.get_rope_index`` (5.x). In a packed sequence every
sub-sequence starts again from 0, as if it were alone.
"""

from __future__ import annotations

import torch

from megatron_vlm.models.qwen2_5_vl.family import FAMILY

IMAGE_TOKEN_ID = FAMILY.tokens.image_pad
VIDEO_TOKEN_ID = FAMILY.tokens.video_pad


def mrope_position_ids(
    input_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: list[float] | torch.Tensor | None = None,
    spatial_merge_size: int = 2,
    tokens_per_second: int = 2,
    image_token_id: int = IMAGE_TOKEN_ID,
    video_token_id: int = VIDEO_TOKEN_ID,
) -> tuple[torch.Tensor, int]:
    """Position ids [3, L] for one sample's 1-D ``input_ids`` [L], and the rope delta.

    ``image_grid_thw`` / ``video_grid_thw`` list the ViT grids (t, h, w) of the images / videos in
    the order they appear. The delta is ``max id + 1 - L`` (what generation adds to later ids).
    Raises ValueError when the pad-token runs disagree with the grids.
    """
    ids = input_ids.tolist()
    images = iter(image_grid_thw.tolist() if image_grid_thw is not None else [])
    videos = iter(video_grid_thw.tolist() if video_grid_thw is not None else [])
    seconds = iter(
        (second_per_grid_ts.tolist() if isinstance(second_per_grid_ts, torch.Tensor) else second_per_grid_ts)
        if second_per_grid_ts is not None
        else []
    )
    pieces: list[torch.Tensor] = []
    pos = 0
    i, n = 0, len(ids)
    while i < n:
        tok = ids[i]
        if tok in (image_token_id, video_token_id):
            is_video = tok == video_token_id
            try:
                t, h, w = next(videos if is_video else images)
            except StopIteration:
                kind = "video" if is_video else "image"
                raise ValueError(f"more {kind} pad runs in input_ids than {kind} grids") from None
            gt, gh, gw = t, h // spatial_merge_size, w // spatial_merge_size
            count = gt * gh * gw
            if ids[i : i + count] != [tok] * count:
                raise ValueError(f"pad run at token {i} is shorter than its grid {t}x{h}x{w} needs ({count})")
            interval = tokens_per_second * float(next(seconds, 1.0)) if is_video else 1.0
            tt = (torch.arange(gt) * interval).long()
            hh = torch.arange(gh) + pos
            ww = torch.arange(gw) + pos
            grid = torch.stack(torch.meshgrid(tt, hh, ww, indexing="ij")).reshape(3, -1)
            grid[0] += pos
            pieces.append(grid)
            pos += max(gh, gw)
            i += count
        else:
            j = i
            while j < n and ids[j] not in (image_token_id, video_token_id):
                j += 1
            pieces.append(torch.arange(pos, pos + j - i).expand(3, -1))
            pos += j - i
            i = j
    for leftover, kind in ((images, "image"), (videos, "video")):
        if next(leftover, None) is not None:
            raise ValueError(f"more {kind} grids than {kind} pad runs in input_ids")
    position_ids = torch.cat(pieces, dim=1) if pieces else torch.zeros(3, 0, dtype=torch.long)
    delta = int(position_ids.max()) + 1 - n if n else 0
    return position_ids.long(), delta


def packed_mrope_position_ids(
    input_ids: torch.Tensor,
    cu_seqlens: torch.Tensor,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """Position ids [3, T] for a packed 1-D sequence [T]: each sub-sequence counted from 0.

    ``cu_seqlens`` [n+1] gives the sub-sequence boundaries; grids are consumed in order across
    sub-sequences. Tokens past ``cu_seqlens[-1]`` (padding) get ids continuing from 0.
    """
    out = torch.zeros(3, input_ids.numel(), dtype=torch.long)
    img_i = vid_i = 0
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        seg = input_ids[start:end]
        n_img = _count_runs(seg, kwargs.get("image_token_id", IMAGE_TOKEN_ID), image_grid_thw, img_i, kwargs)
        n_vid = _count_runs(seg, kwargs.get("video_token_id", VIDEO_TOKEN_ID), video_grid_thw, vid_i, kwargs)
        pos, _ = mrope_position_ids(
            seg,
            image_grid_thw[img_i : img_i + n_img] if n_img else None,
            video_grid_thw[vid_i : vid_i + n_vid] if n_vid else None,
            **kwargs,
        )
        out[:, start:end] = pos
        img_i += n_img
        vid_i += n_vid
    tail = input_ids.numel() - bounds[-1]
    if tail > 0:
        out[:, bounds[-1] :] = torch.arange(tail).expand(3, -1)
    return out


def _count_runs(seg: torch.Tensor, token_id: int, grids: torch.Tensor | None, first: int, kwargs) -> int:
    """How many grids (starting at ``first``) the pad tokens of ``seg`` use up."""
    pads = int((seg == token_id).sum())
    if pads == 0:
        return 0
    merge = kwargs.get("spatial_merge_size", 2)
    used, k = 0, first
    while used < pads:
        if grids is None or k >= len(grids):
            raise ValueError("pad tokens in a sub-sequence need more grids than were given")
        t, h, w = grids[k].tolist()
        used += t * (h // merge) * (w // merge)
        k += 1
    return k - first
