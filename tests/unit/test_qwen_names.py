"""HF <-> Megatron name map: hand-checked layouts, round trips on tiny configs (tied/untied, both layouts)."""

from __future__ import annotations

import pytest
import torch

from megatron_vlm.checkpoint.hf_names import (
    detect_layout,
    fuse_qkv_grouped,
    hf_to_mcore,
    mcore_to_hf,
    split_qkv_grouped,
    vision_qkv_to_mcore,
)
from tests.qwen_utils import hf_model, tiny_config


def test_grouped_qkv_layout_by_hand():
    # 4 query heads, 2 groups, head_dim 1: Megatron wants [q0 q1 k0 v0 | q2 q3 k1 v1]
    q, k, v = torch.tensor([0.0, 1, 2, 3]), torch.tensor([10.0, 11]), torch.tensor([20.0, 21])
    fused = fuse_qkv_grouped(q, k, v, num_heads=4, num_groups=2)
    assert fused.tolist() == [0, 1, 10, 20, 2, 3, 11, 21]
    assert [x.tolist() for x in split_qkv_grouped(fused, 4, 2)] == [q.tolist(), k.tolist(), v.tolist()]


def test_vision_qkv_layout_by_hand():
    # HF: [q_h0 q_h1 | k_h0 k_h1 | v_h0 v_h1] (head_dim 1) -> per head [q k v]
    hf = torch.tensor([0.0, 1, 10, 11, 20, 21])
    assert vision_qkv_to_mcore(hf, num_heads=2).tolist() == [0, 10, 20, 1, 11, 21]


def _old_layout(state):
    out = {}
    for name, t in state.items():
        name = name.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        out[name] = t
    return out


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("layout", ["new", "old"])
@pytest.mark.parametrize("spec", ["local", "te"])
def test_round_trip(tied, layout, spec):
    cfg = tiny_config(tied=tied)
    hf_state = hf_model(cfg).state_dict()
    if layout == "old":
        hf_state = _old_layout(hf_state)
    assert detect_layout(hf_state) == layout
    mcore = hf_to_mcore(hf_state, cfg, spec)
    assert ("language_model.output_layer.weight" in mcore) != tied
    back = mcore_to_hf(mcore, cfg, spec, layout)
    assert set(back) == set(hf_state)
    for name, tensor in hf_state.items():
        torch.testing.assert_close(back[name], tensor, rtol=0, atol=0, msg=name)


def test_missing_and_unknown_tensors_are_refused():
    cfg = tiny_config()
    hf_state = hf_model(cfg).state_dict()
    extra = dict(hf_state, **{"model.visual.blocks.0.attn.extra": torch.zeros(1)})
    with pytest.raises(KeyError, match="no Megatron name"):
        hf_to_mcore(extra, cfg)
    missing = {k: v for k, v in hf_state.items() if "layers.1.mlp.up_proj" not in k}
    with pytest.raises(KeyError, match="up_proj"):
        hf_to_mcore(missing, cfg)
