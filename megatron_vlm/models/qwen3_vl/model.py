"""Qwen3-VL on Megatron-Core: the vision tower with DeepStack feeding a Qwen3 GPTModel with interleaved mRoPE.

    model = Qwen3VLModel(flavor("debug"))               # after megatron_vlm.parallel.initialize(...)
    logits = model(input_ids, position_ids, pixel_values=..., image_grid_thw=...)      # [B, T, V]
    loss = model(input_ids, position_ids, labels=labels, packed_seq_params=psp)        # [B, T]

Everything Qwen2.5-VL's model does (models/qwen2_5_vl/model.py: the forward contract, packing,
TP/SP, PP, VPP, CP with the vision split over CP ranks) this model does the same way; it differs in
its three parts (:meth:`llm_config`, :meth:`build_vision`, :meth:`mrope`) and in DeepStack:

DeepStack. The ViT's taps (vision.py) are placed like the embeddings: each into a zero tensor of
the decoder input's shape at the image/video pad positions, sequence-first and scattered for
sequence parallelism like the decoder input; under context parallelism each rank places the rows
of its own tokens (the taps travel with the embeddings through parallel/cp_vision.py). A forward
hook on LLM layer k adds tap k to that layer's output: HF adds the features at the visual
positions only, and adding exact zeros elsewhere leaves those rows bit-identical.

The layers that take a tap (0 .. taps-1) must be on the first pipeline stage (chunk 0 of the first
rank with a virtual pipeline), where the ViT runs: Megatron's schedules send one hidden-state
tensor between stages. Every published flavor has 3 taps and 28+ layers, so any pipeline of up to
9 stages qualifies; a layout that does not is refused when the model is built. Full activation
recompute is refused with DeepStack on the first stage (a recomputed layer would re-read the taps
of the latest micro-batch).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_vlm.models.qwen2_5_vl.model import _COMMON, Qwen2_5_VLModel, vision_transformer_configs
from megatron_vlm.models.qwen2_5_vl.model import forward_batch as forward_batch  # the same micro-batch contract
from megatron_vlm.models.qwen2_5_vl.rope import MRopeEmbedding
from megatron_vlm.models.qwen3_vl.config import Qwen3VLConfig
from megatron_vlm.models.qwen3_vl.vision import VisionTransformer
from megatron_vlm.parallel.state import layout


def text_transformer_config(cfg: Qwen3VLConfig, **overrides) -> TransformerConfig:
    """Megatron TransformerConfig of the Qwen3 LLM at the current layout (``overrides`` win)."""
    t = cfg.text
    rope = Qwen3VLModel.mrope(cfg)
    kwargs = dict(
        _COMMON, **layout().transformer_config_kwargs(),
        num_layers=t.num_hidden_layers, hidden_size=t.hidden_size, num_attention_heads=t.num_attention_heads,
        num_query_groups=t.num_key_value_heads, ffn_hidden_size=t.intermediate_size, kv_channels=t.head_dim,
        gated_linear_unit=True, activation_func=F.silu, layernorm_epsilon=t.rms_norm_eps,
        add_bias_linear=False, add_qkv_bias=t.qkv_bias, qk_layernorm=t.qk_norm, mrope_section=list(t.mrope_section),
        softmax_scale=None if rope.attention_factor == 1.0 else rope.attention_factor**2 / math.sqrt(t.head_dim),
    )
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


class Qwen3VLModel(Qwen2_5_VLModel):
    """Vision tower with DeepStack (first stage) + Qwen3 decoder. See the module docstring."""

    def __init__(self, cfg: Qwen3VLConfig, *args, **kwargs):
        super().__init__(cfg, *args, **kwargs)
        self.taps = len(cfg.vision.deepstack_visual_indexes)
        self._deepstack: list[torch.Tensor] | None = None
        layers = {layer.layer_number - 1: layer for layer in self.language_model.decoder.layers}
        targets = range(self.taps)
        if not self.pre_process and any(k in layers for k in targets):
            raise ValueError(f"DeepStack adds vision features to LLM layers 0..{self.taps - 1}; they must all be on "
                             f"the first pipeline stage (this stage holds layers {sorted(layers)})")
        if self.pre_process:
            missing = [k for k in targets if k not in layers]
            if missing:
                raise ValueError(f"DeepStack needs LLM layers {missing} on the first pipeline stage with the ViT; "
                                 f"it holds {sorted(layers)} (give it more: num_layers_in_first_pipeline_stage)")
            if self.config.recompute_granularity == "full":
                raise ValueError("full activation recompute is not supported with DeepStack (use selective)")
            for k in targets:
                layers[k].register_forward_hook(functools.partial(Qwen3VLModel._add_tap, self, k))

    @staticmethod
    def llm_config(cfg, **overrides) -> TransformerConfig:
        return text_transformer_config(cfg, **overrides)

    @staticmethod
    def build_vision(cfg, spec: str, attention_backend: str, **overrides):
        blocks, merger = vision_transformer_configs(
            cfg, eps=cfg.vision.layer_norm_eps, normalization="LayerNorm", gated=False,
            activation=functools.partial(F.gelu, approximate="tanh"), **overrides,
        )
        return VisionTransformer(cfg.vision, blocks, merger, spec, attention_backend)

    @staticmethod
    def mrope(cfg) -> MRopeEmbedding:
        t = cfg.text
        return MRopeEmbedding(t.head_dim, t.rope_theta, t.mrope_section, t.rope_scaling, interleaved=True)

    def _add_tap(self, k: int, module, args, output):
        if self._deepstack is None:
            return output
        hidden, context = output
        return hidden + self._deepstack[k].to(hidden.dtype), context

    def vision_width(self) -> int:
        return self.cfg.vision.out_hidden_size * (1 + self.taps)

    def embed(
        self, input_ids, pixel_values=None, image_grid_thw=None, pixel_values_videos=None, video_grid_thw=None,
        image_token_rows=None, video_token_rows=None, cu_seqlens=None,
    ):
        """Token embeddings [T, B, H] with vision embeddings placed, and sets the DeepStack taps
        ([T, B, H] each, zero off the visual positions) that the hooks add (see the module doc)."""
        emb = self.language_model.embedding.word_embeddings(input_ids)  # [B, T, H]
        out = self.cfg.vision.out_hidden_size
        taps = [torch.zeros_like(emb) for _ in range(self.taps)] if self.taps else []
        cp = self.config.context_parallel_size > 1
        any_vision = False
        for pixels, grids, token, rows in (
            (pixel_values, image_grid_thw, self.cfg.image_token_id, image_token_rows),
            (pixel_values_videos, video_grid_thw, self.cfg.video_token_id, video_token_rows),
        ):
            if pixels is None:
                continue
            any_vision = True
            if cp:
                placed = self._place_cp(torch.zeros(*emb.shape[:2], self.vision_width(), dtype=emb.dtype,
                                                    device=emb.device), input_ids, pixels, grids, token, rows, cu_seqlens)
                mask = (input_ids == token).unsqueeze(-1)
                emb = torch.where(mask, placed[..., :out], emb)
                taps = [tap + placed[..., out * (k + 1) : out * (k + 2)] for k, tap in enumerate(taps)]
                continue
            vis = self.vision(pixels, grids).to(emb.dtype)
            mask = (input_ids == token).unsqueeze(-1)
            if int(mask.sum()) != vis.shape[0]:
                raise ValueError(f"{int(mask.sum())} pad tokens (id {token}) but the vision tower made {vis.shape[0]}")
            emb = emb.masked_scatter(mask, vis[:, :out])
            taps = [tap.masked_scatter(mask, vis[:, out * (k + 1) : out * (k + 2)]) for k, tap in enumerate(taps)]
        deepstack = None
        if any_vision and taps:
            deepstack = [tap.transpose(0, 1).contiguous() for tap in taps]
            if self.config.sequence_parallel:
                deepstack = [tensor_parallel.scatter_to_sequence_parallel_region(tap) for tap in deepstack]
        self._deepstack = deepstack
        return emb.transpose(0, 1).contiguous()

    def forward(self, input_ids, position_ids, *args, **kwargs):
        try:
            return super().forward(input_ids, position_ids, *args, **kwargs)
        finally:
            self._deepstack = None

