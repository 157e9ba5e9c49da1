"""Qwen2.5-VL on Megatron-Core: the vision tower feeding a Qwen2 GPTModel with mRoPE.

    model = Qwen2_5_VLModel(flavor("debug"))            # after megatron_vlm.parallel.initialize(...)
    logits = model(input_ids, position_ids, pixel_values=..., image_grid_thw=...)      # [B, T, V]
    loss = model(input_ids, position_ids, labels=labels, packed_seq_params=psp)        # [B, T]

Contract: docs/formats.md section 5. ``position_ids`` are mRoPE ids [3, B, T] (from
``position_ids.mrope_position_ids`` / ``packed_mrope_position_ids``); every pipeline stage needs
them because each stage applies rope. A packed batch is B=1 with ``packed_seq_params`` built by
``models.common.attention.packed_seq_params(cu_seqlens)`` (a ``thd`` PackedSeqParams is accepted
too and converted). Under tensor parallelism logits come back gathered to the full vocabulary.

Pipeline parallelism: the ViT and the embedding live on the first stage only; the first stage
may get fewer LLM layers (``num_layers_in_first_pipeline_stage``) to balance the ViT's cost.
Interleaved (virtual) pipelines build one model per ``vp_stage`` on each rank; each chunk holds
Megatron's layer range for (pp rank, vp_stage), with global layer numbers, so its
``sharded_state_dict()`` uses the same keys and offsets as any other layout. The ViT and the
embedding live on chunk 0 of the first rank, the output layer on the last chunk of the last rank;
with fewer first-stage layers every chunk of the first rank gets ``first_stage_layers / vpp``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.models.gpt import GPTModel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import ModelType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_vlm.models.common.attention import packed_seq_params as make_packed_seq_params
from megatron_vlm.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from megatron_vlm.models.qwen2_5_vl.rope import MRopeEmbedding
from megatron_vlm.models.qwen2_5_vl.specs import block_spec
from megatron_vlm.models.qwen2_5_vl.vision import VisionTransformer
from megatron_vlm.parallel.state import layout

_COMMON = dict(
    hidden_dropout=0.0, attention_dropout=0.0, bias_activation_fusion=False, masked_softmax_fusion=False,
    apply_rope_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False,
    normalization="RMSNorm", use_cpu_initialization=True,
)


def text_transformer_config(cfg: Qwen2_5_VLConfig, **overrides) -> TransformerConfig:
    """Megatron TransformerConfig of the LLM at the layout ``initialize()`` set up (``overrides`` win;
    the trainer passes its recipe's layout and precision)."""
    t = cfg.text
    rope = MRopeEmbedding(t.head_dim, t.rope_theta, t.mrope_section, t.rope_scaling)
    # YaRN's attention factor scales q and k after rope, i.e. the logits by its square.
    scale = rope.attention_factor**2 / math.sqrt(t.head_dim)
    kwargs = dict(
        _COMMON, **layout().transformer_config_kwargs(),
        num_layers=t.num_hidden_layers, hidden_size=t.hidden_size, num_attention_heads=t.num_attention_heads,
        num_query_groups=t.num_key_value_heads, ffn_hidden_size=t.intermediate_size, kv_channels=t.head_dim,
        gated_linear_unit=True, activation_func=F.silu, layernorm_epsilon=t.rms_norm_eps,
        add_bias_linear=False, add_qkv_bias=t.qkv_bias, mrope_section=list(t.mrope_section),
        softmax_scale=None if rope.attention_factor == 1.0 else scale,
    )
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def vision_transformer_configs(
    cfg, eps: float | None = None, normalization: str = "RMSNorm", gated: bool = True, activation=F.silu, **overrides,
) -> tuple[TransformerConfig, TransformerConfig]:
    """Configs of the ViT blocks and of the merger MLP (TP like the LLM; no SP, PP or CP).

    Qwen2.5-VL's blocks (the defaults): RMSNorm, SwiGLU; Qwen3-VL passes LayerNorm and GELU-tanh."""
    v = cfg.vision
    sizes = dict(tensor_model_parallel_size=overrides.get("tensor_model_parallel_size", layout().tp),
                 pipeline_model_parallel_size=1, virtual_pipeline_model_parallel_size=None, context_parallel_size=1)
    eps = v.rms_norm_eps if eps is None else eps
    base = dict(_COMMON, **sizes, add_bias_linear=True, layernorm_epsilon=eps, normalization=normalization)
    for key in ("params_dtype", "bf16", "fp16", "recompute_granularity", "recompute_method", "recompute_num_layers",
                "use_cpu_initialization"):
        if key in overrides:
            base[key] = overrides[key]
    blocks = TransformerConfig(
        **base, num_layers=v.depth, hidden_size=v.hidden_size, num_attention_heads=v.num_heads,
        ffn_hidden_size=v.intermediate_size, kv_channels=v.head_dim, gated_linear_unit=gated, activation_func=activation,
    )
    merger = TransformerConfig(
        **base, num_layers=1, hidden_size=v.out_hidden_size, num_attention_heads=v.num_heads,
        ffn_hidden_size=v.hidden_size * v.spatial_merge_size**2, gated_linear_unit=False, activation_func=F.gelu,
    )
    return blocks, merger


class Qwen2_5_VLModel(MegatronModule):
    """Vision tower (first stage) + Qwen2 decoder (GPTModel with mRoPE). See the module docstring."""

    def __init__(
        self,
        cfg: Qwen2_5_VLConfig,
        spec: str = "local",
        attention_backend: str = "auto",
        pre_process: bool | None = None,
        post_process: bool | None = None,
        vp_stage: int | None = None,
        **config_overrides,
    ):
        """``config_overrides`` go to the LLM's TransformerConfig (e.g. ``sequence_parallel=True``,
        ``params_dtype=torch.bfloat16, bf16=True``, ``num_layers_in_first_pipeline_stage=2``).
        ``vp_stage``: this chunk's virtual pipeline stage (interleaved schedule; required when the
        layout has a virtual pipeline size). ``pre_process``/``post_process`` default to whether
        this (rank, vp_stage) is the first / last stage of the whole pipeline."""
        text_config = self.llm_config(cfg, **config_overrides)
        super().__init__(config=text_config)
        vpp = text_config.virtual_pipeline_model_parallel_size
        if (vp_stage is None) != (vpp is None) or (vp_stage is not None and not 0 <= vp_stage < vpp):
            raise ValueError(f"vp_stage={vp_stage} does not fit virtual_pipeline_model_parallel_size={vpp}")
        if pre_process is None:
            pre_process = parallel_state.is_pipeline_first_stage(False, vp_stage) if _pp_initialized() else True
        if post_process is None:
            post_process = parallel_state.is_pipeline_last_stage(False, vp_stage) if _pp_initialized() else True
        self.vp_stage = vp_stage  # read by Float16Module and the pipeline schedules
        self.cfg = cfg
        self.spec = spec
        self.model_type = ModelType.encoder_or_decoder  # read by Megatron's pipeline schedules
        self.pre_process, self.post_process = pre_process, post_process
        self.vision = None
        if pre_process:
            self.vision = self.build_vision(cfg, spec, attention_backend, **config_overrides)
        t = cfg.text
        self.language_model = GPTModel(
            config=text_config,
            transformer_layer_spec=block_spec(text_config, spec, attention_backend, vp_stage=vp_stage,
                                              qk_norm=text_config.qk_layernorm),
            vocab_size=t.vocab_size,
            max_sequence_length=t.max_position_embeddings,
            pre_process=pre_process,
            post_process=post_process,
            parallel_output=True,
            share_embeddings_and_output_weights=t.tie_word_embeddings,
            position_embedding_type="mrope",
            rotary_base=t.rope_theta,
            scatter_embedding_sequence_parallel=False,  # we place vision embeddings first, then scatter
            vp_stage=vp_stage,
        )
        # Angles per token from the given ids, never Megatron's per-CP-rank slicing (see rope.py).
        self.language_model.rotary_pos_emb = self.mrope(cfg)
        self.share_embeddings_and_output_weights = t.tie_word_embeddings

    # The family's parts; Qwen3VLModel (models/qwen3_vl/model.py) overrides these three.
    @staticmethod
    def llm_config(cfg, **overrides) -> TransformerConfig:
        return text_transformer_config(cfg, **overrides)

    @staticmethod
    def build_vision(cfg, spec: str, attention_backend: str, **overrides):
        blocks, merger = vision_transformer_configs(cfg, **overrides)
        return VisionTransformer(cfg.vision, blocks, merger, spec, attention_backend)

    @staticmethod
    def mrope(cfg) -> MRopeEmbedding:
        t = cfg.text
        return MRopeEmbedding(t.head_dim, t.rope_theta, t.mrope_section, t.rope_scaling)

    def set_input_tensor(self, input_tensor) -> None:
        self.language_model.set_input_tensor(input_tensor)

    def shared_embedding_or_output_weight(self):
        return self.language_model.shared_embedding_or_output_weight()

    def embed(
        self, input_ids, pixel_values=None, image_grid_thw=None, pixel_values_videos=None, video_grid_thw=None,
        image_token_rows=None, video_token_rows=None, cu_seqlens=None,
    ):
        """Token embeddings [T, B, H] (sequence-first, not yet SP-scattered) with vision embeddings placed.

        Under context parallelism ``input_ids`` are this rank's tokens, each CP rank encodes a share
        of the images (megatron_vlm.parallel.cp_vision), and ``*_token_rows`` (from
        ``split_batch_for_cp``) say which embedding row each local pad token takes; without them
        the rows are worked out from the GLOBAL padded ``cu_seqlens`` (one all-gather of token ids).
        """
        emb = self.language_model.embedding.word_embeddings(input_ids)  # [B, T, H], all-reduced over TP
        cp = self.config.context_parallel_size > 1
        for pixels, grids, token, rows in (
            (pixel_values, image_grid_thw, self.cfg.image_token_id, image_token_rows),
            (pixel_values_videos, video_grid_thw, self.cfg.video_token_id, video_token_rows),
        ):
            if pixels is None:
                continue
            if cp:
                emb = self._place_cp(emb, input_ids, pixels, grids, token, rows, cu_seqlens)
                continue
            vis = self.vision(pixels, grids).to(emb.dtype)
            mask = input_ids == token
            if int(mask.sum()) != vis.shape[0]:
                raise ValueError(f"{int(mask.sum())} pad tokens (id {token}) but the vision tower made {vis.shape[0]}")
            emb = emb.masked_scatter(mask.unsqueeze(-1), vis)
        return emb.transpose(0, 1).contiguous()

    def _place_cp(self, emb, input_ids, pixels, grids, token, rows, cu_seqlens):
        from megatron_vlm.parallel.cp_vision import encode_images_cp, local_token_rows, place_embeddings

        if emb.shape[0] != 1:
            raise ValueError("context parallelism needs one packed sequence (batch size 1)")
        group = parallel_state.get_context_parallel_group()
        if rows is None:
            if cu_seqlens is None:  # one unpacked sequence
                cu_seqlens = torch.tensor([0, input_ids.shape[1] * self.config.context_parallel_size])
            rows = local_token_rows(input_ids[0], token, cu_seqlens, group)
        full = encode_images_cp(
            self.vision, pixels, grids, emb.shape[-1], dtype=emb.dtype, group=group,
            spatial_merge_size=self.cfg.vision.spatial_merge_size, encoder_params=list(self.vision.parameters()),
        )
        return place_embeddings(emb[0], input_ids[0], token, full, rows).unsqueeze(0)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask=None,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        packed_seq_params: PackedSeqParams | None = None,
        image_token_rows: torch.Tensor | None = None,
        video_token_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, V] (full vocabulary) without ``labels``, else per-token loss [B, T].

        Under context parallelism ``packed_seq_params`` holds the GLOBAL padded boundaries
        (``cu_seqlens_padded`` of ``split_batch_for_cp``); its ``*_token_rows`` save an all-gather.
        """
        if attention_mask is not None:
            raise ValueError("attention_mask is not used: causal within each packed sub-sequence (packed_seq_params)")
        if position_ids.dim() == 2:
            position_ids = position_ids.unsqueeze(0).expand(3, -1, -1)
        if packed_seq_params is not None and packed_seq_params.qkv_format != "sbhd":
            packed_seq_params = make_packed_seq_params(packed_seq_params.cu_seqlens_q)
        decoder_input = None
        if self.pre_process:
            decoder_input = self.embed(
                input_ids, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw,
                image_token_rows, video_token_rows,
                cu_seqlens=packed_seq_params.cu_seqlens_q if packed_seq_params is not None else None,
            )
            if self.config.sequence_parallel:
                decoder_input = tensor_parallel.scatter_to_sequence_parallel_region(decoder_input)
        out = self.language_model(
            input_ids=None,
            position_ids=position_ids,
            attention_mask=None,
            decoder_input=decoder_input,
            labels=labels,
            packed_seq_params=packed_seq_params,
            runtime_gather_output=labels is None,
        )
        return out


def forward_batch(model: Qwen2_5_VLModel, batch: dict, with_loss: bool = True) -> torch.Tensor:
    """Run the model on a loader micro-batch (docs/formats.md section 4), CP-split or not.

    Returns the per-token loss [1, T] (``with_loss``) or the logits [1, T, V].
    """
    cu = batch.get("cu_seqlens_padded", batch["cu_seqlens"])  # CP: global padded boundaries
    return model(
        batch["tokens"], batch["position_ids"],
        labels=batch["labels"].clamp(min=0) if with_loss else None,  # -100 targets carry loss_mask 0
        pixel_values=batch.get("pixel_values"), image_grid_thw=batch.get("image_grid_thw"),
        pixel_values_videos=batch.get("pixel_values_videos"), video_grid_thw=batch.get("video_grid_thw"),
        packed_seq_params=make_packed_seq_params(cu),
        image_token_rows=batch.get("image_token_rows"), video_token_rows=batch.get("video_token_rows"),
    )


def _pp_initialized() -> bool:
    return parallel_state.model_parallel_is_initialized()
