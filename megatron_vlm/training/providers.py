"""The model seam of the trainer: build a model chunk for a pipeline stage, and feed it a micro-batch.

A provider has three methods; the loop knows nothing else about the model:

- ``build(recipe, pre_process, post_process, vp_stage)`` -> one Megatron module (a chunk; its
  ``.config`` is the TransformerConfig the schedules and DDP use)
- ``forward(model, batch)`` -> per-token loss [1, T] on the last stage (output tensor elsewhere)
- ``load_hf(chunks, path)`` -> load an HF checkpoint directory into the chunks (conversion on the fly)

``gpt`` is Megatron's GPTModel with mRoPE on packed text (tests and trainer development);
``qwen2_5_vl`` and ``qwen3_vl`` are the real models (one provider class; the family says which
model class and HF name map). ``parallel_and_precision_kwargs(recipe)`` turns the recipe's precision,
layout and recompute options into TransformerConfig arguments for either.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import torch

from megatron_vlm.models.family import family_for_kind, get_family
from megatron_vlm.parallel.state import device
from megatron_vlm.training.config import Recipe, RecipeError


def te_available() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def te_layers() -> bool:
    """Build with Transformer Engine layers (the ``te`` spec): on a GPU with TE importable."""
    return device().is_cuda and te_available()


def parallel_and_precision_kwargs(recipe: Recipe) -> dict:
    """TransformerConfig arguments that come from the recipe, not from the model's shape."""
    par, train = recipe.parallel, recipe.train
    if train.fp8 and not te_available():
        raise RecipeError(f"train.fp8={train.fp8} needs Transformer Engine, which is not installed (set train.fp8=null)")
    bf16 = train.precision == "bf16"
    kwargs = dict(
        **par.transformer_config_kwargs(),
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        calculate_per_token_loss=True,  # forward_step returns (loss sum, token count); see forward_step.py
        # On a GPU initialise on the device (a 72B model on host RAM is slow and heavy); on CPU there is no other.
        use_cpu_initialization=not device().is_cuda,
        fp8=train.fp8,
        num_layers_in_first_pipeline_stage=recipe.model.first_stage_layers,
    )
    if recipe.model.recompute == "selective":
        kwargs.update(recompute_granularity="selective")
    elif recipe.model.recompute == "full":
        kwargs.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    return kwargs


def check_virtual_pipeline(recipe: Recipe, num_layers: int, dp: int | None = None) -> None:
    """Refuse a parallel.vpp that Megatron's interleaved schedule cannot run, before building.

    Megatron gives every chunk of the first rank ``first_stage_layers / vpp`` layers and every
    chunk of the other ranks an equal share of the rest; the schedule runs micro-batches in
    groups of pp, so (given ``dp``) each data-parallel rank's micro-batches must be a multiple of pp.
    """
    par, first = recipe.parallel, recipe.model.first_stage_layers
    if not par.vpp:
        return
    if par.pp < 2:
        raise RecipeError(f"parallel.vpp={par.vpp} needs parallel.pp >= 2 (got {par.pp})")
    if dp is not None:
        micro_batches = recipe.train.global_batch_tokens // recipe.data.max_seq_length // dp
        if micro_batches % par.pp:
            raise RecipeError(f"parallel.vpp={par.vpp} runs micro-batches in groups of parallel.pp={par.pp}, but each of "
                              f"the {dp} data-parallel ranks gets {micro_batches} per step (train.global_batch_tokens / "
                              f"data.max_seq_length / dp)")
    if first is None:
        if num_layers % (par.pp * par.vpp):
            raise RecipeError(f"{num_layers} LLM layers do not split into parallel.pp x parallel.vpp = "
                              f"{par.pp} x {par.vpp} equal chunks")
        return
    rest, others = num_layers - first, par.pp - 1
    if first % par.vpp or rest <= 0 or rest % (others * par.vpp):
        raise RecipeError(f"model.first_stage_layers={first} does not fit {num_layers} LLM layers at parallel.pp={par.pp} "
                          f"x parallel.vpp={par.vpp}: it and the other {rest} layers split over {others} rank(s) "
                          f"must give each virtual chunk a whole number (>= 1) of layers")


def is_merger_parameter(name: str) -> bool:
    """A vision parameter that ``model.freeze_merger`` (not ``freeze_vision``) decides: the merger's,
    and Qwen3-VL's DeepStack mergers' (``vision.deepstack_mergers.<k>.``)."""
    return name.startswith("vision.") and (".merger." in name or ".deepstack_mergers." in name)


def block_causal_mask(cu_seqlens: torch.Tensor, length: int) -> torch.Tensor:
    """[1, 1, T, T] bool, True where attention is NOT allowed: causal and within one sub-sequence."""
    segment = torch.zeros(length, dtype=torch.int64)
    segment[cu_seqlens[1:-1].long()] = 1
    segment = segment.cumsum(0)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = causal & (segment[:, None] == segment[None, :])
    return ~allowed[None, None]


def _gpt_flavors() -> dict:
    """Named GPT sizes, as the Qwen2 decoder config (GQA, SwiGLU, RMSNorm, QKV bias: what GptProvider builds)."""
    from megatron_vlm.models.qwen2_5_vl.config import TextConfig

    return {
        "debug": TextConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, mrope_section=[2, 3, 3]),
        "small": TextConfig(vocab_size=1024, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                            num_attention_heads=8, num_key_value_heads=4, mrope_section=[4, 6, 6]),
    }


def _with_recipe_overrides(text, recipe: Recipe):
    """The decoder config with the recipe's model.num_layers and model.rope_theta applied."""
    changes = {}
    if recipe.model.num_layers:
        changes["num_hidden_layers"] = recipe.model.num_layers
    if recipe.model.rope_theta:
        changes["rope_theta"] = recipe.model.rope_theta
    return dataclasses.replace(text, **changes)


class GptProvider:
    """Megatron GPTModel (local or TE spec) with mRoPE, trained on packed text micro-batches."""

    family = family_for_kind("gpt")  # whose data layout its (text-only) micro-batches follow

    def model_config(self, recipe: Recipe):
        """The decoder's shapes (a Qwen2 TextConfig) for the recipe's flavor and overrides."""
        flavors = _gpt_flavors()
        if recipe.model.flavor not in flavors:
            raise RecipeError(f"model.flavor={recipe.model.flavor!r} unknown for gpt; known: {', '.join(flavors)}")
        return _with_recipe_overrides(flavors[recipe.model.flavor], recipe)

    def vocab_size(self, recipe: Recipe) -> int:
        return self.model_config(recipe).vocab_size

    def transformer_config(self, recipe: Recipe):
        from megatron.core.transformer import TransformerConfig

        t = self.model_config(recipe)
        return TransformerConfig(
            num_layers=t.num_hidden_layers, hidden_size=t.hidden_size, num_attention_heads=t.num_attention_heads,
            num_query_groups=t.num_key_value_heads, ffn_hidden_size=t.intermediate_size, gated_linear_unit=True,
            activation_func=torch.nn.functional.silu, normalization="RMSNorm", add_bias_linear=False,
            add_qkv_bias=True, hidden_dropout=0.0, attention_dropout=0.0, mrope_section=list(t.mrope_section),
            **parallel_and_precision_kwargs(recipe),
        )

    def build(self, recipe: Recipe, pre_process: bool, post_process: bool, vp_stage: int | None):
        from megatron.core.models.gpt import GPTModel
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

        t = self.model_config(recipe)
        check_virtual_pipeline(recipe, t.num_hidden_layers, _data_parallel_size())
        config = self.transformer_config(recipe)
        if self.te_spec(recipe):
            from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

            spec = get_gpt_layer_with_transformer_engine_spec()
        else:
            spec = get_gpt_layer_local_spec(normalization="RMSNorm")
        model = GPTModel(
            config=config, transformer_layer_spec=spec, vocab_size=t.vocab_size,
            max_sequence_length=recipe.data.max_seq_length, pre_process=pre_process, post_process=post_process,
            position_embedding_type="mrope",
            rotary_base=t.rope_theta, share_embeddings_and_output_weights=False,
            vp_stage=vp_stage,
        )
        model.te_spec = self.te_spec(recipe)  # how forward() must express packing
        return model

    @staticmethod
    def te_spec(recipe: Recipe) -> bool:
        """Megatron's TE spec: on a GPU with TE, in bf16 (TE's packed attention has no fp32 kernel)."""
        return te_layers() and recipe.train.precision == "bf16"

    def forward(self, model, batch: dict) -> torch.Tensor:
        """Per-token loss of a packed micro-batch; attention never crosses a sub-sequence.

        TE spec: THD packing (``PackedSeqParams``, which Megatron's TE attention turns into a
        padding_causal mask over ``cu_seqlens``; mRoPE angles per token, Megatron mapping them by
        offset since they cover all T tokens). Local spec (no THD path): a block-causal mask."""
        from megatron.core.packed_seq_params import PackedSeqParams

        labels = batch["labels"].clamp(min=0)  # -100 targets carry loss_mask 0; any valid id will do
        tokens, cu = batch["tokens"], batch["cu_seqlens"]
        if getattr(_unwrap(model), "te_spec", False):
            cu = cu.to(device=tokens.device, dtype=torch.int32)
            if int(cu[-1]) != tokens.shape[1]:
                raise ValueError(f"cu_seqlens end at {int(cu[-1])}, the micro-batch has {tokens.shape[1]} tokens")
            longest = int((cu[1:] - cu[:-1]).max())
            packed = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                                     max_seqlen_q=longest, max_seqlen_kv=longest)
            return model(tokens, batch["position_ids"], None, labels=labels, packed_seq_params=packed)
        mask = block_causal_mask(cu.cpu(), tokens.shape[1]).to(tokens.device)
        return model(tokens, batch["position_ids"], mask, labels=labels)

    def load_hf(self, chunks, path: str) -> None:
        raise RecipeError("checkpoint.init_from with an HF directory needs model.kind=qwen2_5_vl")


class Qwen25VLProvider:
    """Qwen2.5-VL on Megatron-Core (megatron_vlm.models.qwen2_5_vl), fed the loader's packed batches."""

    family = get_family("qwen2_5_vl")

    @staticmethod
    def model_class():
        from megatron_vlm.models.qwen2_5_vl.model import Qwen2_5_VLModel

        return Qwen2_5_VLModel

    @staticmethod
    def name_map():
        """The family's HF <-> Megatron name map module (``hf_to_mcore``, ``mcore_to_hf``)."""
        from megatron_vlm.checkpoint import hf_names

        return hf_names

    def model_config(self, recipe: Recipe):
        try:
            cfg = self.family.flavor(recipe.model.flavor)
        except ValueError as err:
            raise RecipeError(f"model.flavor: {err}") from None
        return dataclasses.replace(cfg, text=_with_recipe_overrides(cfg.text, recipe))

    def vocab_size(self, recipe: Recipe) -> int:
        return self.model_config(recipe).text.vocab_size

    def build(self, recipe: Recipe, pre_process: bool, post_process: bool, vp_stage: int | None):
        cfg = self.model_config(recipe)
        check_virtual_pipeline(recipe, cfg.text.num_hidden_layers, _data_parallel_size())
        overrides = parallel_and_precision_kwargs(recipe)  # the layout too: passed, not read from globals
        spec = "te" if te_layers() else "local"  # attention: by dtype (models.common.attention.resolve_backend)
        model = self.model_class()(cfg, spec=spec, attention_backend=recipe.model.attention_backend,
                                pre_process=pre_process, post_process=post_process,
                                vp_stage=vp_stage, **overrides)
        for name, param in model.named_parameters():
            if not name.startswith("vision."):
                continue
            in_merger = is_merger_parameter(name)
            if (in_merger and recipe.model.freeze_merger) or (not in_merger and recipe.model.freeze_vision):
                param.requires_grad_(False)
        return model

    def forward(self, model, batch: dict) -> torch.Tensor:
        from megatron_vlm.models.qwen2_5_vl.model import forward_batch

        if batch["pixel_values"].numel():
            batch = dict(batch, pixel_values=batch["pixel_values"].to(next(model.parameters()).dtype))
        else:  # text-only micro-batch
            batch = dict(batch, pixel_values=None, image_grid_thw=None)
        return forward_batch(model, batch)

    def load_hf(self, chunks, path: str) -> None:
        """Read the HF safetensors, map names (the family's name map) and copy each rank's shard in."""
        from megatron_vlm.checkpoint.hf_io import HFReader
        from megatron_vlm.models.qwen2_5_vl.weights import load_full_state_dict

        inner = [_unwrap(c) for c in chunks]
        cfg = self.family.from_hf_config(str(Path(path) / "config.json"))
        hf_state = dict(HFReader(path).iter_by_file())
        full = self.name_map().hf_to_mcore(hf_state, cfg, spec=inner[0].spec)
        with torch.no_grad():
            for model in inner:
                load_full_state_dict(model, full)


def _data_parallel_size() -> int | None:
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_world_size() if parallel_state.model_parallel_is_initialized() else None


def _unwrap(module):
    while hasattr(module, "module"):
        module = module.module
    return module


class Qwen3VLProvider(Qwen25VLProvider):
    """Qwen3-VL on Megatron-Core (megatron_vlm.models.qwen3_vl): the same seam, its own model and name map."""

    family = get_family("qwen3_vl")

    @staticmethod
    def model_class():
        from megatron_vlm.models.qwen3_vl.model import Qwen3VLModel

        return Qwen3VLModel

    @staticmethod
    def name_map():
        from megatron_vlm.checkpoint import hf_names_qwen3_vl

        return hf_names_qwen3_vl


PROVIDERS = {"gpt": GptProvider(), "qwen2_5_vl": Qwen25VLProvider(), "qwen3_vl": Qwen3VLProvider()}


def get_provider(recipe: Recipe):
    if recipe.model.kind not in PROVIDERS:
        raise RecipeError(f"model.kind={recipe.model.kind!r} unknown; known: {', '.join(PROVIDERS)}")
    return PROVIDERS[recipe.model.kind]
