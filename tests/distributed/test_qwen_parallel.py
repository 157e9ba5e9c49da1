"""Qwen2.5-VL at TP=2 (+SP), PP=2 (first stage with fewer LLM layers), TP2xPP2, CP=2, TP2xCP2 on gloo CPU ranks:
logits, loss and gathered gradients equal HF's on a packed batch of multi-image samples. Qwen3-VL
(DeepStack active, 3 taps) at TP=2+SP, PP=2, CP=2 and TP2xPP2 in the same spawn, against its HF model.

Each rank loads its shard of one HF state dict mapped by the name map (no re-seeding), runs
Megatron's pipeline schedule forward-only (logits) and forward-backward (loss, grads); the
parent compares with HF run sample by sample. Tolerance as in tests/unit/test_qwen_model.py,
plus 1e-5 relative on gradients (sums over ~100 tokens in a different order).

The second part (not slow, 2 ranks) checks the interleaved pipeline (PP=2 x VPP=2) against PP=1
over several packed micro-batches, and dist checkpoints and the HF export across those layouts; for
Qwen3-VL too, with its DeepStack layers in the first chunk.
"""

from __future__ import annotations

import pytest
import torch

from tests.dist_utils import run_distributed

LLM_LAYERS = 4


def _config(tied: bool = False, family: str = "qwen2_5_vl"):
    if family == "qwen3_vl":
        from tests.qwen3_utils import tiny_config
    else:
        from tests.qwen_utils import tiny_config

    return tiny_config(tied=tied, num_hidden_layers=LLM_LAYERS)


def _pack(samples: list, positions: list[torch.Tensor]) -> dict:
    """Samples packed as the loader does: a padding tail as the last sub-sequence, T a multiple of 8,
    labels -100 off the loss. ``positions``: each sample's mRoPE ids [3, len]."""
    ids = torch.cat([s[0] for s in samples])
    lengths = [len(s[0]) for s in samples]
    tail = -len(ids) % 8 or 8
    ids = torch.cat([ids, torch.zeros(tail, dtype=torch.long)])
    lengths.append(tail)
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    labels = torch.roll(ids, -1)
    loss_mask = torch.zeros(len(ids))
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()[: len(samples)]):
        loss_mask[start : end - 1] = (ids[start + 1 : end] < 240).float()  # text targets inside each sample
    labels[loss_mask == 0] = -100
    grids = torch.cat([s[1] for s in samples if s[1] is not None])
    pixels = torch.cat([s[2] for s in samples if s[2] is not None])
    pos = torch.cat([*positions, torch.arange(tail).expand(3, -1)], dim=1)
    return dict(
        tokens=ids[None], labels=labels[None], loss_mask=loss_mask[None], position_ids=pos[:, None],
        cu_seqlens=cu, pixel_values=pixels, image_grid_thw=grids,
    )


def _batch():
    """Three samples (images in two, one image spanning several windows), packed (:func:`_pack`)."""
    from megatron_vlm.models.qwen2_5_vl.position_ids import packed_mrope_position_ids
    from tests.qwen_utils import IMAGE, VIDEO
    from tests.unit.test_qwen_model import sample

    samples = [sample([[1, 4, 6], [1, 10, 18]], seed=11), sample([], seed=12, text=7), sample([[1, 6, 4]], seed=13)]
    batch = _pack(samples, [torch.zeros(3, len(s[0]), dtype=torch.long) for s in samples])
    batch["position_ids"] = packed_mrope_position_ids(
        batch["tokens"][0], batch["cu_seqlens"], batch["image_grid_thw"], image_token_id=IMAGE, video_token_id=VIDEO,
    )[:, None]
    return samples, batch


def _qwen3_batch(hf):
    """Qwen3-VL's batch: the same plan with 32-px tokens; mRoPE ids from HF's get_rope_index per sample."""
    from tests.qwen3_utils import hf_positions, sample

    samples = [sample([[1, 4, 6], [1, 10, 18]], seed=11), sample([], seed=12, text=7), sample([[1, 6, 4]], seed=13)]
    return samples, _pack(samples, [hf_positions(hf, ids, grid) for ids, grid, _ in samples])


def _rank_main(layouts: list, full_numpy: dict, batches: dict) -> list[dict]:
    """Run every layout in turn on these 4 ranks (one spawn: importing Megatron dominates the cost).
    ``full_numpy`` by (family, tied), ``batches`` by family: the parent's HF weights and packed batch."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    out = []
    for *layout, tied, family in layouts:
        batch = {k: torch.from_numpy(v) for k, v in batches[family].items()}
        out.append(_one_layout(*layout, tied, family, full_numpy[family, tied], batch))
        parallel_state.destroy_model_parallel()
        dist.barrier()
    return out


def _one_layout(tp: int, pp: int, cp: int, sp: bool, first_stage_layers, tied: bool, family: str, full_numpy: dict,
                batch: dict) -> dict:
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_vlm.models.qwen2_5_vl.model import Qwen2_5_VLModel, forward_batch
    from megatron_vlm.models.qwen2_5_vl.weights import load_full_state_dict, local_to_full
    from megatron_vlm.models.qwen3_vl.model import Qwen3VLModel
    from megatron_vlm.parallel import ParallelLayout, initialize
    from megatron_vlm.parallel.context_parallel import split_batch_for_cp
    from tests.qwen_utils import IMAGE, VIDEO

    initialize(ParallelLayout(tp=tp, pp=pp, cp=cp, sequence_parallel=sp))
    overrides = dict(sequence_parallel=sp, pipeline_dtype=torch.float32)
    if first_stage_layers is not None:
        overrides["num_layers_in_first_pipeline_stage"] = first_stage_layers
    model_class = Qwen3VLModel if family == "qwen3_vl" else Qwen2_5_VLModel
    model = model_class(_config(tied, family), attention_backend="torch", **overrides)
    load_full_state_dict(model, {n: torch.from_numpy(a) for n, a in full_numpy.items()})
    targets = batch["loss_mask"].sum()  # of the whole batch: CP ranks' losses then simply add up
    source = torch.arange(batch["tokens"].shape[1])
    if cp > 1:
        batch = split_batch_for_cp(
            batch, cp, parallel_state.get_context_parallel_rank(), image_token_id=IMAGE, video_token_id=VIDEO
        )
        source = batch["cp_source_index"]
    mode = {}

    def forward_step(data_iterator, model):
        out = forward_batch(model, batch, with_loss=not mode["logits"])

        def loss_func(output, non_loss_data=False):
            if non_loss_data:
                return output.detach()
            loss = (output[0] * batch["loss_mask"][0]).sum() / targets
            return loss, torch.tensor(1), {"loss": loss.detach()}

        return out, loss_func

    run = get_forward_backward_func()
    common = dict(forward_step_func=forward_step, data_iterator=iter([None]), model=[model], num_microbatches=1,
                  seq_length=batch["tokens"].shape[1], micro_batch_size=1)
    mode["logits"] = True
    with torch.no_grad():
        logits = run(**common, forward_only=True, collect_non_loss_data=True)
    mode["logits"] = False
    losses = run(**common, forward_only=False)
    # What finalize_model_grads does: sum norm grads over TP under SP and QK-norm grads over TP (each
    # rank holds some heads), all grads over CP, and the tied embedding's grads over the first and last stage.
    if tied and pp > 1 and parallel_state.is_rank_in_embedding_group():
        weight = model.shared_embedding_or_output_weight()
        torch.distributed.all_reduce(weight.grad, group=parallel_state.get_embedding_group())
    qk_norm = model.config.qk_layernorm and tp > 1
    for n, p in model.named_parameters():
        if p.grad is None:
            continue
        if (sp and getattr(p, "sequence_parallel", False)) or (qk_norm and ("q_layernorm" in n or "k_layernorm" in n)):
            torch.distributed.all_reduce(p.grad, group=parallel_state.get_tensor_model_parallel_group())
        if cp > 1 and p.grad is not None:
            torch.distributed.all_reduce(p.grad, group=parallel_state.get_context_parallel_group())
    grads = local_to_full(model, {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    last = parallel_state.is_pipeline_last_stage()
    result = dict(
        logits=logits[0][0] if last else None,
        source=source,
        loss=losses[0]["loss"] if last else None,
        grads=grads,
        layers=len(model.language_model.decoder.layers),
        cp_rank=parallel_state.get_context_parallel_rank(),
    )
    # numpy, not tensors: torch shares tensors through file descriptors that die with this process
    return {
        k: {n: g.numpy() for n, g in v.items()} if isinstance(v, dict) else v.numpy() if torch.is_tensor(v) else v
        for k, v in result.items()
    }


def _hf_reference(tied: bool = False, family: str = "qwen2_5_vl"):
    """HF logits per sample, the masked mean loss over the packed batch, HF grads and weights in
    Megatron names, and the packed batch."""
    from tests.qwen_utils import IMAGE, VIDEO

    if family == "qwen3_vl":
        from megatron_vlm.checkpoint.hf_names_qwen3_vl import hf_to_mcore
        from tests.qwen3_utils import hf_model
    else:
        from megatron_vlm.checkpoint.hf_names import hf_to_mcore
        from tests.qwen_utils import hf_model

    cfg = _config(tied, family)
    hf = hf_model(cfg)
    samples, b = _qwen3_batch(hf) if family == "qwen3_vl" else _batch()
    labels, mask = b["labels"][0].clamp(min=0), b["loss_mask"][0]
    logits, total = [], 0.0
    for (ids, grid, pixels), start in zip(samples, b["cu_seqlens"].tolist()):
        kwargs = {}
        if grid is not None:
            mm = ((ids == IMAGE) * 1 + (ids == VIDEO) * 2).int()[None]
            kwargs = dict(pixel_values=pixels, image_grid_thw=grid, mm_token_type_ids=mm)
        out = hf(input_ids=ids[None], **kwargs).logits[0]
        logits.append(out.detach())
        end = start + len(ids)
        ce = torch.nn.functional.cross_entropy(out, labels[start:end], reduction="none")
        total = total + (ce * mask[start:end]).sum()
    loss = total / mask.sum()
    loss.backward()
    full = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in hf.state_dict(keep_vars=True).items()}
    grads = hf_to_mcore(full, cfg)
    weights = {n: t.detach().numpy() for n, t in hf_to_mcore(hf.state_dict(), cfg).items()}
    return torch.cat(logits), loss.detach(), grads, weights, b


LAYOUTS = {  # tp, pp, cp, sequence parallel, LLM layers on the first stage
    "tp2": (2, 1, 1, False, None),
    "tp2-sp": (2, 1, 1, True, None),
    "pp2-first-stage-1-layer": (1, 2, 1, False, 1),
    "tp2xpp2-sp": (2, 2, 1, True, None),
    "cp2": (1, 1, 2, False, None),
    "tp2-sp-cp2": (2, 1, 2, True, None),
    "tp2xpp2-sp-tied": (2, 2, 1, True, None),
}
TIED = {"tp2xpp2-sp-tied"}
# Qwen3-VL: its 3 DeepStack taps go to LLM layers 0-2, which must be on the first stage (with the ViT).
QWEN3_LAYOUTS = {
    "qwen3-tp2-sp": (2, 1, 1, True, None),
    "qwen3-pp2": (1, 2, 1, False, 3),
    "qwen3-cp2": (1, 1, 2, False, None),
    "qwen3-tp2xpp2-sp": (2, 2, 1, True, 3),
}
WORLD = 4


def _family(layout: str) -> str:
    return "qwen3_vl" if layout in QWEN3_LAYOUTS else "qwen2_5_vl"


@pytest.fixture(scope="module")
def reference():
    return {(family, tied): _hf_reference(tied, family)
            for family, tied in (("qwen2_5_vl", False), ("qwen2_5_vl", True), ("qwen3_vl", False))}


@pytest.fixture(scope="module")
def parallel_results(reference):
    weights = {key: ref[3] for key, ref in reference.items()}
    batches = {family: {k: v.numpy() for k, v in ref[4].items()} for (family, _), ref in reference.items()}
    everything = {**LAYOUTS, **QWEN3_LAYOUTS}
    layouts = [(*layout, name in TIED, _family(name)) for name, layout in everything.items()]
    per_rank = run_distributed(_rank_main, WORLD, layouts, weights, batches, timeout_s=900)
    out = {}
    for i, name in enumerate(everything):
        out[name] = [_from_numpy(rank[i]) for rank in per_rank]
    return out


def _from_numpy(r: dict) -> dict:
    return {
        k: ({n: torch.from_numpy(g) for n, g in v.items()} if isinstance(v, dict) else torch.from_numpy(v) if v is not None and not isinstance(v, int) else v)
        for k, v in r.items()
    }


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_an_image_straddles_a_cp_chunk_edge(reference, family):
    from megatron_vlm.parallel.context_parallel import cp_partition
    from tests.qwen_utils import IMAGE

    batch = reference[family, False][4]
    owner = torch.full((batch["tokens"].shape[1],), -1)
    for rank, index in enumerate(cp_partition(batch["cu_seqlens"], 2, trim_last=True).source_index):
        owner[index[index >= 0]] = rank
    image_owners = owner[batch["tokens"][0] == IMAGE]
    assert set(image_owners.tolist()) == {0, 1}


@pytest.mark.slow
@pytest.mark.parametrize("layout", [*LAYOUTS, *QWEN3_LAYOUTS])
def test_parallel_layout_equals_hf(reference, parallel_results, layout):
    logits, loss, grads, *_ = reference[_family(layout), layout in TIED]
    tp, pp, cp, sp, first = {**LAYOUTS, **QWEN3_LAYOUTS}[layout]
    results = parallel_results[layout]
    n = len(logits)
    last = [r for r in results if r["loss"] is not None]
    assert len(last) == WORLD // pp  # every TP, CP and DP rank of the last stage
    for dp_replica in range(len(last) // (tp * cp)):
        ranks = last[dp_replica * tp * cp : (dp_replica + 1) * tp * cp]
        full = torch.zeros(max(int(r["source"].max()) + 1 for r in ranks), logits.shape[-1])
        for r in ranks:
            keep = r["source"] >= 0
            full[r["source"][keep]] = r["logits"][keep]
        torch.testing.assert_close(full[:n], logits, rtol=0, atol=2e-5)
        by_cp = {r["cp_rank"]: r["loss"] for r in ranks}
        torch.testing.assert_close(sum(by_cp.values()), loss, rtol=1e-5, atol=1e-6)
    if first is not None:
        assert results[0]["layers"] == first and results[-1]["layers"] == LLM_LAYERS - first
    covered = set()
    for rank, r in enumerate(results):
        for name, g in r["grads"].items():
            torch.testing.assert_close(g, grads[name], rtol=1e-5, atol=1e-6, msg=f"rank {rank}: {name}")
        covered |= set(r["grads"])
    assert covered == set(grads)


# ------------------------------------------------- interleaved pipeline (PP=2 x VPP=2) against PP=1
#
# Two ranks, one spawn, one source of truth (HF weights mapped by the name map), four packed
# micro-batches (three with images, one text-only) through the trainer's ForwardStep and, for the
# chunks, the loop's chunk_iterators:
#   1. PP=2 x VPP=2 (2 layers per chunk) loads the HF weights into every chunk, runs
#      forward-backward, saves a dist checkpoint;
#   2. PP=1 loads that checkpoint, runs, saves; rank 0 exports the PP2xVPP2 checkpoint to HF;
#   3. PP=2 x VPP=2 with first_stage_layers=2 (1 layer per chunk on rank 0, 3 on rank 1) loads the
#      PP=1 checkpoint and runs;
#   4., 5. the same as 1. and 2. with tied embeddings (the 3B flavor's), the output layer on the
#      last chunk of rank 1 sharing the embedding of chunk 0 on rank 0;
#   6., 7. Qwen3-VL (3 DeepStack taps, which must all be in chunk 0 of rank 0: 6 layers on the first
#      stage, 3 per chunk): PP=2 x VPP=2 from the HF weights, saved; PP=1 loads that and runs.
# Losses (per micro-batch) and gathered gradients must agree with the PP=1 run of the same weights;
# every load must give the HF weights bit for bit, and so must the export.

VPP_LAYERS, VPP_SEQ = 8, 64
VPP_PHASES = (  # name, pp, vpp, first-stage layers, tied, checkpoint to load (None: HF weights), to save
    ("pp2xvpp2", 2, 2, None, False, None, "vpp"),
    ("pp1", 1, None, None, False, "vpp", "pp1"),
    ("pp2xvpp2-first-stage-2", 2, 2, 2, False, "pp1", None),
    ("pp2xvpp2-tied", 2, 2, None, True, None, "vpp-tied"),
    ("pp1-tied", 1, None, None, True, "vpp-tied", None),
    ("qwen3-pp2xvpp2", 2, 2, 6, False, None, "qwen3-vpp"),
    ("qwen3-pp1", 1, None, None, False, "qwen3-vpp", None),
)


def _vpp_family(name: str) -> str:
    return "qwen3_vl" if name.startswith("qwen3-") else "qwen2_5_vl"


def _vpp_micro_batches(family: str) -> list[dict]:
    """Packed micro-batches of VPP_SEQ tokens in the loader's format (docs/formats.md section 4)."""
    from megatron_vlm.models.family import get_family
    from tests.qwen_utils import IMAGE, VIDEO

    if family == "qwen3_vl":
        from tests.qwen3_utils import sample
    else:
        from tests.unit.test_qwen_model import sample
    packed_mrope_position_ids = get_family(family).module("position_ids").packed_mrope_position_ids
    patch_dim = _vpp_config(family, False).vision.patch_dim

    plans = (
        [([[1, 4, 6], [1, 6, 8]], 4), ([], 7), ([[1, 6, 4]], 4)],
        [([[1, 8, 8]], 5), ([], 9)],
        [([], 12), ([], 20)],  # text only
        [([[1, 4, 4]], 3), ([[1, 6, 6], [1, 4, 8]], 4)],
    )
    batches = []
    for b, plan in enumerate(plans):
        samples = [sample(grids, seed=100 + 10 * b + i, text=text) for i, (grids, text) in enumerate(plan)]
        ids = torch.cat([s[0] for s in samples])
        lengths = [len(s[0]) for s in samples]
        assert len(ids) < VPP_SEQ
        lengths.append(VPP_SEQ - len(ids))  # the padding tail
        ids = torch.cat([ids, torch.zeros(VPP_SEQ - len(ids), dtype=torch.long)])
        cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
        labels = torch.roll(ids, -1)
        loss_mask = torch.zeros(VPP_SEQ)
        for start, end in zip(cu[:-2].tolist(), cu[1:-1].tolist()):
            loss_mask[start : end - 1] = (ids[start + 1 : end] < 240).float()
        labels[loss_mask == 0] = -100
        grids = [s[1] for s in samples if s[1] is not None]
        grid = torch.cat(grids) if grids else torch.zeros(0, 3, dtype=torch.long)
        pixels = torch.cat([s[2] for s in samples if s[2] is not None]) if grids else torch.zeros(0, patch_dim)
        pos = packed_mrope_position_ids(ids, cu, grid if grids else None, image_token_id=IMAGE, video_token_id=VIDEO)
        batches.append(dict(
            tokens=ids[None], labels=labels[None], loss_mask=loss_mask[None], position_ids=pos[:, None],
            cu_seqlens=cu, pixel_values=pixels, image_grid_thw=grid,
            sample_tasks=["extract-single"] * len(samples) + ["padding"],
            sample_ids=[f"mb{b}-s{i}" for i in range(len(samples))] + ["padding"],
            sample_num_tokens=lengths[:-1] + [0],
        ))
    return batches


def _vpp_config(family: str, tied: bool):
    if family == "qwen3_vl":
        from tests.qwen3_utils import tiny_config
    else:
        from tests.qwen_utils import tiny_config
    return tiny_config(tied=tied, num_hidden_layers=VPP_LAYERS)


def _vpp_rank_main(full_numpy: dict, root: str, hf_template: str) -> list[dict]:
    """``full_numpy``: the HF weights in Megatron names by (family, tied)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    out = []
    for name, pp, vpp, first, tied, load, save in VPP_PHASES:
        family = _vpp_family(name)
        out.append(_vpp_phase(family, pp, vpp, first, tied,
                              full_numpy[family, tied] if load is None else f"{root}/{load}",
                              f"{root}/{save}" if save else None))
        if name == "pp1" and dist.get_rank() == 0:  # the HF export of a checkpoint saved with vpp
            from megatron_vlm.checkpoint.convert import mcore_to_hf

            mcore_to_hf(f"{root}/vpp", f"{root}/hf-export", hf_template=hf_template, progress=lambda msg: None)
        dist.barrier()
        parallel_state.destroy_model_parallel()
    return out


def _vpp_phase(family: str, pp: int, vpp, first, tied: bool, source, save_to) -> dict:
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_vlm.models.qwen2_5_vl.weights import load_full_state_dict, local_to_full
    from megatron_vlm.parallel import ParallelLayout, initialize
    from megatron_vlm.training.forward_step import ForwardStep, reduce_report
    from megatron_vlm.training.loop import chunk_iterators
    from megatron_vlm.training.providers import PROVIDERS

    initialize(ParallelLayout(pp=pp, vpp=vpp), seed=17)  # a different random init in every phase
    overrides = dict(pipeline_dtype=torch.float32, calculate_per_token_loss=True)
    if first is not None:
        overrides["num_layers_in_first_pipeline_stage"] = first
    cfg, provider = _vpp_config(family, tied), PROVIDERS[family]
    chunks = [provider.model_class()(cfg, attention_backend="torch", vp_stage=v, **overrides)
              for v in (range(vpp) if vpp else [None])]
    if isinstance(source, dict):
        for chunk in chunks:  # what Qwen25VLProvider.load_hf does
            load_full_state_dict(chunk, {n: torch.from_numpy(a) for n, a in source.items()})
    else:
        state = {f"model{i}": c.sharded_state_dict() for i, c in enumerate(chunks)} if vpp else \
            {"model": chunks[0].sharded_state_dict()}  # as training/checkpointing.py names them
        loaded = dist_checkpointing.load(state, source)
        for i, chunk in enumerate(chunks):
            chunk.load_state_dict(loaded[f"model{i}" if vpp else "model"], strict=True)
    weights = {}
    for chunk in chunks:
        weights.update(local_to_full(chunk, {n: p.detach().clone() for n, p in chunk.named_parameters()}))
    if save_to is not None:
        state = {f"model{i}": c.sharded_state_dict() for i, c in enumerate(chunks)} if vpp else \
            {"model": chunks[0].sharded_state_dict()}
        dist_checkpointing.save(state, save_to)

    batches = _vpp_micro_batches(family)
    data = chunk_iterators(iter(batches), len(chunks)) if vpp else iter(batches)
    step = ForwardStep(provider, 1, 0, torch.device("cpu"))
    losses = get_forward_backward_func()(
        forward_step_func=step, data_iterator=data, model=chunks, num_microbatches=len(batches),
        seq_length=VPP_SEQ, micro_batch_size=1, forward_only=False,
    )
    report = reduce_report(losses, None)
    if tied and pp > 1 and parallel_state.is_rank_in_embedding_group():
        # finalize_model_grads' step for tied weights: embedding (chunk 0 of the first rank) and
        # output layer (last chunk of the last rank) add their gradients
        chunk = chunks[0] if parallel_state.is_pipeline_first_stage() else chunks[-1]
        torch.distributed.all_reduce(chunk.shared_embedding_or_output_weight().grad,
                                     group=parallel_state.get_embedding_group())
    grads = {}
    for chunk in chunks:
        grads.update(local_to_full(chunk, {n: p.grad for n, p in chunk.named_parameters() if p.grad is not None}))
    last = parallel_state.is_pipeline_last_stage()
    layers = [[layer.layer_number - 1 for layer in c.language_model.decoder.layers] for c in chunks]
    return dict(
        loss=report[:2].numpy() if last else None,  # (loss sum, target tokens)
        per_mb=[r["lm loss"][:2].tolist() for r in losses],  # (loss sum, target tokens) per micro-batch
        grads={n: g.numpy() for n, g in grads.items()},
        weights={n: w.numpy() for n, w in weights.items()},
        layers=layers,
        has_vision=[c.vision is not None for c in chunks],
        sample_ids=step.take_records()[0],
    )


@pytest.fixture(scope="module")
def vpp_results(tmp_path_factory):
    import json

    from megatron_vlm.models.qwen2_5_vl.config import to_hf_config
    from megatron_vlm.training.providers import PROVIDERS
    from tests import qwen3_utils, qwen_utils

    root = tmp_path_factory.mktemp("vpp")
    for *_, save in VPP_PHASES:
        if save:
            (root / save).mkdir()
    template = root / "hf-template"
    template.mkdir()
    full, hf_state = {}, {}
    for family, tied, utils in (("qwen2_5_vl", False, qwen_utils), ("qwen2_5_vl", True, qwen_utils),
                                ("qwen3_vl", False, qwen3_utils)):
        cfg = _vpp_config(family, tied)
        hf_state[family, tied] = {n: t.detach() for n, t in utils.hf_model(cfg, seed=3).state_dict().items()}
        mcore = PROVIDERS[family].name_map().hf_to_mcore(hf_state[family, tied], cfg)
        full[family, tied] = {n: t.numpy() for n, t in mcore.items()}
    (template / "config.json").write_text(json.dumps(to_hf_config(_vpp_config("qwen2_5_vl", False))))
    per_rank = run_distributed(_vpp_rank_main, 2, full, str(root), str(template), timeout_s=300)
    phases = {name: [rank[i] for rank in per_rank] for i, (name, *_) in enumerate(VPP_PHASES)}
    return phases, full, hf_state["qwen2_5_vl", False], root


def _merged(results: list[dict], key: str) -> dict:
    out = {}
    for r in results:
        for name, value in r[key].items():
            if name in out:  # PP=1: every rank has everything; tied: embedding and output layer
                assert _np_equal(out[name], value), f"{key} {name} differs between ranks"
            out[name] = value
    return out


def _np_equal(a, b) -> bool:
    return a.shape == b.shape and (a == b).all()


def test_vpp_chunks_hold_megatron_interleaved_layer_ranges(vpp_results):
    phases, *_ = vpp_results
    # Interleaved: chunk v of rank r holds the (v * pp + r)-th slice of the layers.
    assert [r["layers"] for r in phases["pp2xvpp2"]] == [[[0, 1], [4, 5]], [[2, 3], [6, 7]]]
    assert [r["has_vision"] for r in phases["pp2xvpp2"]] == [[True, False], [False, False]]
    # first_stage_layers=2 over 2 chunks: 1 layer per chunk on rank 0, the other 6 as 3 per chunk on rank 1.
    assert [r["layers"] for r in phases["pp2xvpp2-first-stage-2"]] == [[[0], [4]], [[1, 2, 3], [5, 6, 7]]]
    assert [r["layers"] for r in phases["pp1"]] == [[list(range(VPP_LAYERS))]] * 2
    # Qwen3-VL, 6 layers on the first stage: its chunk 0 holds the DeepStack layers 0-2 with the ViT.
    assert [r["layers"] for r in phases["qwen3-pp2xvpp2"]] == [[[0, 1, 2], [4, 5, 6]], [[3], [7]]]
    assert [r["has_vision"] for r in phases["qwen3-pp2xvpp2"]] == [[True, False], [False, False]]


def test_vpp_dist_checkpoints_load_across_pp1_and_pp2xvpp2_bit_identical(vpp_results):
    phases, full, _, _ = vpp_results
    for name, *_, tied, _, _ in VPP_PHASES:
        weights, source = _merged(phases[name], "weights"), full[_vpp_family(name), tied]
        assert weights.keys() == source.keys(), name
        for key, value in source.items():
            assert _np_equal(weights[key], value), f"{name}: {key} is not the HF weight"


def test_vpp_checkpoint_exports_to_the_hf_weights(vpp_results):
    from safetensors.torch import load_file

    _, _, hf_state, root = vpp_results
    exported = {}
    for file in sorted((root / "hf-export").glob("*.safetensors")):
        exported.update(load_file(file))
    assert exported.keys() == hf_state.keys()
    for name, value in hf_state.items():
        assert torch.equal(exported[name], value), name


@pytest.mark.parametrize("name,reference", [
    ("pp2xvpp2", "pp1"), ("pp2xvpp2-first-stage-2", "pp1"), ("pp2xvpp2-tied", "pp1-tied"),
    ("qwen3-pp2xvpp2", "qwen3-pp1"),
])
def test_vpp_loss_and_grads_equal_pp1_over_several_micro_batches(vpp_results, name, reference):
    phases, full, _, _ = vpp_results
    ref, results = phases[reference], phases[name]
    ref_grads = {n: torch.from_numpy(g) for n, g in _merged(ref, "grads").items()}
    assert ref_grads.keys() == full[_vpp_family(name), name.endswith("tied")].keys()  # vision grads despite a text-only micro-batch
    assert ref[0]["sample_ids"] == ref[1]["sample_ids"] and len(ref[0]["sample_ids"]) == 9  # each once
    assert [r["loss"] is not None for r in results] == [False, True]
    loss, ref_loss = torch.from_numpy(results[1]["loss"]), torch.from_numpy(ref[0]["loss"])
    assert loss[1] == ref_loss[1] and ref_loss[1] > 50  # same target tokens
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    # each micro-batch on its own: a swapped activation only perturbs a near-uniform loss a little
    torch.testing.assert_close(torch.tensor(results[1]["per_mb"]), torch.tensor(ref[0]["per_mb"]),
                               rtol=1e-5, atol=1e-5)
    assert results[0]["sample_ids"] == ref[0]["sample_ids"]  # micro-batches in order, each once
    grads = {n: torch.from_numpy(g) for n, g in _merged(results, "grads").items()}
    assert grads.keys() == ref_grads.keys()
    for key, g in ref_grads.items():
        torch.testing.assert_close(grads[key], g, rtol=1e-5, atol=1e-6, msg=key)
