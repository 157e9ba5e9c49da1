"""The HF <-> Megatron name and layout map for Qwen2.5-VL, as pure functions on state dicts.

``hf_to_mcore(hf_state, cfg)`` turns an HF ``Qwen2_5_VLForConditionalGeneration`` state dict into
the full (unsharded, TP=1/PP=1) state dict of our ``Qwen2_5_VLModel``; ``mcore_to_hf`` goes back.
Both naming layouts of transformers are read: ``model.language_model.*`` / ``model.visual.*``
(transformers >= 4.52) and the older ``model.*`` / ``visual.*``; ``mcore_to_hf`` writes either.

Layout changes (everything else is a rename):
- LLM attention: HF q/k/v projections (weight and bias) become one ``linear_qkv`` laid out per
  query group: [q heads of group 0, k of group 0, v of group 0, q heads of group 1, ...], so a
  contiguous TP shard holds whole groups.
- ViT attention: HF's fused ``qkv`` is [all q; all k; all v]; ours is per head [q_h, k_h, v_h].
- MLPs: HF gate_proj and up_proj become ``linear_fc1`` = [gate; up].
- Patch embedding: HF Conv3d weight [C_out, C, T, P, P] is our Linear weight [C_out, C*T*P*P].
- Tied embeddings (3B): HF may or may not store ``lm_head.weight``; we store no output layer.

Norm names depend on the spec: the ``local`` spec has separate norm modules
(``input_layernorm``), the ``te`` spec fuses the norm into the next linear
(``linear_qkv.layer_norm_weight``).
"""

from __future__ import annotations

import torch

from megatron_vlm.models.qwen2_5_vl.config import Qwen2_5_VLConfig

LAYOUTS = ("new", "old")


def detect_layout(hf_names) -> str:
    """'new' if the names use ``model.language_model.`` / ``model.visual.``, else 'old'."""
    for name in hf_names:
        if name.startswith(("model.language_model.", "model.visual.")):
            return "new"
    return "old"


def _prefixes(layout: str) -> tuple[str, str]:
    if layout == "new":
        return "model.language_model.", "model.visual."
    if layout == "old":
        return "model.", "visual."
    raise ValueError(f"unknown HF naming layout {layout!r}; use one of {LAYOUTS}")


def _norm_names(spec: str) -> dict[str, str]:
    """Our names for the two pre-norms of a transformer layer, per spec."""
    if spec == "local":
        return {"attn": "input_layernorm.weight", "mlp": "pre_mlp_layernorm.weight"}
    if spec == "te":
        return {"attn": "self_attention.linear_qkv.layer_norm_weight", "mlp": "mlp.linear_fc1.layer_norm_weight"}
    raise ValueError(f"unknown spec {spec!r}; use 'local' or 'te'")


# ---------------------------------------------------------------- QKV layouts


def fuse_qkv_grouped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, num_groups: int):
    """HF q [nh*d, ...], k/v [ng*d, ...] -> Megatron's per-group [(nh + 2 ng) * d, ...]."""
    d = q.shape[0] // num_heads
    rest = q.shape[1:]
    q = q.reshape(num_groups, num_heads // num_groups * d, *rest)
    k = k.reshape(num_groups, d, *rest)
    v = v.reshape(num_groups, d, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)


def split_qkv_grouped(qkv: torch.Tensor, num_heads: int, num_groups: int):
    """Inverse of :func:`fuse_qkv_grouped`: returns (q, k, v)."""
    per_group = num_heads // num_groups
    d = qkv.shape[0] // (num_heads + 2 * num_groups)
    rest = qkv.shape[1:]
    grouped = qkv.reshape(num_groups, (per_group + 2) * d, *rest)
    q, k, v = torch.split(grouped, [per_group * d, d, d], dim=1)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


def vision_qkv_to_mcore(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """HF ViT qkv [3*nh*d, ...] ([q; k; v]) -> per head [nh * 3 * d, ...] ([q_h, k_h, v_h] ...)."""
    rest = qkv.shape[1:]
    return qkv.reshape(3, num_heads, -1, *rest).transpose(0, 1).reshape(-1, *rest)


def vision_qkv_to_hf(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    rest = qkv.shape[1:]
    return qkv.reshape(num_heads, 3, -1, *rest).transpose(0, 1).reshape(-1, *rest)


# ---------------------------------------------------------------- the map


class HFTensors:
    """An HF state dict read by name, which remembers what was read: the map of each family takes
    every tensor it converts, then ``check_all_taken`` refuses a checkpoint with tensors left over."""

    def __init__(self, hf_state: dict, where: str = ""):
        """``where`` is said after a missing name (the naming layout, say)."""
        self.hf_state, self.where = hf_state, where
        self.taken: set[str] = set()

    def take(self, name: str) -> torch.Tensor:
        if name not in self.hf_state:
            raise KeyError(f"HF state dict has no {name!r}{self.where}")
        self.taken.add(name)
        return self.hf_state[name]

    def skip(self, name: str) -> None:
        """``name`` may be there and is not needed (a tied ``lm_head.weight``: we keep no copy)."""
        if name in self.hf_state:
            self.taken.add(name)

    def check_all_taken(self) -> None:
        unused = sorted(set(self.hf_state) - self.taken)
        if unused:
            raise KeyError(f"{len(unused)} HF tensors have no Megatron name, e.g. {unused[:3]}")


def hf_to_mcore(hf_state: dict, cfg: Qwen2_5_VLConfig, spec: str = "local") -> dict:
    """Full Megatron state dict (global layer numbers) from an HF state dict of either layout."""
    layout = detect_layout(hf_state)
    lm, vis = _prefixes(layout)
    t, v = cfg.text, cfg.vision
    norms = _norm_names(spec)
    hf = HFTensors(hf_state, f" (layout {layout!r})")
    take = hf.take

    out: dict[str, torch.Tensor] = {}
    out["language_model.embedding.word_embeddings.weight"] = take(lm + "embed_tokens.weight")
    for i in range(t.num_hidden_layers):
        src, dst = f"{lm}layers.{i}.", f"language_model.decoder.layers.{i}."
        a = src + "self_attn."
        for kind in ("weight", "bias"):
            out[dst + f"self_attention.linear_qkv.{kind}"] = fuse_qkv_grouped(
                take(a + f"q_proj.{kind}"), take(a + f"k_proj.{kind}"), take(a + f"v_proj.{kind}"),
                t.num_attention_heads, t.num_key_value_heads,
            )
        out[dst + "self_attention.linear_proj.weight"] = take(a + "o_proj.weight")
        out[dst + "mlp.linear_fc1.weight"] = torch.cat(
            [take(src + "mlp.gate_proj.weight"), take(src + "mlp.up_proj.weight")]
        )
        out[dst + "mlp.linear_fc2.weight"] = take(src + "mlp.down_proj.weight")
        out[dst + norms["attn"]] = take(src + "input_layernorm.weight")
        out[dst + norms["mlp"]] = take(src + "post_attention_layernorm.weight")
    out["language_model.decoder.final_layernorm.weight"] = take(lm + "norm.weight")
    hf.skip("lm_head.weight")
    if not t.tie_word_embeddings:
        out["language_model.output_layer.weight"] = take("lm_head.weight")

    out["vision.patch_embed.weight"] = take(vis + "patch_embed.proj.weight").reshape(v.hidden_size, -1)
    for i in range(v.depth):
        src, dst = f"{vis}blocks.{i}.", f"vision.decoder.layers.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"self_attention.linear_qkv.{kind}"] = vision_qkv_to_mcore(
                take(src + f"attn.qkv.{kind}"), v.num_heads
            )
            out[dst + f"self_attention.linear_proj.{kind}"] = take(src + f"attn.proj.{kind}")
            out[dst + f"mlp.linear_fc1.{kind}"] = torch.cat(
                [take(src + f"mlp.gate_proj.{kind}"), take(src + f"mlp.up_proj.{kind}")]
            )
            out[dst + f"mlp.linear_fc2.{kind}"] = take(src + f"mlp.down_proj.{kind}")
        out[dst + norms["attn"]] = take(src + "norm1.weight")
        out[dst + norms["mlp"]] = take(src + "norm2.weight")
    out["vision.merger.norm.weight"] = take(vis + "merger.ln_q.weight")
    for kind in ("weight", "bias"):
        out[f"vision.merger.mlp.linear_fc1.{kind}"] = take(vis + f"merger.mlp.0.{kind}")
        out[f"vision.merger.mlp.linear_fc2.{kind}"] = take(vis + f"merger.mlp.2.{kind}")
    hf.check_all_taken()
    return out


def mcore_to_hf(mcore_state: dict, cfg: Qwen2_5_VLConfig, spec: str = "local", layout: str = "new") -> dict:
    """HF state dict in the chosen naming layout from a full Megatron state dict.

    With tied embeddings ``lm_head.weight`` is written too (equal to the embedding), as
    ``save_pretrained`` tolerates and every loader expects either way.
    """
    lm, vis = _prefixes(layout)
    t, v = cfg.text, cfg.vision
    norms = _norm_names(spec)
    m = mcore_state
    out: dict[str, torch.Tensor] = {}
    out[lm + "embed_tokens.weight"] = m["language_model.embedding.word_embeddings.weight"]
    for i in range(t.num_hidden_layers):
        src, dst = f"language_model.decoder.layers.{i}.", f"{lm}layers.{i}."
        for kind in ("weight", "bias"):
            q, k, vv = split_qkv_grouped(
                m[src + f"self_attention.linear_qkv.{kind}"], t.num_attention_heads, t.num_key_value_heads
            )
            out[dst + f"self_attn.q_proj.{kind}"] = q
            out[dst + f"self_attn.k_proj.{kind}"] = k
            out[dst + f"self_attn.v_proj.{kind}"] = vv
        out[dst + "self_attn.o_proj.weight"] = m[src + "self_attention.linear_proj.weight"]
        gate, up = torch.chunk(m[src + "mlp.linear_fc1.weight"], 2, dim=0)
        out[dst + "mlp.gate_proj.weight"] = gate
        out[dst + "mlp.up_proj.weight"] = up
        out[dst + "mlp.down_proj.weight"] = m[src + "mlp.linear_fc2.weight"]
        out[dst + "input_layernorm.weight"] = m[src + norms["attn"]]
        out[dst + "post_attention_layernorm.weight"] = m[src + norms["mlp"]]
    out[lm + "norm.weight"] = m["language_model.decoder.final_layernorm.weight"]
    out["lm_head.weight"] = (
        m["language_model.embedding.word_embeddings.weight"]
        if t.tie_word_embeddings
        else m["language_model.output_layer.weight"]
    )
    patch = m["vision.patch_embed.weight"]
    out[vis + "patch_embed.proj.weight"] = patch.reshape(
        v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size
    )
    for i in range(v.depth):
        src, dst = f"vision.decoder.layers.{i}.", f"{vis}blocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.qkv.{kind}"] = vision_qkv_to_hf(m[src + f"self_attention.linear_qkv.{kind}"], v.num_heads)
            out[dst + f"attn.proj.{kind}"] = m[src + f"self_attention.linear_proj.{kind}"]
            gate, up = torch.chunk(m[src + f"mlp.linear_fc1.{kind}"], 2, dim=0)
            out[dst + f"mlp.gate_proj.{kind}"] = gate
            out[dst + f"mlp.up_proj.{kind}"] = up
            out[dst + f"mlp.down_proj.{kind}"] = m[src + f"mlp.linear_fc2.{kind}"]
        out[dst + "norm1.weight"] = m[src + norms["attn"]]
        out[dst + "norm2.weight"] = m[src + norms["mlp"]]
    out[vis + "merger.ln_q.weight"] = m["vision.merger.norm.weight"]
    for kind in ("weight", "bias"):
        out[vis + f"merger.mlp.0.{kind}"] = m[f"vision.merger.mlp.linear_fc1.{kind}"]
        out[vis + f"merger.mlp.2.{kind}"] = m[f"vision.merger.mlp.linear_fc2.{kind}"]
    return out
