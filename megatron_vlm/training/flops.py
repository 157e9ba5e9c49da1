"""Model FLOPs of a training step, for the MFU estimate: the LLM per real token, the ViT per image patch.

    model = flops_model_for(recipe, provider)
    flops = model.step_flops(seq_lengths, image_grids)   # real tokens per sample, [t, h, w] per image
    mfu = flops / step_seconds / (num_devices * peak_flops_per_device)

Counting rules (model FLOPs: what the math needs, not what the hardware did):

- Matmuls only. A weight W of shape [m, n] applied to one row costs 2mn FLOPs forward. Backward
  costs 2mn again for the gradient w.r.t. the input, counted only when some parameter before it
  (a norm's weight included) is trained, as otherwise autograd never asks for it, and 2mn for the
  gradient w.r.t. the weight, counted only when W is trained. Norms, biases, activations, rope
  and softmax are elementwise and left out; the input embedding is a lookup (0 FLOPs); the LM
  head is a matmul and counts. The LLM always trains, so its matmuls cost 6 per weight per token.
- Attention: per layer, for every (query, key) pair attended, QK^T and AV cost 2*d each per head,
  so 4 * heads * head_dim forward; backward is twice that when the attention's inputs need
  gradients (trained ViT, always in the LLM), else nothing.
- Pairs. LLM: causal within each packed sample, so a sample of L real tokens has L(L+1)/2 pairs,
  summed over samples (from the real lengths, never the padded length: attention never crosses a
  sample, and padding is not model work). ViT: bidirectional, n^2 pairs per group of n patches;
  full-attention blocks group a frame (h*w patches), window blocks group windows of
  ``window`` x ``window`` merged tokens (merge^2 patches each) tiled from the frame's top-left,
  edge windows smaller, so a frame's window pairs are merge^4 * sum_i(r_i^2) * sum_j(c_j^2) for
  window row heights r_i and column widths c_j in merged tokens.
- Counted on real tokens and patches only: padding (the pack's tail, ``pad_multiple``, CP pad
  slots) and activation recompute are not model FLOPs.

So the LLM costs, per real token, 6 * (its matmul weights: attention and MLP of every layer plus
the LM head) and, per sample, 3 * 4 * layers * heads * head_dim * L(L+1)/2. The ViT costs per
patch m_blocks * (block matmul weights) + m_embed * (patch embedding), per merged token m_merger *
(merger weights), plus its attention, where with the tower trained m_blocks = 6, m_embed = 4
(the pixels need no gradient), and frozen m_blocks = 2, m_embed = 2; the merger has m_merger = 6
when trained (its norm's weight, before its first matmul, needs the input gradient), 4 when
frozen on a trained tower, 2 when both are frozen.

Checked in tests/unit/test_train_flops.py by hand for tiny shapes, and the matmul part against
``torch.utils.flop_counter`` on the real model's forward and backward for each freezing choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LlmShape:
    """The decoder's matmul shapes (Qwen2 / Megatron GPT: GQA, SwiGLU): a view of a model config
    (``of``), never a second statement of its sizes."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int
    gated_mlp: bool = True

    @classmethod
    def of(cls, text) -> LlmShape:
        """From a decoder config (models.qwen2_5_vl.config.TextConfig, the GPT provider's too)."""
        return cls(text.num_hidden_layers, text.hidden_size, text.num_attention_heads, text.num_key_value_heads,
                   text.head_dim, text.intermediate_size, text.vocab_size)

    def matmul_weights_per_token(self) -> int:
        """Weights every token is multiplied by: q, k, v, o and the MLP of each layer, plus the LM head."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        mlp = (3 if self.gated_mlp else 2) * h * self.ffn_hidden_size
        return self.num_layers * (h * q + 2 * h * kv + q * h + mlp) + h * self.vocab_size


@dataclass(frozen=True)
class VitShape:
    """A vision tower's matmul shapes and attention grouping: a view of its config (``of``).

    Qwen2.5-VL: SwiGLU blocks, window attention but in the full blocks, one merger. Qwen3-VL: plain
    GELU MLP blocks, full attention everywhere, and one more merger per DeepStack tap (its learned
    position grid is resampled by a weighted sum of rows: elementwise, 0 FLOPs)."""

    depth: int
    hidden_size: int
    intermediate_size: int
    patch_dim: int
    spatial_merge_size: int
    window: int
    """Window side in merged tokens (window_size / merge / patch: 112 px -> 4)."""
    num_full_blocks: int
    out_hidden_size: int
    gated_mlp: bool = True
    """SwiGLU (gate, up, down) blocks; False: fc1, fc2."""
    mergers: int = 1
    """The merger plus one per DeepStack tap, all of the same shape."""

    @classmethod
    def of(cls, v) -> VitShape:
        """From a family's VisionConfig (models/qwen2_5_vl/config.py, models/qwen3_vl/config.py)."""
        return cls(v.depth, v.hidden_size, v.intermediate_size, v.patch_dim, v.spatial_merge_size,
                   v.window_size // v.spatial_merge_size // v.patch_size, len(v.fullatt_block_indexes), v.out_hidden_size,
                   v.gated_mlp, 1 + len(v.deepstack_visual_indexes))

    def block_weights_per_patch(self) -> int:
        h = self.hidden_size
        mlp = (3 if self.gated_mlp else 2) * h * self.intermediate_size
        return self.depth * (4 * h * h + mlp)  # qkv + proj, MLP

    def merger_weights_per_token(self) -> int:
        merged = self.hidden_size * self.spatial_merge_size**2
        return self.mergers * (merged * merged + merged * self.out_hidden_size)

    def attention_pairs(self, grid_thw: Sequence[int]) -> tuple[int, int]:
        """(pairs in one full-attention block, pairs in one window block) for one image or video."""
        t, h, w = (int(x) for x in grid_thw)
        m = self.spatial_merge_size
        if not self.window:  # no window blocks
            return t * (h * w) ** 2, 0
        rows, cols = _tiles(h // m, self.window), _tiles(w // m, self.window)
        window = m**4 * sum(r * r for r in rows) * sum(c * c for c in cols)
        return t * (h * w) ** 2, t * window


def _tiles(length: int, size: int) -> list[int]:
    return [min(size, length - start) for start in range(0, length, size)]


@dataclass(frozen=True)
class FlopsModel:
    """Training FLOPs of the LLM (always trained) and, for a VLM, of the ViT as the recipe freezes it."""

    llm: LlmShape
    vit: VitShape | None = None
    vit_trained: bool = True
    merger_trained: bool = True

    def parts(self, seq_lengths: Sequence[int], image_grids: Sequence[Sequence[int]] = ()) -> dict[str, float]:
        """FLOPs of a step by part: ``llm_matmul``, ``llm_attention``, ``vit_matmul``, ``vit_attention``,
        for samples of these real lengths and images of these [t, h, w] grids."""
        s, v = self.llm, self.vit
        out = {
            "llm_matmul": 6.0 * s.matmul_weights_per_token() * sum(seq_lengths),
            "llm_attention": 3.0 * 4 * s.num_layers * s.num_heads * s.head_dim * sum(n * (n + 1) // 2 for n in seq_lengths),
            "vit_matmul": 0.0,
            "vit_attention": 0.0,
        }
        if v is None or not image_grids:
            return out
        patches = sum(int(t) * int(h) * int(w) for t, h, w in image_grids)
        merged = patches // v.spatial_merge_size**2
        full = window = 0
        for grid in image_grids:
            f, w = v.attention_pairs(grid)
            full, window = full + f, window + w
        block = 6 if self.vit_trained else 2
        embed = 4 if self.vit_trained else 2  # the pixels never need a gradient
        # the merger's input gradient feeds its own norm's weight when the merger trains, else the tower's
        merger = 2 + (2 if self.merger_trained else 0) + (2 if self.merger_trained or self.vit_trained else 0)
        out["vit_matmul"] = float(block * v.block_weights_per_patch() * patches
                                  + embed * v.patch_dim * v.hidden_size * patches
                                  + merger * v.merger_weights_per_token() * merged)
        out["vit_attention"] = float((3 if self.vit_trained else 1) * 4 * v.hidden_size * (
            v.num_full_blocks * full + (v.depth - v.num_full_blocks) * window))
        return out

    def llm_flops(self, seq_lengths: Sequence[int]) -> float:
        """Forward + backward FLOPs of the LLM on samples of these real lengths."""
        parts = self.parts(seq_lengths)
        return parts["llm_matmul"] + parts["llm_attention"]

    def vit_flops(self, image_grids: Sequence[Sequence[int]]) -> float:
        """Forward (+ backward where needed) FLOPs of the ViT and merger on these images."""
        parts = self.parts((), image_grids)
        return parts["vit_matmul"] + parts["vit_attention"]

    def step_flops(self, seq_lengths: Sequence[int], image_grids: Sequence[Sequence[int]] = ()) -> float:
        """FLOPs of a step over the whole global batch: real sample lengths and every image's [t, h, w]."""
        return sum(self.parts(seq_lengths, image_grids).values())

    @classmethod
    def from_qwen(cls, cfg, freeze_vision: bool = False, freeze_merger: bool = False) -> FlopsModel:
        """From a family's model config (Qwen2_5_VLConfig, Qwen3VLConfig)."""
        return cls(LlmShape.of(cfg.text), VitShape.of(cfg.vision), vit_trained=not freeze_vision,
                   merger_trained=not freeze_merger)


def flops_model_for(recipe, provider) -> FlopsModel:
    """The FLOPs model of the recipe's model (``gpt``: text only; a VLM family: LLM + ViT)."""
    if recipe.model.kind == "gpt":
        return FlopsModel(LlmShape.of(provider.model_config(recipe)))
    return FlopsModel.from_qwen(provider.model_config(recipe), recipe.model.freeze_vision, recipe.model.freeze_merger)
