"""One parallel layout: the recipe's parallel section is ParallelLayout, and its
transformer_config_kwargs() is the one translation into Megatron's TransformerConfig."""

from __future__ import annotations

import pytest

from megatron_vlm.parallel.state import ParallelLayout
from megatron_vlm.training.config import load_recipe
from megatron_vlm.training.providers import parallel_and_precision_kwargs


@pytest.mark.parametrize("tp, sp, shards", [(1, True, False), (2, True, True), (2, False, False)])
def test_sequence_parallel_only_with_a_tp_group(tp, sp, shards):
    layout = ParallelLayout(tp=tp, sequence_parallel=sp)
    assert layout.shards_sequence is shards and layout.transformer_config_kwargs()["sequence_parallel"] is shards


def test_sizes_and_the_interleaved_p2p_settings():
    assert ParallelLayout(tp=2, pp=4, cp=2, vpp=2).transformer_config_kwargs() == dict(
        tensor_model_parallel_size=2, pipeline_model_parallel_size=4, context_parallel_size=2,
        virtual_pipeline_model_parallel_size=2, sequence_parallel=False)
    # PP=2 with virtual stages: the previous and next stage are one rank; unbatched, overlapped p2p
    assert ParallelLayout(pp=2, vpp=2).transformer_config_kwargs()["batch_p2p_comm"] is False
    assert ParallelLayout(pp=2, vpp=2).transformer_config_kwargs()["overlap_p2p_comm"] is True
    assert "batch_p2p_comm" not in ParallelLayout(pp=2).transformer_config_kwargs()


def test_the_recipe_section_is_the_layout_the_model_gets():
    recipe = load_recipe(None, ["parallel.tp=2", "parallel.pp=2", "parallel.vpp=2", "parallel.sequence_parallel=true"])
    assert isinstance(recipe.parallel, ParallelLayout) and recipe.parallel.dp(8) == 2
    kwargs = parallel_and_precision_kwargs(recipe)
    assert {k: kwargs[k] for k in recipe.parallel.transformer_config_kwargs()} == recipe.parallel.transformer_config_kwargs()
