"""Qwen2.5-VL config: flavors equal the published configs; 3B/7B/72B on the meta device equal HF's shapes."""

from __future__ import annotations

import pytest
import torch

from megatron_vlm.checkpoint.hf_names import hf_to_mcore
from megatron_vlm.models.qwen2_5_vl.config import flavor, from_hf_config, to_hf_config
from tests.qwen_utils import single_rank_fixture


@pytest.fixture(scope="module", autouse=True)
def _megatron():
    yield from single_rank_fixture()


@pytest.mark.parametrize("name", ["3B", "7B"])
def test_flavor_equals_published_config(reference_dir, name):
    published = from_hf_config(reference_dir / "hf_configs" / f"Qwen2.5-VL-{name}-Instruct")
    assert flavor(name) == published


def test_hf_config_round_trip_and_new_layout():
    cfg = flavor("7B")
    assert from_hf_config(to_hf_config(cfg)) == cfg
    # transformers >= 4.52 writes text fields under text_config and rope under rope_parameters
    flat = to_hf_config(cfg)
    nested = {k: flat[k] for k in ("vision_config", "image_token_id", "video_token_id", "tie_word_embeddings")}
    nested["text_config"] = {k: v for k, v in flat.items() if k not in nested}
    nested["text_config"]["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}
    assert from_hf_config(nested) == cfg


def test_published_shapes_of_large_flavors():
    assert flavor("3B").text.tie_word_embeddings and not flavor("7B").text.tie_word_embeddings
    for name, hidden, layers, heads, kv, inter in [("32B", 5120, 64, 40, 8, 27648), ("72B", 8192, 80, 64, 8, 29568)]:
        t = flavor(name).text
        assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads) == (hidden, layers, heads, kv)
        assert (t.intermediate_size, t.vocab_size, flavor(name).vision.out_hidden_size) == (inter, 152064, hidden)


def _hf_meta_state(cfg):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**to_hf_config(cfg)))
    return model.state_dict(), sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["debug", "3B", "7B", "72B"])
def test_meta_model_matches_hf_shapes_and_count(name):
    from megatron_vlm.models.qwen2_5_vl.model import Qwen2_5_VLModel

    cfg = flavor(name)
    hf_state, hf_count = _hf_meta_state(cfg)
    with torch.device("meta"):
        ours = Qwen2_5_VLModel(cfg, attention_backend="torch", perform_initialization=False)
    our_shapes = {n: tuple(p.shape) for n, p in ours.named_parameters()}
    mapped = {n: tuple(t.shape) for n, t in hf_to_mcore(hf_state, cfg).items()}
    assert our_shapes == mapped
    assert sum(p.numel() for p in ours.parameters()) == hf_count
