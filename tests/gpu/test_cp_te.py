"""TE's THD context-parallel attention equals our local CP attention on the same split batch
(outputs and q/k/v gradients, bf16, GQA, uneven sub-sequences with padding), on 2 GPUs.
Skipped without 2 GPUs and Transformer Engine."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.dist_utils import run_distributed

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs"),
    pytest.mark.skipif(importlib.util.find_spec("transformer_engine") is None, reason="needs Transformer Engine"),
]
BOUNDS = [0, 3, 130, 261, 262, 512]
HQ, HKV, D = 8, 2, 64


def _rank_fn():
    import torch.distributed as dist

    from megatron_vlm.parallel.context_parallel import cp_partition
    from megatron_vlm.parallel.cp_attention import cp_attention_thd
    from megatron_vlm.parallel.cp_te import make_te_attention, te_cp_attention

    dist.init_process_group("nccl")
    rank = dist.get_rank()
    torch.cuda.set_device(rank)
    part = cp_partition(torch.tensor(BOUNDS), 2)
    index = part.source_index[rank].cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    full = [torch.randn(BOUNDS[-1], h, D, device="cuda", generator=g, dtype=torch.bfloat16) for h in (HQ, HKV, HKV, HQ)]
    q, k, v, dout = (x[index.clamp(min=0)] * (index >= 0)[:, None, None] for x in full)
    results = []
    te = make_te_attention(HQ, D, HKV, None, dist.group.WORLD)
    for fn in (lambda a, b, c: te_cp_attention(te, a, b, c, part.cu_seqlens, part.cu_seqlens_padded),
               lambda a, b, c: cp_attention_thd(a, b, c, part.cu_seqlens, part.cu_seqlens_padded)):  # fmt: skip
        a, b, c = (x.clone().requires_grad_(True) for x in (q, k, v))
        out = fn(a, b, c)
        out.backward(dout)
        real = index >= 0
        results.append([t[real].float().cpu().numpy() for t in (out, a.grad, b.grad, c.grad)])
    return results


def test_te_cp_attention_matches_local():
    for te, ours in run_distributed(_rank_fn, 2, timeout_s=300, device="cuda"):
        for name, x, y in zip(("out", "dq", "dk", "dv"), te, ours):
            torch.testing.assert_close(torch.from_numpy(x), torch.from_numpy(y), atol=2e-2, rtol=2e-2, msg=name)


def _model_rank(backend: str):
    """The tiny Qwen2.5-VL in bf16 at CP=2 on 2 GPUs with ``backend`` attention; this rank's logits."""
    from megatron.core import parallel_state

    from megatron_vlm.checkpoint.hf_names import hf_to_mcore
    from megatron_vlm.models.common.attention import packed_seq_params
    from megatron_vlm.models.qwen2_5_vl.model import Qwen2_5_VLModel
    from megatron_vlm.models.qwen2_5_vl.weights import load_full_state_dict
    from megatron_vlm.parallel import ParallelLayout, destroy, initialize
    from megatron_vlm.parallel.context_parallel import split_batch_for_cp
    from tests.distributed.test_cp_te_routing import _batch
    from tests.qwen_utils import IMAGE, VIDEO, hf_model, tiny_config

    initialize(ParallelLayout(cp=2))
    rank = parallel_state.get_context_parallel_rank()
    cfg = tiny_config()
    model = Qwen2_5_VLModel(cfg, spec="local", attention_backend=backend, params_dtype=torch.bfloat16, bf16=True)
    load_full_state_dict(model, hf_to_mcore(hf_model(cfg).state_dict(), cfg))
    model = model.cuda().eval()
    batch = split_batch_for_cp(_batch(), 2, rank, image_token_id=IMAGE, video_token_id=VIDEO)
    with torch.no_grad():
        logits = model(batch["tokens"].cuda(), batch["position_ids"].cuda(),
                       pixel_values=batch["pixel_values"].cuda().bfloat16(), image_grid_thw=batch["image_grid_thw"],
                       packed_seq_params=packed_seq_params(batch["cu_seqlens_padded"].cuda()))
    destroy()
    return logits[0].float().cpu().numpy()


def test_model_cp_te_ring_matches_all_gather():
    """The model's CP attention through TE's ring equals the all-gather path (bf16, 2 GPUs)."""
    te = run_distributed(_model_rank, 2, "te", timeout_s=300, device="cuda")
    ref = run_distributed(_model_rank, 2, "torch", timeout_s=300, device="cuda")
    for a, b in zip(te, ref):
        a, b = torch.from_numpy(a), torch.from_numpy(b)
        assert (a - b).abs().max() <= 0.05 * b.abs().max()
