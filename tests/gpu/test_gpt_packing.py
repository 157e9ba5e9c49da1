"""GPU only: ``model.kind=gpt`` built and fed as the trainer does (bf16; the TE spec with THD packing
when Transformer Engine imports, else the local spec with a block mask) never attends across packed
documents: the per-token loss of a document packed after another equals its loss alone."""

from __future__ import annotations

import pytest
import torch

from tests.qwen_utils import single_rank_fixture

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def _megatron():
    yield from single_rank_fixture("cuda")


def _batch(docs: list[torch.Tensor]) -> dict:
    tokens = torch.cat(docs)[None].cuda()
    cu = torch.tensor([0, *torch.tensor([len(d) for d in docs]).cumsum(0).tolist()], dtype=torch.int32).cuda()
    positions = torch.cat([torch.arange(len(d)) for d in docs]).view(1, 1, -1).expand(3, 1, -1).cuda()
    labels = torch.cat([torch.roll(d, -1) for d in docs])[None].cuda()
    return {"tokens": tokens, "labels": labels, "position_ids": positions, "cu_seqlens": cu}


def test_gpt_packed_documents_do_not_see_each_other():
    from megatron.core.transformer.module import Float16Module

    from megatron_vlm.training.config import load_recipe
    from megatron_vlm.training.providers import get_provider

    recipe = load_recipe(None, ["model.kind=gpt", "train.precision=bf16", "train.data_source=synthetic"])
    provider = get_provider(recipe)
    model = provider.build(recipe, True, True, None).cuda()
    model = Float16Module(model.config, model).eval()
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 200, (24,), generator=g), torch.randint(0, 200, (40,), generator=g)
    with torch.no_grad():
        packed = provider.forward(model, _batch([a, b]))[0, 24:].float()
        alone = provider.forward(model, _batch([b]))[0].float()
    assert (packed - alone).abs().max() <= 2e-2 * alone.abs().max()
