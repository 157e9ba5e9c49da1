"""The Qwen3-VL vision tower on Megatron-Core layers, with its DeepStack taps.

    VisionTransformer(vision_cfg, block_config, merger_config)(pixel_values [P, 1536], grid_thw [n, 3])
      -> [P / merge^2, out_hidden * (1 + taps)]: the merged embeddings, then each DeepStack tap's

Steps (the facts of HF's ``Qwen3VLVisionModel``):
1. patch embedding: a linear with bias on each flattened 3x2x16x16 patch (HF's Conv3d, stride = kernel);
2. learned position embeddings: the square grid (48 x 48) resized bilinearly (corners aligned) to
   each image's patch grid, in the processor's patch order (block-major over merge x merge blocks),
   the same for every frame, added to the patches;
3. blocks (LayerNorm, attention with QKV bias and 2D rope, GELU-tanh MLP), all attending within
   each frame of each image (no windows);
4. DeepStack: the output of each block in ``deepstack_visual_indexes`` goes through its own merger
   (LayerNorm over the concatenated 2x2 patches); the last block's output through the main merger.
The taps come back concatenated to the embeddings along the width, so the context-parallel vision
path (parallel/cp_vision.py), which exchanges one matrix per image, carries them unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn

from megatron_vlm.models.common.attention import packed_seq_params
from megatron_vlm.models.qwen2_5_vl.vision import PatchMerger, frame_cu_seqlens
from megatron_vlm.models.qwen2_5_vl.vision import VisionTransformer as Qwen25Vision
from megatron_vlm.models.qwen3_vl.config import VisionConfig


def position_embeddings(table: torch.Tensor, grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """Learned position embeddings [N, hidden] of the patches of ``grid_thw``, in the ViT's input order.

    ``table`` [side * side, hidden] is resized to (h, w) per image by bilinear interpolation with
    aligned corners, then laid out block-major (merge x merge blocks) and repeated for each frame."""
    side = int(round(table.shape[0] ** 0.5))
    grid = table.t().reshape(1, -1, side, side)
    out = []
    for t, h, w in grid_thw.tolist():
        resized = F.interpolate(grid.float(), size=(h, w), mode="bilinear", align_corners=True).to(table.dtype)[0]
        blocks = resized.reshape(-1, h // merge, merge, w // merge, merge).permute(1, 3, 2, 4, 0)  # [bh, bw, m, m, C]
        out.append(blocks.reshape(h * w, -1).repeat(t, 1))
    return torch.cat(out)


class VisionTransformer(Qwen25Vision):
    """Qwen2.5-VL's tower (patch embedding, blocks, merger, 2D rope) with a patch bias, the position
    grid and the DeepStack mergers, and without windows."""

    def __init__(self, vision: VisionConfig, config: TransformerConfig, merger_config: TransformerConfig, *args, **kwargs):
        """The arguments of Qwen2.5-VL's tower."""
        super().__init__(vision, config, merger_config, *args, **kwargs)
        self.pos_embed = nn.Embedding(vision.num_position_embeddings, vision.hidden_size, dtype=config.params_dtype)
        self.deepstack_mergers = nn.ModuleList(
            [PatchMerger(merger_config, vision.hidden_size, vision.spatial_merge_size, self.spec, postshuffle=True)
             for _ in vision.deepstack_visual_indexes]
        )

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """[P / merge^2, out_hidden * (1 + taps)] for patches [P, patch_dim] of the images in ``grid_thw``."""
        v = self.vision
        grid_thw = grid_thw.cpu()
        x = self.embed_patches(pixel_values, grid_thw)
        n = x.shape[0]
        x = x + position_embeddings(self.pos_embed.weight, grid_thw, v.spatial_merge_size).to(x.device)
        x = x.reshape(n, 1, -1)
        freqs = self.rope_angles(grid_thw).to(x.device).reshape(n, 1, 1, -1)
        frames = packed_seq_params(frame_cu_seqlens(grid_thw).to(x.device))
        taps = []
        for i, layer in enumerate(self.decoder.layers):
            x, _ = layer(x, attention_mask=None, rotary_pos_emb=freqs, packed_seq_params=frames)
            if i in v.deepstack_visual_indexes:
                taps.append(self.deepstack_mergers[v.deepstack_visual_indexes.index(i)](x.squeeze(1)))
        return torch.cat([self.merger(x.squeeze(1)), *taps], dim=-1)
