"""mRoPE position ids for Qwen3-VL as pure functions, per sample and per packed sub-sequence.

Images are counted as for Qwen2.5-VL (models/qwen2_5_vl/position_ids.py): an image's tokens get
(t, h, w) ids from its merged grid offset by where it starts, and the count resumes at start +
max(h', w'). Videos differ: Qwen3-VL's processor writes each temporal patch (frame group) of a
video as its own block, ``<1.2 seconds><|vision_start|><|video_pad|>*h'w'<|vision_end|>``, so
time is carried by the timestamp text, not by the t axis. A video grid (t, h, w) is therefore t
frame grids (1, h, w), each laid out like a one-frame image. This matches transformers'
``Qwen3VLModel.get_rope_index`` (5.x). In a packed sequence every sub-sequence starts again from 0.
"""

from __future__ import annotations

import torch

from megatron_vlm.models.qwen2_5_vl import position_ids as shared
from megatron_vlm.models.qwen3_vl.family import FAMILY

IMAGE_TOKEN_ID = FAMILY.tokens.image_pad
VIDEO_TOKEN_ID = FAMILY.tokens.video_pad


def video_frame_grids(video_grid_thw: torch.Tensor | None) -> torch.Tensor | None:
    """Each video grid (t, h, w) as t frame grids (1, h, w), in order; None stays None."""
    if video_grid_thw is None:
        return None
    grids = torch.as_tensor(video_grid_thw, dtype=torch.long).reshape(-1, 3)
    frames = grids.repeat_interleave(grids[:, 0], dim=0)
    frames[:, 0] = 1
    return frames


def mrope_position_ids(
    input_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    spatial_merge_size: int = FAMILY.image.merge_size,
    image_token_id: int = IMAGE_TOKEN_ID,
    video_token_id: int = VIDEO_TOKEN_ID,
) -> tuple[torch.Tensor, int]:
    """Position ids [3, L] for one sample's 1-D ``input_ids`` [L], and the rope delta (max id + 1 - L).

    ``image_grid_thw`` / ``video_grid_thw`` list the ViT grids of the images / videos in the order
    they appear (a video's grid as the processor returns it, t frame groups). Raises ValueError
    when the pad-token runs disagree with the grids.
    """
    return shared.mrope_position_ids(
        input_ids, image_grid_thw, video_frame_grids(video_grid_thw), spatial_merge_size=spatial_merge_size,
        image_token_id=image_token_id, video_token_id=video_token_id,
    )


def packed_mrope_position_ids(
    input_ids: torch.Tensor,
    cu_seqlens: torch.Tensor,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    spatial_merge_size: int = FAMILY.image.merge_size,
    image_token_id: int = IMAGE_TOKEN_ID,
    video_token_id: int = VIDEO_TOKEN_ID,
) -> torch.Tensor:
    """Position ids [3, T] for a packed 1-D sequence [T]: each sub-sequence (``cu_seqlens`` [n+1])
    counted from 0 as if alone; grids are consumed in order; tokens past ``cu_seqlens[-1]`` count from 0."""
    return shared.packed_mrope_position_ids(
        input_ids, cu_seqlens, image_grid_thw, video_frame_grids(video_grid_thw),
        spatial_merge_size=spatial_merge_size, image_token_id=image_token_id, video_token_id=video_token_id,
    )
