"""The trainer's parallel.vpp check accepts exactly the layer splits Megatron-Core can build.

Reference: Megatron's own TransformerConfig validation and layer placement
(get_transformer_layer_offset / get_num_layers_to_build per pipeline rank and virtual stage); a
split is buildable when the config is accepted and the chunks tile the layers exactly once.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from megatron_vlm.training.config import RecipeError, load_recipe
from megatron_vlm.training.providers import check_virtual_pipeline


def _megatron_tiles(layers: int, pp: int, vpp: int, first: int | None) -> bool:
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.transformer_block import get_num_layers_to_build
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    try:
        config = TransformerConfig(
            num_layers=layers, hidden_size=8, num_attention_heads=1, pipeline_model_parallel_size=pp,
            virtual_pipeline_model_parallel_size=vpp, num_layers_in_first_pipeline_stage=first,
            pipeline_dtype=torch.float32,
        )
    except ValueError:
        return False
    covered = []
    for rank, stage in itertools.product(range(pp), range(vpp)):
        try:
            start = get_transformer_layer_offset(config, stage, rank)
            count = get_num_layers_to_build(config, stage, rank)
        except AssertionError:  # Megatron asserts some splits at build time
            return False
        if count <= 0:
            return False
        covered += range(start, start + count)
    return sorted(covered) == list(range(layers))


@pytest.mark.parametrize("layers", [4, 6, 8, 12])
@pytest.mark.parametrize("pp,vpp", [(2, 2), (2, 3), (3, 2), (4, 2)])
@pytest.mark.parametrize("first", [None, 1, 2, 4])
def test_check_accepts_exactly_what_megatron_builds(layers, pp, vpp, first):
    recipe = load_recipe(None, [f"parallel.pp={pp}", f"parallel.vpp={vpp}"]
                         + ([f"model.first_stage_layers={first}"] if first else []))
    buildable = _megatron_tiles(layers, pp, vpp, first)
    if buildable:
        check_virtual_pipeline(recipe, layers)
    else:
        with pytest.raises(RecipeError, match="parallel.vpp|parallel.pp"):
            check_virtual_pipeline(recipe, layers)


def test_vpp_needs_a_pipeline():
    with pytest.raises(RecipeError, match="needs parallel.pp >= 2"):
        check_virtual_pipeline(load_recipe(None, ["parallel.vpp=2"]), 4)


@pytest.mark.parametrize("sequences,dp,ok", [(4, 1, True), (4, 2, True), (2, 2, False), (6, 1, True), (3, 1, False)])
def test_micro_batches_per_rank_must_fill_groups_of_pp(sequences, dp, ok):
    """Megatron's interleaved schedule refuses M < pp and a last group of 0 < M % pp < pp."""
    recipe = load_recipe(None, ["parallel.pp=2", "parallel.vpp=2", "data.max_seq_length=64",
                                f"train.global_batch_tokens={64 * sequences}"])
    if ok:
        check_virtual_pipeline(recipe, 4, dp)
    else:
        with pytest.raises(RecipeError, match="groups of parallel.pp=2"):
            check_virtual_pipeline(recipe, 4, dp)
