"""The TE attention module is built with its layer, not at the first forward (CPU, stand-in TE).

A CP rank whose ViT encodes no image never runs the ViT; with the module created lazily its
``_extra_state`` (TE's FP8 metadata) was missing from that rank's state dict, so the ranks'
checkpoints disagreed and a strict load failed. With ``transformer_engine.pytorch`` replaced
by tests/te_stand_in.py, the model's state-dict and sharded-state-dict keys must be the same
before any forward (a rank that encoded nothing) and after one with an image.
"""

from __future__ import annotations

import pytest
import torch

from tests import te_stand_in
from tests.qwen_utils import single_rank_fixture, tiny_config
from tests.unit.test_qwen_model import sample


@pytest.fixture(scope="module", autouse=True)
def _megatron():
    yield from single_rank_fixture()


def test_te_attention_state_is_there_before_the_first_forward(monkeypatch):
    from megatron_vlm.models.common.attention import packed_seq_params
    from megatron_vlm.models.qwen2_5_vl.model import Qwen2_5_VLModel
    from megatron_vlm.models.qwen2_5_vl.position_ids import packed_mrope_position_ids
    from tests.qwen_utils import IMAGE, VIDEO

    te_stand_in.install(monkeypatch)
    cfg = tiny_config()
    model = Qwen2_5_VLModel(cfg, spec="local", attention_backend="te", params_dtype=torch.bfloat16, bf16=True)
    never_ran = set(model.state_dict())
    never_ran_sharded = set(model.sharded_state_dict())
    extra = [k for k in never_ran if k.endswith("core_attention._te._extra_state")]
    assert len(extra) == cfg.vision.depth + cfg.text.num_hidden_layers
    assert any(k.startswith("vision.") for k in extra)

    ids, grid, pixels = sample([[1, 4, 6]], seed=1)
    cu = torch.tensor([0, len(ids)])
    pos = packed_mrope_position_ids(ids, cu, grid, image_token_id=IMAGE, video_token_id=VIDEO)
    with torch.no_grad():
        model(ids[None], pos[:, None], pixel_values=pixels.bfloat16(), image_grid_thw=grid,
              packed_seq_params=packed_seq_params(cu))
    assert any("forward" in c for c in te_stand_in.CALLS)  # the stand-in ran the attention
    assert set(model.state_dict()) == never_ran
    assert set(model.sharded_state_dict()) == never_ran_sharded
