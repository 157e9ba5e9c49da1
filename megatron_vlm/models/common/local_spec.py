"""Megatron-Core GPT layer/block specs built from local (pure PyTorch) modules and our RMSNorm.

Megatron's ``get_gpt_layer_local_spec(normalization="RMSNorm")`` fills every norm slot with
``WrappedTorchNorm``, which refuses sequence parallelism. These helpers take that spec and put
:class:`~megatron_vlm.models.common.rmsnorm.RMSNorm` in every norm slot, including the final norm
of the block:

    spec = local_block_spec(config)                       # pass to GPTModel(transformer_layer_spec=...)
    layer = local_layer_spec(qk_layernorm=False)          # one layer, for custom blocks

Pass the *block* spec to ``GPTModel``: given a single layer spec, Megatron builds the final norm
from its own default (``WrappedTorchNorm`` without TE), which fails under sequence parallelism.
"""

from __future__ import annotations

import dataclasses

from megatron.core.transformer import ModuleSpec, TransformerConfig

from megatron_vlm.models.common.rmsnorm import RMSNorm


def local_layer_spec(qk_layernorm: bool = False) -> ModuleSpec:
    """A TransformerLayer spec: Megatron's local DotProductAttention, column/row
    parallel linears, and RMSNorm for the input, pre-MLP and (optionally) per-head q/k norms.

    SwiGLU comes from the config (``gated_linear_unit=True, activation_func=F.silu``), GQA from
    ``num_query_groups``, biases from ``add_bias_linear`` / ``add_qkv_bias``.
    """
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    base = get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=qk_layernorm)
    attn = base.submodules.self_attention
    attn_sub = dataclasses.replace(
        attn.submodules,
        q_layernorm=RMSNorm if qk_layernorm else attn.submodules.q_layernorm,
        k_layernorm=RMSNorm if qk_layernorm else attn.submodules.k_layernorm,
    )
    layer_sub = dataclasses.replace(
        base.submodules,
        input_layernorm=RMSNorm,
        pre_mlp_layernorm=RMSNorm,
        self_attention=dataclasses.replace(attn, submodules=attn_sub),
    )
    return dataclasses.replace(base, submodules=layer_sub)


def local_block_spec(
    config: TransformerConfig,
    qk_layernorm: bool = False,
    vp_stage: int | None = None,
    pp_rank: int | None = None,
):
    """A TransformerBlock spec for this pipeline stage: ``local_layer_spec`` for each of its layers
    and RMSNorm as the final norm (only built on the last stage).

    ``vp_stage`` / ``pp_rank`` as in Megatron's ``get_num_layers_to_build`` (None: the current rank).
    """
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    layer = local_layer_spec(qk_layernorm=qk_layernorm)
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage, pp_rank=pp_rank)
    return TransformerBlockSubmodules(layer_specs=[layer] * num_layers, layer_norm=RMSNorm)
