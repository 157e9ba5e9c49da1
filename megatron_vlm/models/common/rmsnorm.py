"""RMSNorm for Megatron-Core's local (pure PyTorch) spec that works under sequence parallelism.

Megatron's ``WrappedTorchNorm`` asserts ``not config.sequence_parallel``. RMSNorm is per token, so
nothing changes in the forward pass when the sequence is sharded across the tensor-parallel group;
only the weight gradient becomes partial on each rank. Marking the weight ``sequence_parallel``
makes Megatron's ``finalize_model_grads`` sum that gradient across the TP group (as it does for
Transformer Engine's norms), so a training step is identical to the unsharded one.

The arithmetic follows HF transformers' Qwen2 RMSNorm: normalize in fp32, cast back to the input
dtype, then scale by the weight.
"""

from __future__ import annotations

import torch
from megatron.core.transformer import TransformerConfig


class RMSNorm(torch.nn.Module):
    """``y = weight * (x / sqrt(mean(x**2, -1) + eps))`` over the last dimension.

    Takes the keyword arguments Megatron passes to a norm slot (``config``, ``hidden_size``,
    ``eps``, ...). With ``config.layernorm_zero_centered_gamma`` the stored weight is ``gamma - 1``
    (initialised to 0), as in Megatron's other norms.
    """

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_unused):
        super().__init__()
        self.config = config
        self.eps = eps
        self.zero_centered_gamma = config.layernorm_zero_centered_gamma
        init = torch.zeros if self.zero_centered_gamma else torch.ones
        self.weight = torch.nn.Parameter(init(hidden_size, dtype=config.params_dtype))
        # Read by finalize_model_grads: under SP each TP rank saw only its slice of the tokens.
        self.weight.sequence_parallel = config.sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        weight = self.weight + 1 if self.zero_centered_gamma else self.weight
        return weight * normed.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, sequence_parallel={self.config.sequence_parallel}"
