"""Qwen3-VL config: flavors equal the published configs (../shared/reference/qwen3_vl); HF reads ours back."""

from __future__ import annotations

import pytest

from megatron_vlm.models.qwen3_vl.config import FLAVORS, flavor, from_hf_config, to_hf_config

PUBLISHED = {"2B": "Qwen3-VL-2B-Instruct", "4B": "Qwen3-VL-4B-Instruct", "8B": "Qwen3-VL-8B-Instruct",
             "32B": "Qwen3-VL-32B-Instruct"}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_flavor_equals_published_config(reference_dir, name):
    assert flavor(name) == from_hf_config(reference_dir / "qwen3_vl" / PUBLISHED[name])


def test_published_facts_reach_the_config(reference_dir):
    """Numbers read independently of from_hf_config (the json itself), so a reader bug cannot hide."""
    import json

    for name, folder in PUBLISHED.items():
        raw = json.loads((reference_dir / "qwen3_vl" / folder / "config.json").read_text())
        t, v, cfg = raw["text_config"], raw["vision_config"], flavor(name)
        assert cfg.text.head_dim == t["head_dim"] == 128
        assert cfg.text.rope_theta == t["rope_theta"] == 5_000_000
        assert cfg.text.mrope_section == t["rope_scaling"]["mrope_section"]
        assert cfg.text.tie_word_embeddings == raw.get("tie_word_embeddings", False)
        assert cfg.vision.deepstack_visual_indexes == v["deepstack_visual_indexes"]
        assert (cfg.vision.patch_size, cfg.vision.num_position_embeddings) == (v["patch_size"], v["num_position_embeddings"])
        assert cfg.image_token_id == raw["image_token_id"] and cfg.video_token_id == raw["video_token_id"]
    assert flavor("2B").text.tie_word_embeddings and flavor("4B").text.tie_word_embeddings
    assert not flavor("8B").text.tie_word_embeddings and not flavor("32B").text.tie_word_embeddings


@pytest.mark.parametrize("name", sorted(FLAVORS))
def test_hf_config_round_trip_through_transformers(name):
    """Our dict -> transformers' Qwen3VLConfig -> its to_dict() -> ours again: same config."""
    from transformers import Qwen3VLConfig

    cfg = flavor(name)
    assert from_hf_config(to_hf_config(cfg)) == cfg
    hf = Qwen3VLConfig(**to_hf_config(cfg))
    assert hf.text_config.head_dim == cfg.text.head_dim
    assert hf.text_config.rope_parameters["rope_theta"] == cfg.text.rope_theta
    assert from_hf_config(hf.to_dict()) == cfg


def test_yarn_scaling_round_trip():
    from megatron_vlm.models.common.rope_scaling import RopeScaling

    cfg = flavor("8B").replace(text=dict(rope_scaling=RopeScaling(type="yarn", factor=2.0, original_max_position_embeddings=262144)))
    assert from_hf_config(to_hf_config(cfg)) == cfg


def test_refuses_what_it_does_not_build(reference_dir):
    moe = reference_dir / "qwen3_vl" / "Qwen3-VL-30B-A3B-Instruct"
    with pytest.raises(ValueError, match="MoE"):
        from_hf_config(moe)
    raw = to_hf_config(flavor("debug"))
    raw["text_config"]["rope_scaling"]["mrope_interleaved"] = False
    with pytest.raises(ValueError, match="interleaved"):
        from_hf_config(raw)
    with pytest.raises(ValueError, match="unknown flavor"):
        flavor("7B")
