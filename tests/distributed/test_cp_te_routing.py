"""Under context parallelism the ``te`` backend runs TE's ring attention, with the boundaries TE needs.

Two gloo ranks at CP=2, Transformer Engine replaced by tests/te_stand_in.py (which computes
with our all-gather reference, so only routing and arguments are under test here; TE's own
numbers against that reference: tests/gpu/test_cp_te.py). On a packed batch of a sample with
one image and a text-only sample:

- every LLM attention call reaches TE's module bound to the CP group (global ranks, p2p), in
  THD with the GLOBAL padded boundaries as ``cu_seqlens_q_padded`` and the global longest
  padded sub-sequence as ``max_seqlen``; the ViT's calls reach a module without CP;
- the logits equal those of the ``torch`` backend's all-gather path on the same split (bf16, as TE
  runs: within 2% of the largest logit; the two compute the same sums in another order);
- the rank that encoded no image holds the same state-dict keys as the one that did (TE's
  ``_extra_state`` is built with the layer).
"""

from __future__ import annotations

import pytest
import torch

from tests.dist_utils import run_distributed


def _batch():
    from megatron_vlm.models.qwen2_5_vl.position_ids import packed_mrope_position_ids
    from tests.qwen_utils import END, IMAGE, START, VIDEO

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 240, (3,), generator=g).tolist() + [START] + [IMAGE] * 6 + [END] + [5, 9, 11]
    b = torch.randint(0, 240, (17,), generator=g).tolist()
    tokens = torch.tensor(a + b)
    cu = torch.tensor([0, len(a), len(a) + len(b)], dtype=torch.int32)
    grid = torch.tensor([[1, 4, 6]])
    pos = packed_mrope_position_ids(tokens, cu, grid, image_token_id=IMAGE, video_token_id=VIDEO)
    return {"tokens": tokens[None], "labels": tokens[None], "loss_mask": torch.ones(1, len(tokens)),
            "position_ids": pos[:, None], "cu_seqlens": cu,
            "pixel_values": torch.randn(24, 1176, generator=g), "image_grid_thw": grid}


def _rank():
    from megatron.core import parallel_state

    from megatron_vlm.checkpoint.hf_names import hf_to_mcore
    from megatron_vlm.models.common.attention import packed_seq_params
    from megatron_vlm.models.qwen2_5_vl.model import Qwen2_5_VLModel
    from megatron_vlm.models.qwen2_5_vl.weights import load_full_state_dict
    from megatron_vlm.parallel import ParallelLayout, destroy, initialize
    from megatron_vlm.parallel.context_parallel import split_batch_for_cp
    from tests import te_stand_in
    from tests.qwen_utils import IMAGE, VIDEO, hf_model, tiny_config

    te_stand_in.install()
    initialize(ParallelLayout(cp=2))
    rank = parallel_state.get_context_parallel_rank()
    cfg = tiny_config()
    hf = hf_model(cfg)
    batch = split_batch_for_cp(_batch(), 2, rank, image_token_id=IMAGE, video_token_id=VIDEO)
    out = {"rank": rank, "cu_padded": batch["cu_seqlens_padded"].tolist()}
    for backend in ("te", "torch"):
        model = Qwen2_5_VLModel(cfg, spec="local", attention_backend=backend, params_dtype=torch.bfloat16, bf16=True)
        load_full_state_dict(model, hf_to_mcore(hf.state_dict(), cfg))
        model.eval()
        te_stand_in.CALLS.clear()
        with torch.no_grad():
            logits = model(batch["tokens"], batch["position_ids"], pixel_values=batch["pixel_values"].bfloat16(),
                           image_grid_thw=batch["image_grid_thw"],
                           packed_seq_params=packed_seq_params(batch["cu_seqlens_padded"]))
        out[backend] = {"logits": logits[0].float().numpy(), "keys": sorted(model.state_dict()),
                        "calls": [c["forward"] for c in te_stand_in.CALLS if "forward" in c]}
    destroy()
    return out


@pytest.mark.slow(seconds=40)
def test_te_backend_uses_ring_attention_under_cp():
    ranks = sorted(run_distributed(_rank, 2, timeout_s=300), key=lambda r: r["rank"])
    cu_padded = ranks[0]["cu_padded"]
    longest = max(b - a for a, b in zip(cu_padded, cu_padded[1:]))
    images_encoded = []
    for r in ranks:
        calls = r["te"]["calls"]
        llm = [c for c in calls if c["cp"]]
        vit = [c for c in calls if not c["cp"]]
        assert len(llm) == 2  # two LLM layers, each through TE's CP module
        for c in llm:
            assert c["cu_padded"] == cu_padded and c["cu"] == cu_padded and c["max_seqlen"] == longest
            assert c["ranks"] == [0, 1] and c["comm"] == "p2p" and c["mask"] == "padding_causal"
        images_encoded.append(len(vit))
        assert r["torch"]["calls"] == []
        te, ref = torch.from_numpy(r["te"]["logits"]), torch.from_numpy(r["torch"]["logits"])
        assert (te - ref).abs().max() <= 0.02 * ref.abs().max()
    assert sorted(images_encoded) == [0, 2]  # one rank ran the 2-block ViT, the other never did
    assert ranks[0]["te"]["keys"] == ranks[1]["te"]["keys"]
    assert any(k.startswith("vision.") and k.endswith("_te._extra_state") for k in ranks[0]["te"]["keys"])
