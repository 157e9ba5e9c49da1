"""A tiny Megatron-Core GPT (local spec, our RMSNorm, SwiGLU, GQA, QKV bias, rope) for multi-rank tests.

Helpers run inside a rank started by tests/dist_utils.run_distributed after
``megatron_vlm.parallel.initialize``: build the model for the current layout, save/load it as a
Megatron dist checkpoint, run Megatron's forward-backward schedule over fixed micro-batches, and
gather parameters or gradients back to full (TP=1, PP=1) tensors keyed by TP=1 parameter names.
"""

from __future__ import annotations

import re

import torch
import torch.distributed as dist

from megatron_vlm.parallel import ParallelLayout

VOCAB = 128
SEQ = 32
HIDDEN = 64
LAYERS = 4
MICRO_BATCH = 2
NUM_MICRO_BATCHES = 3


def tiny_config(layout: ParallelLayout):
    from megatron.core.transformer import TransformerConfig

    return TransformerConfig(
        num_layers=LAYERS,
        hidden_size=HIDDEN,
        num_attention_heads=4,
        num_query_groups=2,
        ffn_hidden_size=128,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        normalization="RMSNorm",
        layernorm_epsilon=1e-6,
        add_bias_linear=False,
        add_qkv_bias=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        sequence_parallel=layout.sequence_parallel,
        pipeline_dtype=torch.float32,
        params_dtype=torch.float32,
        use_cpu_initialization=True,
    )


def build_model(layout: ParallelLayout):
    """The GPTModel for this rank's pipeline stage (not wrapped)."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    from megatron_vlm.models.common.local_spec import local_block_spec

    config = tiny_config(layout)
    return GPTModel(
        config=config,
        transformer_layer_spec=local_block_spec(config),
        vocab_size=VOCAB,
        max_sequence_length=SEQ,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        position_embedding_type="rope",
        rotary_base=1_000_000,
        share_embeddings_and_output_weights=False,
    )


def randomize_(model, seed: int = 0) -> None:
    """Give every parameter (norm weights and biases too, which init to 1/0) random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def save_checkpoint(model, path: str) -> None:
    import multiprocessing

    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    # Test speed only: the writer's results queue lives in a Manager that Megatron starts with
    # "spawn" (a fresh interpreter, ~5 s per rank on 2 busy cores); a forked one does the same job.
    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = multiprocessing.get_context("fork").Manager().Queue()
    dist_checkpointing.save(model.sharded_state_dict(), path)


def load_checkpoint(model, path: str) -> None:
    from megatron.core import dist_checkpointing

    state = dist_checkpointing.load(model.sharded_state_dict(), path)
    model.load_state_dict(state)


def batches() -> list[dict]:
    """NUM_MICRO_BATCHES fixed micro-batches (identical on every rank)."""
    gen = torch.Generator().manual_seed(1234)
    out = []
    for _ in range(NUM_MICRO_BATCHES):
        tokens = torch.randint(0, VOCAB, (MICRO_BATCH, SEQ + 1), generator=gen)
        out.append(
            {
                "tokens": tokens[:, :-1].contiguous(),
                "labels": tokens[:, 1:].contiguous(),
                "position_ids": torch.arange(SEQ).expand(MICRO_BATCH, SEQ).contiguous(),
            }
        )
    return out


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    per_token_loss = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])

    def loss_func(output):
        loss = output.float().mean()
        # clone: the schedule divides the returned loss in place by the number of micro-batches
        return loss, {"loss": loss.detach().clone()}

    return per_token_loss, loss_func


def forward_backward(model, layout: ParallelLayout, forward_only: bool = False) -> float | None:
    """Mean loss over all micro-batches through Megatron's schedule (None off the last stage)."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    losses = get_forward_backward_func()(
        forward_step_func=_forward_step,
        data_iterator=iter(batches()),
        model=[model],
        num_microbatches=NUM_MICRO_BATCHES,
        seq_length=SEQ,
        micro_batch_size=MICRO_BATCH,
        forward_only=forward_only,
    )
    if not parallel_state.is_pipeline_last_stage():
        return None
    return float(torch.stack([d["loss"] for d in losses]).mean())


def global_name(name: str, config) -> str:
    """Rename a stage-local ``decoder.layers.<i>.`` to its global layer index."""
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    offset = get_transformer_layer_offset(config)
    return re.sub(r"decoder\.layers\.(\d+)\.", lambda m: f"decoder.layers.{int(m.group(1)) + offset}.", name)


def gather_full(module, config, which: str = "param") -> dict[str, torch.Tensor]:
    """This stage's parameters (``which="param"``) or gradients (``"grad"``, read from ``main_grad``
    when wrapped in Megatron DDP) as full TP=1 tensors, keyed by TP=1 names."""
    from megatron.core import parallel_state

    group = parallel_state.get_tensor_model_parallel_group()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    out = {}
    for name, p in module.named_parameters():
        if which == "param":
            t = p.detach()
        else:
            t = getattr(p, "main_grad", None)
            t = p.grad if t is None else t
            assert t is not None, f"no gradient for {name}"
        t = t.detach().float().clone()
        if getattr(p, "tensor_model_parallel", False) and tp > 1:
            glu = "linear_fc1" in name and config.gated_linear_unit
            assert getattr(p, "partition_stride", 1) == (2 if glu else 1), name
            shards = [torch.empty_like(t) for _ in range(tp)]
            dist.all_gather(shards, t.contiguous(), group=group)
            dim = p.partition_dim
            if glu:
                # Each rank holds [gate_r; up_r]; the full weight is [gate_0..gate_n; up_0..up_n].
                halves = [s.chunk(2, dim=dim) for s in shards]
                t = torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=dim)
            else:
                t = torch.cat(shards, dim=dim)
        out[global_name(name, config)] = t
    return out


def wrap_ddp(model, config):
    """Megatron's DDP wrapper, so finalize_model_grads does what the trainer's step does."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False)
    return DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)


def _logits_step(data_iterator, model):
    from megatron.core import parallel_state

    batch = next(data_iterator)
    logits = model(batch["tokens"], batch["position_ids"], None)  # [b, s, vocab / tp]

    def collect(output):
        group = parallel_state.get_tensor_model_parallel_group()
        shards = [torch.empty_like(output) for _ in range(parallel_state.get_tensor_model_parallel_world_size())]
        dist.all_gather(shards, output.contiguous(), group=group)
        return output.new_zeros(()), {"logits": torch.cat(shards, dim=-1).detach().clone()}

    return logits, collect


def logits(model) -> torch.Tensor | None:
    """Full-vocabulary logits [micro-batches, b, s, vocab] through the forward-only schedule
    (None off the last pipeline stage)."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    with torch.no_grad():
        out = get_forward_backward_func()(
            forward_step_func=_logits_step,
            data_iterator=iter(batches()),
            model=[model],
            num_microbatches=NUM_MICRO_BATCHES,
            seq_length=SEQ,
            micro_batch_size=MICRO_BATCH,
            forward_only=True,
        )
    if not parallel_state.is_pipeline_last_stage():
        return None
    return torch.stack([d["logits"] for d in out])
