"""Recipe -> model config happens once: the trainer's provider and the HF export read a recipe the
same way (overrides included), and the GPT provider passes rope_theta through untruncated."""

from __future__ import annotations

import pytest
import torch

from megatron_vlm.checkpoint import convert
from megatron_vlm.checkpoint.hf_io import ConversionError
from megatron_vlm.training.config import load_recipe, recipe_to_yaml
from megatron_vlm.training.providers import get_provider
from tests.qwen_utils import single_rank_fixture


@pytest.fixture(scope="module")
def _megatron():
    yield from single_rank_fixture()


def test_gpt_provider_keeps_a_fractional_rope_theta(_megatron):
    """int(rope_theta) turned 2.5 into 2 (and 1e6 + 0.5 into 1e6)."""
    recipe = load_recipe(None, ["model.kind=gpt", "model.flavor=debug", "model.rope_theta=2.5", "train.precision=fp32"])
    model = get_provider(recipe).build(recipe, pre_process=True, post_process=True, vp_stage=None)
    dim = model.config.kv_channels
    want = 1.0 / (2.5 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    torch.testing.assert_close(model.rotary_pos_emb.inv_freq.double(), want, rtol=1e-6, atol=0)


def test_export_reads_the_recipe_as_the_trainer_does(tmp_path):
    recipe = load_recipe(None, ["model.flavor=debug", "model.num_layers=3", "model.rope_theta=4e6",
                                "data.max_seq_length=4096", f"data.tokenizer={tmp_path / 'tok'}"])
    (tmp_path / "recipe.yaml").write_text(recipe_to_yaml(recipe))
    loaded, cfg = convert._recipe_and_config(tmp_path / "recipe.yaml")
    assert loaded == recipe and cfg == get_provider(recipe).model_config(recipe)
    assert (cfg.text.num_hidden_layers, cfg.text.rope_theta) == (3, 4e6)

    (tmp_path / "recipe.yaml").write_text(recipe_to_yaml(recipe).replace("rope_theta:", "rope_thetaa:"))
    with pytest.raises(ConversionError, match=r"recipe.yaml: unknown key\(s\) model.rope_thetaa"):
        convert._recipe_and_config(tmp_path / "recipe.yaml")
    (tmp_path / "recipe.yaml").write_text(recipe_to_yaml(load_recipe(None, ["model.kind=gpt"])))
    with pytest.raises(ConversionError, match="model.kind='gpt' is not a model family"):
        convert._recipe_and_config(tmp_path / "recipe.yaml")
