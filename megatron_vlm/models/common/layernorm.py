"""LayerNorm (weight and bias) for Megatron-Core's local spec, in the config's parameter dtype.

Megatron's ``WrappedTorchNorm`` builds ``torch.nn.LayerNorm`` in float32 whatever
``config.params_dtype`` says, so a bf16 model built without ``Float16Module`` (conversion,
resharding) would hold and save float32 norms beside bf16 weights. Used by Qwen3-VL's ViT and
mergers, which never run with sequence parallelism (the ViT has none); the arithmetic is torch's
``F.layer_norm`` in the input dtype, as HF's ``nn.LayerNorm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer import TransformerConfig


class LayerNorm(torch.nn.Module):
    """``y = (x - mean) / sqrt(var + eps) * weight + bias`` over the last dimension.

    Takes the keyword arguments Megatron passes to a norm slot (``config``, ``hidden_size``, ``eps``, ...)."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_unused):
        super().__init__()
        if config.sequence_parallel:
            raise ValueError("this LayerNorm is for towers without sequence parallelism (the ViT)")
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.bias = torch.nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
