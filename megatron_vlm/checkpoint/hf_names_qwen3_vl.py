"""The HF <-> Megatron name and layout map for Qwen3-VL, as pure functions on state dicts.

``hf_to_mcore(hf_state, cfg)`` turns an HF ``Qwen3VLForConditionalGeneration`` state dict
(``model.language_model.*``, ``model.visual.*``, ``lm_head.weight``) into the full (TP=1/PP=1)
state dict of our ``Qwen3VLModel``; ``mcore_to_hf`` goes back. The layout changes are Qwen2.5-VL's
(checkpoint/hf_names.py: grouped LLM QKV, per-head ViT QKV, [gate; up], Conv3d -> Linear) plus:
- LLM QK-norm: ``self_attn.q_norm`` / ``k_norm`` -> ``self_attention.q_layernorm`` / ``k_layernorm``;
  no QKV bias.
- ViT: LayerNorms with bias, a plain (not gated) MLP, the patch embedding's bias, the learned
  position table, and one merger per DeepStack tap (``deepstack_merger_list.j`` ->
  ``vision.deepstack_mergers.j``), each with its own LayerNorm.
"""

from __future__ import annotations

import torch

from megatron_vlm.checkpoint.hf_names import (
    HFTensors,
    _norm_names,
    fuse_qkv_grouped,
    split_qkv_grouped,
    vision_qkv_to_hf,
    vision_qkv_to_mcore,
)
from megatron_vlm.models.qwen3_vl.config import Qwen3VLConfig

LM, VIS = "model.language_model.", "model.visual."
LAYOUTS = ("new",)
"""Qwen3-VL checkpoints exist in transformers' new naming layout only."""


def _pairs(cfg: Qwen3VLConfig, spec: str) -> list[tuple[str, str]]:
    """(HF name, Megatron name) of every tensor that is a plain rename."""
    t, v = cfg.text, cfg.vision
    norms = _norm_names(spec)
    out = [(LM + "embed_tokens.weight", "language_model.embedding.word_embeddings.weight"),
           (LM + "norm.weight", "language_model.decoder.final_layernorm.weight")]
    if not t.tie_word_embeddings:
        out.append(("lm_head.weight", "language_model.output_layer.weight"))
    for i in range(t.num_hidden_layers):
        src, dst = f"{LM}layers.{i}.", f"language_model.decoder.layers.{i}."
        out += [
            (src + "self_attn.o_proj.weight", dst + "self_attention.linear_proj.weight"),
            (src + "self_attn.q_norm.weight", dst + "self_attention.q_layernorm.weight"),
            (src + "self_attn.k_norm.weight", dst + "self_attention.k_layernorm.weight"),
            (src + "mlp.down_proj.weight", dst + "mlp.linear_fc2.weight"),
            (src + "input_layernorm.weight", dst + norms["attn"]),
            (src + "post_attention_layernorm.weight", dst + norms["mlp"]),
        ]
    out += [(VIS + "patch_embed.proj.bias", "vision.patch_embed.bias"), (VIS + "pos_embed.weight", "vision.pos_embed.weight")]
    for i in range(v.depth):
        src, dst = f"{VIS}blocks.{i}.", f"vision.decoder.layers.{i}."
        for kind in ("weight", "bias"):
            out += [
                (src + f"attn.proj.{kind}", dst + f"self_attention.linear_proj.{kind}"),
                (src + f"mlp.linear_fc1.{kind}", dst + f"mlp.linear_fc1.{kind}"),
                (src + f"mlp.linear_fc2.{kind}", dst + f"mlp.linear_fc2.{kind}"),
                (src + f"norm1.{kind}", dst + norms["attn"].replace("weight", kind)),
                (src + f"norm2.{kind}", dst + norms["mlp"].replace("weight", kind)),
            ]
    mergers = [("merger.", "vision.merger.")] + [
        (f"deepstack_merger_list.{j}.", f"vision.deepstack_mergers.{j}.") for j in range(len(v.deepstack_visual_indexes))
    ]
    for src, dst in mergers:
        for kind in ("weight", "bias"):
            out += [(VIS + src + f"norm.{kind}", dst + f"norm.{kind}"),
                    (VIS + src + f"linear_fc1.{kind}", dst + f"mlp.linear_fc1.{kind}"),
                    (VIS + src + f"linear_fc2.{kind}", dst + f"mlp.linear_fc2.{kind}")]
    return out


def hf_to_mcore(hf_state: dict, cfg: Qwen3VLConfig, spec: str = "local") -> dict:
    """Full Megatron state dict (global layer numbers) from an HF Qwen3-VL state dict."""
    t, v = cfg.text, cfg.vision
    hf = HFTensors(hf_state)
    take = hf.take
    out = {dst: take(src) for src, dst in _pairs(cfg, spec)}
    for i in range(t.num_hidden_layers):
        src, dst = f"{LM}layers.{i}.", f"language_model.decoder.layers.{i}."
        out[dst + "self_attention.linear_qkv.weight"] = fuse_qkv_grouped(
            take(src + "self_attn.q_proj.weight"), take(src + "self_attn.k_proj.weight"),
            take(src + "self_attn.v_proj.weight"), t.num_attention_heads, t.num_key_value_heads,
        )
        out[dst + "mlp.linear_fc1.weight"] = torch.cat([take(src + "mlp.gate_proj.weight"), take(src + "mlp.up_proj.weight")])
    out["vision.patch_embed.weight"] = take(VIS + "patch_embed.proj.weight").reshape(v.hidden_size, -1)
    for i in range(v.depth):
        for kind in ("weight", "bias"):
            out[f"vision.decoder.layers.{i}.self_attention.linear_qkv.{kind}"] = vision_qkv_to_mcore(
                take(f"{VIS}blocks.{i}.attn.qkv.{kind}"), v.num_heads
            )
    hf.skip("lm_head.weight")
    hf.check_all_taken()
    return out


def mcore_to_hf(mcore_state: dict, cfg: Qwen3VLConfig, spec: str = "local", layout: str = "new") -> dict:
    """HF state dict from a full Megatron state dict (with tied embeddings ``lm_head.weight`` too)."""
    if layout not in LAYOUTS:
        raise ValueError(f"Qwen3-VL has no {layout!r} HF naming layout; use one of {LAYOUTS}")
    t, v = cfg.text, cfg.vision
    m = mcore_state
    out = {src: m[dst] for src, dst in _pairs(cfg, spec)}
    if t.tie_word_embeddings:
        out["lm_head.weight"] = m["language_model.embedding.word_embeddings.weight"]
    for i in range(t.num_hidden_layers):
        src, dst = f"language_model.decoder.layers.{i}.", f"{LM}layers.{i}."
        q, k, vv = split_qkv_grouped(m[src + "self_attention.linear_qkv.weight"], t.num_attention_heads, t.num_key_value_heads)
        out[dst + "self_attn.q_proj.weight"], out[dst + "self_attn.k_proj.weight"], out[dst + "self_attn.v_proj.weight"] = q, k, vv
        out[dst + "mlp.gate_proj.weight"], out[dst + "mlp.up_proj.weight"] = torch.chunk(m[src + "mlp.linear_fc1.weight"], 2, dim=0)
    out[VIS + "patch_embed.proj.weight"] = m["vision.patch_embed.weight"].reshape(
        v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size
    )
    for i in range(v.depth):
        for kind in ("weight", "bias"):
            out[f"{VIS}blocks.{i}.attn.qkv.{kind}"] = vision_qkv_to_hf(
                m[f"vision.decoder.layers.{i}.self_attention.linear_qkv.{kind}"], v.num_heads
            )
    return out
