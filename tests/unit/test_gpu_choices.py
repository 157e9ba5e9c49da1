"""What the trainer chooses on a GPU machine, checked on CPU (``torch.cuda.is_available`` patched,
Transformer Engine replaced by tests/te_stand_in.py where it matters).

- Parameters are initialised on the device with a GPU, on the host without one (item 11).
- The attention backend follows the dtype: ``auto`` never picks TE or flash-attn for float32
  (no fp32 kernel for packed sequences), and an explicit ``te``/``flash`` with float32 is refused
  in one line at build (item 4).
- ``model.kind=gpt`` on the TE spec expresses packing as THD (Megatron's TE attention then masks
  padding_causal per sub-sequence) instead of a block mask the TE spec would ignore, and the
  TE spec is chosen for bf16 only; on the local spec the block mask is built from the boundaries
  wherever they live (item 5).
"""

from __future__ import annotations

import pytest
import torch

from tests import te_stand_in


def _recipe(*overrides):
    from megatron_vlm.training.config import load_recipe

    return load_recipe(None, ["train.data_source=synthetic", "logging.wandb_mode=disabled", *overrides])


@pytest.mark.parametrize("gpu", [True, False])
def test_parameters_initialise_on_the_device_with_a_gpu(monkeypatch, gpu):
    from megatron_vlm.models.qwen2_5_vl.config import flavor
    from megatron_vlm.models.qwen2_5_vl.model import text_transformer_config, vision_transformer_configs
    from megatron_vlm.training.providers import parallel_and_precision_kwargs

    monkeypatch.delenv("MEGATRON_VLM_DEVICE", raising=False)  # as on a GPU machine outside the test suite
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    kwargs = parallel_and_precision_kwargs(_recipe("model.kind=qwen2_5_vl"))
    for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size",
                "virtual_pipeline_model_parallel_size"):
        kwargs.pop(key)
    cfg = flavor("debug")
    configs = [text_transformer_config(cfg, **kwargs), *vision_transformer_configs(cfg, **kwargs)]
    assert [c.use_cpu_initialization for c in configs] == [not gpu] * 3


def test_auto_attention_backend_follows_the_dtype(monkeypatch):
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megatron_vlm.models.common.attention import CoreAttention, packed_seq_params, resolve_backend, torch_attention

    te_stand_in.install(monkeypatch)
    monkeypatch.delenv("MEGATRON_VLM_DEVICE", raising=False)  # as on a GPU machine outside the test suite
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                               attention_dropout=0.0, use_cpu_initialization=True, params_dtype=torch.float32)
    attention = CoreAttention(config, layer_number=1, attn_mask_type=AttnMaskType.causal)
    assert attention.backend == "torch"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the forward itself runs on CPU
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(10, 1, h, 8, generator=g) for h in (4, 2, 2))
    cu = torch.tensor([0, 6, 10])
    out = attention(q, k, v, packed_seq_params=packed_seq_params(cu))
    want = torch_attention(q[:, 0], k[:, 0], v[:, 0], cu, True, 8**-0.5).reshape(10, 1, 32)
    torch.testing.assert_close(out, want)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_backend("auto", torch.bfloat16) == "te"
    assert resolve_backend("auto", torch.float32) == "torch"
    for explicit in ("te", "flash"):
        with pytest.raises(ValueError, match=f"attention backend {explicit} has no float32 kernel"):
            resolve_backend(explicit, torch.float32)


class _Recording(torch.nn.Module):
    """Stands in for the GPTModel chunk: records what the provider feeds it."""

    def __init__(self, te_spec: bool):
        super().__init__()
        self.te_spec, self.seen = te_spec, None

    def forward(self, tokens, position_ids, mask, labels=None, packed_seq_params=None):
        self.seen = (mask, packed_seq_params)
        return torch.zeros_like(tokens, dtype=torch.float32)


def test_gpt_packing_on_the_te_spec_is_thd(monkeypatch):
    from megatron_vlm.training.providers import GptProvider, block_causal_mask

    provider = GptProvider()
    monkeypatch.setattr("megatron_vlm.training.providers.te_layers", lambda: True)
    assert provider.te_spec(_recipe("model.kind=gpt", "train.precision=bf16"))
    assert not provider.te_spec(_recipe("model.kind=gpt", "train.precision=fp32"))  # TE has no fp32 THD kernel

    batch = {"tokens": torch.zeros(1, 12, dtype=torch.long), "labels": torch.full((1, 12), -100),
             "position_ids": torch.zeros(3, 1, 12, dtype=torch.long), "cu_seqlens": torch.tensor([0, 5, 9, 12])}
    te_model = _Recording(te_spec=True)
    provider.forward(te_model, batch)
    mask, packed = te_model.seen
    assert mask is None and packed.qkv_format == "thd" and packed.max_seqlen_q == 5
    assert packed.cu_seqlens_q.dtype == torch.int32 and packed.cu_seqlens_q.tolist() == [0, 5, 9, 12]
    with pytest.raises(ValueError, match="cu_seqlens end at 9"):
        provider.forward(te_model, dict(batch, cu_seqlens=torch.tensor([0, 5, 9])))

    local_model = _Recording(te_spec=False)
    provider.forward(local_model, batch)
    mask, packed = local_model.seen
    assert packed is None and torch.equal(mask, block_causal_mask(batch["cu_seqlens"], 12))
    assert not mask[0, 0, 6, 5] and mask[0, 0, 5, 4]  # within a document causal; across documents never


@pytest.mark.parametrize("value", ["true", "e5m2", "fp8", "1", "mxfp8"])
def test_fp8_values_outside_null_e4m3_hybrid_are_refused_at_load(value):
    from megatron_vlm.training.config import RecipeError

    with pytest.raises(RecipeError, match=r"^train\.fp8: .* is not one of e4m3, hybrid$"):
        _recipe(f"train.fp8={value}")
    for ok in ("null", "e4m3", "hybrid"):
        assert _recipe(f"train.fp8={ok}").train.fp8 == (None if ok == "null" else ok)


@pytest.mark.parametrize("layout,lengths,ok", [
    # cp=2, tp=2 with sequence parallelism: 64 rows per... every length a multiple of 16 x 2 x 2 = 64
    (["parallel.cp=2", "parallel.tp=2", "parallel.sequence_parallel=true"], (4096, 64), True),
    (["parallel.cp=2", "parallel.tp=2", "parallel.sequence_parallel=true"], (4096, 32), False),  # 8 rows a rank
    (["parallel.cp=2", "parallel.tp=2"], (4096, 32), True),  # without SP the TP ranks hold all 16 rows
    (["parallel.cp=4", "parallel.tp=4", "parallel.sequence_parallel=true"], (131072, 128), False),  # the 7B layout
    (["parallel.cp=4", "parallel.tp=4", "parallel.sequence_parallel=true"], (131072, 256), True),
    ([], (1000, 16), False),  # fixed-length mode below: max_seq_length itself
])
def test_fp8_rows_per_rank_are_a_multiple_of_16(layout, lengths, ok):
    from megatron_vlm.training.config import RecipeError

    max_len, multiple = lengths
    overrides = [*layout, f"data.max_seq_length={max_len}", f"data.seq_length_multiple={multiple}",
                 f"train.global_batch_tokens={max_len}", "train.fp8=hybrid"]
    if ok:
        _recipe(*overrides)
    else:
        with pytest.raises(RecipeError, match=r"^train\.fp8='hybrid': with FP8 every rank's rows .* multiple of 16"):
            _recipe(*overrides)
    _recipe(*[o for o in overrides if o != "train.fp8=hybrid"])  # without FP8 the same layout loads


def test_attention_backend_rules_at_load():
    from megatron_vlm.training.config import RecipeError

    for backend in ("te", "flash"):
        with pytest.raises(RecipeError, match=rf"^model\.attention_backend='{backend}': te and flash attention need "
                                              r"train\.precision=bf16"):
            _recipe("train.precision=fp32", f"model.attention_backend={backend}")
        assert _recipe(f"model.attention_backend={backend}").model.attention_backend == backend
    assert _recipe("train.precision=fp32", "model.attention_backend=torch").model.attention_backend == "torch"
    with pytest.raises(RecipeError, match="model.attention_backend='wrong'|is not one of auto, torch, flash, te"):
        _recipe("model.attention_backend=wrong")
    with pytest.raises(RecipeError, match=r"^model\.attention_backend='torch': is chosen by Megatron's spec"):
        _recipe("model.kind=gpt", "model.attention_backend=torch")
