"""Save and resume through the trainer when Megatron uses Transformer Engine's FusedAdam.

With TE installed, Megatron-Core's optimizer is TE's FusedAdam: the Adam step lives in its param
groups, and its ``state_dict()`` / ``load_state_dict()`` map each per-parameter state name to a
dtype (exp_avg, exp_avg_sq, master_param), so any other key (a per-parameter ``step``, which
torch's Adam needs) raises KeyError. On CPU a stand-in with that behaviour takes FusedAdam's
place through the module-level switches Megatron chooses by (``megatron.core.optimizer.Adam`` /
``USING_PYTORCH_OPTIMIZER``, ``distrib_optimizer.HAVE_APEX_OR_TE`` / ``USING_TE_OPTIMIZER``);
without them Megatron takes its torch branch and this test could not fail.

A run of 4 steps, and a run of 2 steps saved and resumed for 2 more, give the same losses.
"""

from __future__ import annotations

import pytest
import torch

from tests.dist_utils import run_distributed

STEPS = 4


class FusedAdamStandIn(torch.optim.Optimizer):
    """AdamW as TE's FusedAdam computes it (one step per param group, bias correction, decoupled
    weight decay), with its state-dict rule: only the names in ``name_to_dtype_map`` are known."""

    name_to_dtype_map = {"exp_avg": torch.float32, "exp_avg_sq": torch.float32, "master_param": torch.float32}
    steps_taken = 0

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, adam_w_mode=True):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, bias_correction=True))
        self.adam_w_mode = adam_w_mode

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if not group["params"]:
                continue
            group["step"] = group.get("step", 0) + 1
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                grad = p.grad if self.adam_w_mode else p.grad + group["weight_decay"] * p
                if self.adam_w_mode:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (state["exp_avg_sq"] / (1 - beta2 ** group["step"])).sqrt().add_(group["eps"])
                p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1 ** group["step"]))
        FusedAdamStandIn.steps_taken += 1

    def state_dict(self):
        state_dict = super().state_dict()
        for key, values in state_dict["state"].items():
            state_dict["state"][key] = {name: values[name].float() for name in values if self.name_to_dtype_map[name]}
        return state_dict

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        for param, values in self.state.items():
            self.state[param] = {name: values[name].float() for name in values if self.name_to_dtype_map[name]}


def _use_stand_in() -> None:
    """Make Megatron take its Transformer Engine branch with the stand-in as TE's FusedAdam."""
    import megatron.core.optimizer as mcore_optimizer
    import megatron.core.optimizer.distrib_optimizer as distrib

    mcore_optimizer.Adam = FusedAdamStandIn
    mcore_optimizer.USING_PYTORCH_OPTIMIZER = False
    distrib.Adam = FusedAdamStandIn
    distrib.HAVE_APEX_OR_TE, distrib.USING_TE_OPTIMIZER = True, True


def _train(ckpt_dir: str, max_steps: int, distributed_optimizer: bool) -> dict:
    from megatron_vlm.training import loop
    from megatron_vlm.training.config import load_recipe

    _use_stand_in()
    recipe = load_recipe(None, [
        "model.kind=gpt", "train.data_source=synthetic", "data.max_seq_length=64",
        "train.global_batch_tokens=128", f"train.tokens={128 * STEPS}", f"train.max_steps={max_steps}",
        "train.precision=fp32", "train.lr=3e-3", "train.weight_decay=0.01",
        f"parallel.distributed_optimizer={distributed_optimizer}",
        f"checkpoint.dir={ckpt_dir}", "checkpoint.save_interval=0", "logging.wandb_mode=disabled",
    ])
    result = loop.train(recipe)
    return {"start": result.start_step, "losses": [m["loss"] for m in result.history],
            "stand_in_steps": FusedAdamStandIn.steps_taken}


def _straight_and_resumed(root: str, distributed_optimizer: bool) -> tuple[dict, dict, dict]:
    """In one rank process: 4 steps straight; 2 steps saved, then resumed to 4 (each train() starts
    and tears down its own process groups)."""
    straight = _train(f"{root}/straight", STEPS, distributed_optimizer)
    first = _train(f"{root}/split", 2, distributed_optimizer)
    return straight, first, _train(f"{root}/split", STEPS, distributed_optimizer)


@pytest.mark.slow(seconds=30)
@pytest.mark.parametrize("distributed_optimizer", [True, False])
def test_resume_with_fused_adam_equals_uninterrupted(tmp_path, distributed_optimizer):
    straight, first, resumed = run_distributed(_straight_and_resumed, 1, str(tmp_path), distributed_optimizer)[0]
    assert straight["stand_in_steps"] == STEPS and resumed["stand_in_steps"] == 2 * STEPS  # the stand-in stepped
    assert resumed["start"] == 2
    assert first["losses"] + resumed["losses"] == straight["losses"]
