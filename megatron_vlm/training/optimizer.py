"""Model chunks wrapped for data parallelism, and Megatron's (distributed) optimizer over them.

``wrap_ddp`` puts each chunk in Megatron's DistributedDataParallel (fp32 grad buffers, grads
summed, not averaged, because the loss is normalised per token in finalize_model_grads);
``build_optimizer`` makes AdamW (or SGD) with gradient clipping, bf16 master weights in fp32, and
ZeRO-1 sharding when ``parallel.distributed_optimizer``. ``set_learning_rate`` applies the
schedule from budget.py. ``grads_are_finite`` is the NaN/Inf check before a step.

Megatron's optimizer checks ``param.type() == "torch.cuda.FloatTensor"``; on CPU (tests, the
quick start) its build and step run in parallel.cpu_compat's ``cuda_type_names()``.
"""

from __future__ import annotations

import torch

from megatron_vlm.parallel.cpu_compat import cuda_type_names
from megatron_vlm.parallel.state import device
from megatron_vlm.training.config import Recipe


def wrap_ddp(chunks: list, config, recipe: Recipe) -> list:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        use_distributed_optimizer=recipe.parallel.distributed_optimizer,
        overlap_grad_reduce=False,
        average_in_collective=False,
    )
    return [
        DistributedDataParallel(config, ddp_config, chunk, disable_bucketing=i > 0)
        for i, chunk in enumerate(chunks)
    ]


def build_optimizer(chunks: list, recipe: Recipe):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    t = recipe.train
    config = OptimizerConfig(
        optimizer=t.optimizer, lr=t.lr, min_lr=t.min_lr, weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1, adam_beta2=t.adam_beta2, adam_eps=t.adam_eps, sgd_momentum=0.0,
        clip_grad=t.clip_grad, bf16=t.precision == "bf16", params_dtype=torch.bfloat16 if t.precision == "bf16" else torch.float32,
        use_distributed_optimizer=recipe.parallel.distributed_optimizer,
    )
    with cuda_type_names():
        return get_megatron_optimizer(config, chunks)


def set_learning_rate(optimizer, lr: float, weight_decay: float) -> None:
    """Apply this step's LR and weight decay, honouring Megatron's per-group multipliers
    (biases and norms have ``wd_mult`` 0)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
        group["weight_decay"] = weight_decay * group.get("wd_mult", 1.0)


def optimizer_step(optimizer):
    """optimizer.step() -> (updated, grad_norm, num_zeros)."""
    with cuda_type_names():
        return optimizer.step()


def grads_are_finite(chunks: list) -> bool:
    """True when no rank holds a NaN/Inf gradient (checked over every grad buffer, all ranks agree)."""
    bad = torch.zeros(1, device=device().torch_device)
    for chunk in chunks:
        for buffer in list(chunk.buffers) + list(getattr(chunk, "expert_parallel_buffers", [])):
            if not torch.isfinite(buffer.grad_data).all():
                bad.fill_(1)
    torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    return bool(bad.item() == 0)


def _torch_adams(optimizer):
    """The inner optimizers that are torch's Adam/AdamW: Megatron's fallback when neither
    Transformer Engine nor Apex is installed. With TE, Megatron uses TE's FusedAdam, which keeps
    the step in its param groups and whose ``state_dict()`` knows only exp_avg / exp_avg_sq /
    master_param (a per-parameter ``step`` makes it raise KeyError), so the two workarounds
    below apply to torch's Adam alone."""
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(sub, "optimizer", None)
        if isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
            yield inner


def init_empty_state(optimizer) -> None:
    """Give a fresh torch Adam its (zero) state so a checkpoint can be loaded into it in place.

    Megatron's distributed optimizer builds its load template from its current state, which a
    fresh torch Adam does not have yet (no ``step``, no moments); on that path it asserts that
    every parameter has one ``step``. TE's FusedAdam needs nothing (Megatron allocates its state).
    """
    for inner in _torch_adams(optimizer):
        for group in inner.param_groups:
            for param in group["params"]:
                state = inner.state[param]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(param.data)
                    state["exp_avg_sq"] = torch.zeros_like(param.data)


def restore_adam_steps(optimizer) -> None:
    """After a load, give every parameter its own Adam ``step`` tensor, set to the saved step.

    Megatron's load on the torch-Adam fallback (no Apex/TE) keeps the saved step only in the param
    groups and leaves the per-parameter ``step`` tensors stale or shared (torch's foreach Adam would
    then add 1 to a shared one once per parameter); either way the bias correction of every later
    step is wrong. Found by the bitwise resume test. Torch's Adam only (see ``_torch_adams``).
    """
    for inner in _torch_adams(optimizer):
        for group in inner.param_groups:
            for param in group["params"]:
                state = inner.state.get(param, {})
                if "step" in group and "step" in state:
                    state["step"] = torch.tensor(float(group["step"]))
                elif isinstance(state.get("step"), torch.Tensor):
                    state["step"] = state["step"].clone()
