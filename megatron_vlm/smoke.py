"""CPU smoke job: a tiny Megatron-Core GPT trained for a few steps at TP=2 with sequence parallelism.

    torchrun --nproc-per-node 2 -m megatron_vlm.smoke

Placeholder for the README's main command until the LongPT trainer lands.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist

from megatron_vlm.parallel import ParallelLayout, destroy, initialize


def main(steps: int = 5) -> None:
    # Megatron's "no TE/apex, falling back" notes and torch's collective-rename notices are
    # expected on CPU; keep the job's output to what it did.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.core")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    initialize(ParallelLayout(tp=2, sequence_parallel=True))
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer import TransformerConfig

    from megatron_vlm.models.common.local_spec import local_block_spec

    cfg = TransformerConfig(
        num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=128,
        gated_linear_unit=True, activation_func=torch.nn.functional.silu, normalization="RMSNorm",
        add_bias_linear=False, tensor_model_parallel_size=2, sequence_parallel=True, use_cpu_initialization=True,
        hidden_dropout=0.0, attention_dropout=0.0,
    )
    model = GPTModel(
        config=cfg, transformer_layer_spec=local_block_spec(cfg),
        vocab_size=128, max_sequence_length=64, position_embedding_type="rope",
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 128, (4, 32), generator=gen)
    positions = torch.arange(32).expand(4, 32)
    for step in range(steps):
        loss = model(tokens, positions, None, labels=tokens).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if dist.get_rank() == 0:
            print(f"[smoke] step {step + 1}/{steps} loss {loss.item():.4f}", flush=True)
    destroy()


if __name__ == "__main__":
    main()
