"""The Qwen2.5-VL vision tower on Megatron-Core layers: patches -> ViT blocks -> merger -> LLM width.

    VisionTransformer(vision_cfg, transformer_config, spec="local")(pixel_values [P, 1176], grid_thw [n, 3])
      -> embeddings [P / merge^2, out_hidden_size], in the order of the image-pad tokens

Steps (as HF's ``Qwen2_5_VisionTransformerPretrainedModel``):
1. patch embedding: a bias-free linear on each flattened 3x2x14x14 patch (HF's Conv3d with
   stride = kernel is the same map);
2. reorder patches window by window (:func:`window_order`); a window is 112 px = 4x4 merged
   tokens, each merged token being 2x2 patches that stay together;
3. blocks: the ``fullatt_block_indexes`` blocks attend within each frame of each image, the others
   within each window; 2D rope angles follow the same reordering;
4. merger: RMSNorm, join 2x2 patches, Linear-GELU-Linear into the LLM width; undo the reordering.
The ViT runs with tensor parallelism like the LLM but never with sequence or context parallelism.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import build_module
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn

from megatron_vlm.models.common.attention import packed_seq_params
from megatron_vlm.models.qwen2_5_vl.config import VisionConfig
from megatron_vlm.models.qwen2_5_vl.rope import vision_rope_freqs
from megatron_vlm.models.qwen2_5_vl.specs import layer_spec, local_norm, merger_mlp_spec


def frame_cu_seqlens(grid_thw: torch.Tensor) -> torch.Tensor:
    """Boundaries of full attention: every frame of every image/video is its own sequence."""
    lengths = torch.cat([torch.full((t,), h * w) for t, h, w in grid_thw.tolist()])
    return torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(torch.int32)


def window_order(grid_thw: torch.Tensor, merge: int, window_merged: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The window reordering of merged tokens and the window boundaries (in patches).

    Returns ``order`` [N / merge^2] (new position -> original merged-token index) and
    ``cu_seqlens`` [windows + 1] over patches. Windows are ``window_merged`` x ``window_merged``
    merged tokens, tiled from the top-left of each frame (edge windows are smaller), row-major.
    """
    order, lengths, base = [], [], 0
    for t, h, w in grid_thw.tolist():
        gh, gw = h // merge, w // merge
        index = torch.arange(t * gh * gw).view(t, gh, gw) + base
        for frame in range(t):
            for y in range(0, gh, window_merged):
                for x in range(0, gw, window_merged):
                    block = index[frame, y : y + window_merged, x : x + window_merged].flatten()
                    order.append(block)
                    lengths.append(block.numel() * merge * merge)
        base += t * gh * gw
    cu = torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor(lengths).cumsum(0)]).to(torch.int32)
    return torch.cat(order), cu


class PatchMerger(MegatronModule):
    """Norm per patch, concatenate merge x merge neighbours, then Linear-GELU-Linear.

    The norm is the config's ``normalization`` (RMSNorm for Qwen2.5-VL, LayerNorm for Qwen3-VL);
    ``postshuffle`` (Qwen3-VL's DeepStack mergers) normalises the concatenated vector instead."""

    def __init__(self, config: TransformerConfig, vision_hidden: int, merge: int, spec: str = "local",
                 postshuffle: bool = False):
        super().__init__(config=config)
        self.merged = vision_hidden * merge * merge
        self.postshuffle = postshuffle
        width = self.merged if postshuffle else vision_hidden
        norm_config = _norm_config(config, width)
        self.norm = build_module(local_norm(config.normalization) if spec == "local" else _te_norm(), config=norm_config,
                                 hidden_size=width, eps=1e-6)
        self.mlp = build_module(merger_mlp_spec(spec), config=config, input_size=self.merged)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.postshuffle:
            x = self.norm(x.reshape(-1, 1, self.merged))
        else:
            x = self.norm(x).reshape(-1, 1, self.merged)
        out, bias = self.mlp(x)
        if bias is not None:
            out = out + bias
        return out.squeeze(1)


def _te_norm():
    from megatron.core.extensions.transformer_engine import TENorm

    return TENorm


def _norm_config(config: TransformerConfig, hidden: int) -> TransformerConfig:
    import dataclasses

    return dataclasses.replace(config, hidden_size=hidden, ffn_hidden_size=4 * hidden, sequence_parallel=False)


class VisionTransformer(MegatronModule):
    """Patch embedding, ViT blocks (window + full attention) and merger; see the module docstring."""

    def __init__(
        self,
        vision: VisionConfig,
        config: TransformerConfig,
        merger_config: TransformerConfig,
        spec: str = "local",
        attention_backend: str = "auto",
    ):
        """Also Qwen3-VL's tower, which subclasses this one: whether the patch embedding has a bias
        is ``vision.patch_bias``, the blocks' norm is ``config.normalization``."""
        super().__init__(config=config)
        self.vision, self.spec = vision, spec
        self.patch_embed = nn.Linear(vision.patch_dim, vision.hidden_size, bias=vision.patch_bias, dtype=config.params_dtype)
        layer = layer_spec(spec, vision=True, attention_backend=attention_backend, normalization=config.normalization)
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList(
            [build_module(layer, config=config, layer_number=i + 1) for i in range(vision.depth)]
        )
        self.merger = PatchMerger(merger_config, vision.hidden_size, vision.spatial_merge_size, spec)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None) -> dict:
        """Each ViT layer's own sharded state dict (TP axes, fused-GLU factories), under
        ``decoder.layers.<i>.``, and each module of a list (Qwen3-VL's DeepStack mergers) under
        ``<list>.<i>.``; the plain container modules would otherwise save every tensor as
        replicated, which is wrong at TP > 1."""
        from megatron.core import parallel_state
        from megatron.core.transformer.utils import sharded_state_dict_default

        tp_group = parallel_state.get_tensor_model_parallel_group()  # replicas are told apart by TP rank
        out = {}
        for name, child in self.named_children():
            if name == "decoder":
                for i, layer in enumerate(self.decoder.layers):
                    out.update(layer.sharded_state_dict(f"{prefix}decoder.layers.{i}.", sharded_offsets, metadata))
            elif isinstance(child, nn.ModuleList):
                for i, item in enumerate(child):
                    out.update(sharded_state_dict_default(item, f"{prefix}{name}.{i}.", sharded_offsets, metadata, tp_group))
            else:
                out.update(sharded_state_dict_default(child, f"{prefix}{name}.", sharded_offsets, metadata, tp_group))
        return out

    def rope_angles(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """2D rope angles [N, head_dim] (float32, whatever the tower's dtype) of the patches, input order."""
        v = self.vision
        return vision_rope_freqs(grid_thw, v.head_dim, v.spatial_merge_size, v.rope_theta)

    def embed_patches(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Patch embeddings [P, hidden] of patches [P, patch_dim]; ValueError unless P is what the
        grids [n, 3] (on the CPU) need."""
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))
        need = int(grid_thw.prod(-1).sum())
        if x.shape[0] != need:
            raise ValueError(f"{x.shape[0]} patches but the grids {grid_thw.tolist()} need {need}")
        return x

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Embeddings [P / merge^2, out_hidden] for patches [P, patch_dim] of the images in ``grid_thw``."""
        v = self.vision
        unit = v.spatial_merge_size**2
        grid_thw = grid_thw.cpu()
        x = self.embed_patches(pixel_values, grid_thw)
        n = x.shape[0]
        order, cu_window = window_order(grid_thw, v.spatial_merge_size, v.window_size // v.spatial_merge_size // v.patch_size)
        order = order.to(x.device)
        x = x.view(n // unit, unit, -1)[order].reshape(n, 1, -1)
        freqs = self.rope_angles(grid_thw).to(x.device)
        freqs = freqs.view(n // unit, unit, -1)[order].reshape(n, 1, 1, -1)
        windows = packed_seq_params(cu_window.to(x.device))
        frames = packed_seq_params(frame_cu_seqlens(grid_thw).to(x.device))
        for i, layer in enumerate(self.decoder.layers):
            packed = frames if i in v.fullatt_block_indexes else windows
            x, _ = layer(x, attention_mask=None, rotary_pos_emb=freqs, packed_seq_params=packed)
        merged = self.merger(x.squeeze(1))
        return merged[torch.argsort(order)]
