"""ModuleSpecs for Qwen2.5-VL's transformer layers: ``local`` (pure PyTorch) and ``te``.

    layer_spec(kind="local" | "te", vision=False, attention_backend="auto")

One spec serves both towers; they differ only in the mask (causal LLM, bidirectional ViT) and in
config (biases, widths). ``local`` runs on CPU: Megatron's Column/RowParallelLinear, an RMSNorm,
and our :class:`~megatron_vlm.models.common.attention.CoreAttention`. ``te`` uses Transformer
Engine's linears with the norm fused into the next linear (so the norm weights are named
``linear_qkv.layer_norm_weight`` / ``linear_fc1.layer_norm_weight``, which the HF name map knows)
and TE's fused attention kernel through the same CoreAttention (backend ``te``); TE is imported
only when the ``te`` spec is built.
"""

from __future__ import annotations

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from megatron_vlm.models.common.attention import CoreAttention

SPECS = ("local", "te")


def local_norm(normalization: str = "RMSNorm"):
    """The local spec's norm: our RMSNorm (HF's arithmetic; works under sequence parallelism), or
    our LayerNorm (Qwen3-VL's ViT and mergers, which never run with SP)."""
    if normalization == "LayerNorm":
        from megatron_vlm.models.common.layernorm import LayerNorm

        return LayerNorm
    from megatron_vlm.models.common.rmsnorm import RMSNorm

    return RMSNorm


def final_norm(kind: str = "local"):
    """The norm after the last LLM layer (TENorm for ``te``)."""
    if kind == "te":
        from megatron.core.extensions.transformer_engine import TENorm

        return TENorm
    return local_norm()


def block_spec(config, kind: str = "local", attention_backend: str = "auto", vp_stage: int | None = None,
               qk_norm: bool = False):
    """The LLM's TransformerBlock spec for this pipeline stage: its layers and the final norm.

    (Given only a layer spec, GPTModel would build Megatron's default final norm, which refuses
    sequence parallelism on the local spec.)
    """
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    layer = layer_spec(kind, vision=False, attention_backend=attention_backend, qk_norm=qk_norm)
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[layer] * num_layers, layer_norm=final_norm(kind))


def layer_spec(
    kind: str = "local", vision: bool = False, attention_backend: str = "auto", qk_norm: bool = False,
    normalization: str = "RMSNorm",
) -> ModuleSpec:
    """A TransformerLayer spec for the LLM (causal) or the ViT (``vision=True``, bidirectional).

    ``qk_norm``: an RMSNorm over each head's q and k before rope (Qwen3); ``normalization``: the
    local spec's pre-norms (the ``te`` spec follows the config's ``normalization``)."""
    mask = AttnMaskType.no_mask if vision else AttnMaskType.causal
    qk = IdentityOp
    if kind == "local":
        norm, qkv, fc1, row = local_norm(normalization), ColumnParallelLinear, ColumnParallelLinear, RowParallelLinear
        pre_attn = pre_mlp = norm
        qk = local_norm() if qk_norm else IdentityOp
        backend = attention_backend  # an explicit "te" gives local linears with TE core attention
    elif kind == "te":
        from megatron.core.extensions.transformer_engine import (
            TELayerNormColumnParallelLinear,
            TERowParallelLinear,
        )

        qkv = fc1 = TELayerNormColumnParallelLinear
        row = TERowParallelLinear
        qk = final_norm("te") if qk_norm else IdentityOp
        pre_attn = pre_mlp = IdentityOp
        backend = "te" if attention_backend == "auto" else attention_backend
    else:
        raise ValueError(f"unknown spec {kind!r}; choose from {SPECS}")
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=pre_attn,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": mask},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=qkv,
                    core_attention=ModuleSpec(module=CoreAttention, params={"backend": backend}),
                    linear_proj=row,
                    q_layernorm=qk,
                    k_layernorm=qk,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=pre_mlp,
            mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=fc1, linear_fc2=row)),
            mlp_bda=get_bias_dropout_add,
        ),
    )


def merger_mlp_spec(kind: str = "local") -> ModuleSpec:
    """The patch merger's 2-layer GELU MLP (its norm is built separately)."""
    if kind == "te":
        from megatron.core.extensions.transformer_engine import TEColumnParallelLinear, TERowParallelLinear

        return ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=TEColumnParallelLinear, linear_fc2=TERowParallelLinear))
    return ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear))
