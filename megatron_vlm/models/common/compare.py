"""Run HF transformers and our Megatron model of a family (Qwen2.5-VL, Qwen3-VL) on the same images
and prompt; compare logits.

Used by ``tools/compare_hf.py`` (see it for the command line). Every rank builds the same inputs;
our model runs at the current parallel layout (TP/PP/CP from ``megatron_vlm.parallel``) through
Megatron's pipeline schedule, with weights from the HF directory (through the name map) or from
a Megatron dist checkpoint; rank 0 gathers our logits, runs HF in float32 and reports
max |delta logit| and top-1 agreement. The family (``models/family.py``) gives the image rule and
mRoPE ids; its provider (``training/providers.py``) the model class and HF name map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_vlm.parallel.state import layout


class CompareError(ValueError):
    """Bad input; the CLI prints it as one line."""


@dataclass
class Comparison:
    tokens: int
    max_abs_diff: float
    top1_agreement: float

    def line(self) -> str:
        return (
            f"tokens {self.tokens}  max |delta logit| {self.max_abs_diff:.3e}  "
            f"top-1 agreement {100 * self.top1_agreement:.2f}%"
        )


def _provider(family):
    from megatron_vlm.training.providers import PROVIDERS

    return PROVIDERS[family.name]


def build_inputs(cfg, family, tokenizer_dir: Path, images: list[Path], prompt: str) -> dict:
    """A loader-style micro-batch (docs/formats.md section 4) for one sample: images then the prompt."""
    from megatron_vlm.data.image_processing import process_images
    from megatron_vlm.data.tokens import load_tokenizer

    try:
        tokenizer = load_tokenizer(tokenizer_dir)
    except FileNotFoundError:
        raise CompareError(f"no tokenizer.json in {tokenizer_dir}; pass --tokenizer DIR") from None
    datas = []
    for path in images:
        if not Path(path).is_file():
            raise CompareError(f"image not found: {path}")
        datas.append(Path(path).read_bytes())
    pixel_values, grids = process_images(datas, family.image) if datas else (None, None)
    ids: list[int] = []
    merge = cfg.vision.spatial_merge_size**2
    for t, h, w in grids.tolist() if grids is not None else []:
        ids += [cfg.vision_start_token_id] + [cfg.image_token_id] * (t * h * w // merge) + [cfg.vision_end_token_id]
    ids += tokenizer.encode(prompt, add_special_tokens=False).ids
    if max(ids) >= cfg.text.vocab_size:
        raise CompareError(f"token id {max(ids)} is outside the model's vocabulary ({cfg.text.vocab_size})")
    tokens = torch.tensor(ids)
    pos = family.position_ids(tokens, image_grid_thw=grids)
    T = len(ids)
    return dict(
        tokens=tokens[None], labels=torch.full((1, T), -100), loss_mask=torch.zeros(1, T),
        position_ids=pos[:, None], cu_seqlens=torch.tensor([0, T], dtype=torch.int32),
        pixel_values=pixel_values, image_grid_thw=grids,
    )


def pad_for_layout(batch: dict, multiple: int) -> dict:
    """Append a padding sub-sequence so T is a multiple of ``multiple`` (SP and CP need it)."""
    T = batch["tokens"].shape[1]
    tail = -T % multiple
    if not tail:
        return batch
    out = dict(batch)
    out["tokens"] = torch.cat([batch["tokens"], torch.zeros(1, tail, dtype=torch.long)], 1)
    out["labels"] = torch.cat([batch["labels"], torch.full((1, tail), -100)], 1)
    out["loss_mask"] = torch.cat([batch["loss_mask"], torch.zeros(1, tail)], 1)
    out["position_ids"] = torch.cat([batch["position_ids"], torch.arange(tail).expand(3, 1, tail)], 2)
    out["cu_seqlens"] = torch.cat([batch["cu_seqlens"], torch.tensor([T + tail], dtype=torch.int32)])
    return out


def our_logits(cfg, family, batch: dict, hf_dir: Path, mcore_dir: Path | None) -> torch.Tensor | None:
    """Our logits [T, V] for ``batch`` on rank 0 (None elsewhere), at the layout ``initialize()`` set up
    (sequence parallelism included)."""
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_vlm.models.qwen2_5_vl.model import forward_batch

    tp, cp = layout().tp, layout().cp
    model = _provider(family).model_class()(cfg, attention_backend="torch", pipeline_dtype=torch.float32).eval()
    load_weights(model, cfg, family, hf_dir, mcore_dir)
    full = pad_for_layout(batch, 2 * cp * tp)
    local = full
    if cp > 1:
        from megatron_vlm.parallel.context_parallel import split_batch_for_cp

        local = split_batch_for_cp(
            full, cp, parallel_state.get_context_parallel_rank(),
            image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
        )

    def forward_step(data_iterator, model):
        return forward_batch(model, local, with_loss=False), lambda out, non_loss_data=False: out.detach()

    with torch.no_grad():
        out = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([None]), model=[model], num_microbatches=1,
            seq_length=local["tokens"].shape[1] * cp, micro_batch_size=1, forward_only=True, collect_non_loss_data=True,
        )
    logits = out[0][0] if parallel_state.is_pipeline_last_stage() else None
    if logits is not None and cp > 1:
        from megatron_vlm.parallel.context_parallel import gather_from_cp

        logits = gather_from_cp(logits, local["cp_partition"], dim=0, group=parallel_state.get_context_parallel_group())
    # The last stage of global rank 0's pipeline (TP, CP and DP rank 0) sends its logits to rank 0.
    T = batch["tokens"].shape[1]
    first_replica = (
        parallel_state.get_tensor_model_parallel_rank() == 0
        and parallel_state.get_context_parallel_rank() == 0
        and parallel_state.get_data_parallel_rank() == 0
    )
    if dist.get_rank() == 0 and logits is None:
        logits = torch.empty(full["tokens"].shape[1], cfg.text.vocab_size)
        dist.recv(logits, src=parallel_state.get_pipeline_model_parallel_last_rank())
    elif dist.get_rank() != 0 and logits is not None and first_replica:
        dist.send(logits.contiguous(), dst=0)
    return logits[:T] if dist.get_rank() == 0 else None


def load_weights(model, cfg, family, hf_dir: Path, mcore_dir: Path | None) -> None:
    """From a Megatron dist checkpoint if given, else from the HF safetensors through the name map."""
    if mcore_dir is not None:
        from megatron_vlm.checkpoint import safe_load

        try:
            state = safe_load.load(model.sharded_state_dict(), mcore_dir)
        except safe_load.CheckpointError as err:
            raise CompareError(str(err)) from None
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
        if missing:
            raise CompareError(f"Megatron checkpoint {mcore_dir} lacks {len(missing)} tensors, e.g. {missing[0]}")
        return
    from megatron_vlm.checkpoint.hf_io import HFReader
    from megatron_vlm.models.qwen2_5_vl.weights import load_full_state_dict

    reader = HFReader(hf_dir)
    hf_state = {name: reader.get(name).float() for name in reader.names()}
    load_full_state_dict(model, _provider(family).name_map().hf_to_mcore(hf_state, cfg, model.spec))


def hf_logits(hf_dir: Path, batch: dict) -> torch.Tensor:
    """HF transformers' float32 logits [T, V] (eager attention) for the unpadded batch."""
    from transformers import AutoModelForImageTextToText  # the config's architecture, any family

    hf = AutoModelForImageTextToText.from_pretrained(
        str(hf_dir), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tokens = batch["tokens"]
    kwargs = {}
    if batch["pixel_values"] is not None:
        image_id = hf.config.image_token_id
        kwargs = dict(
            pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
            mm_token_type_ids=(tokens == image_id).int(),
        )
    with torch.no_grad():
        return hf(input_ids=tokens, **kwargs).logits[0].float()


def compare(ours: torch.Tensor, reference: torch.Tensor) -> Comparison:
    diff = (ours - reference).abs().max().item()
    agree = (ours.argmax(-1) == reference.argmax(-1)).float().mean().item()
    return Comparison(tokens=reference.shape[0], max_abs_diff=diff, top1_agreement=agree)
