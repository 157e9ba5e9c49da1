"""The training recipe: nested dataclasses, loaded from YAML with dotted overrides.

A recipe has six sections, one dataclass each: ``model``, ``parallel``, ``data`` (owned by the
data layer: :class:`megatron_vlm.data.recipe.DataRecipe`), ``train``, ``checkpoint``, ``logging``.

    recipe = load_recipe("examples/recipes/debug.yaml", ["train.lr=3e-4", "parallel.tp=2"])
    print(recipe_to_yaml(recipe))

Unknown keys are errors (a typo must not silently train with a default). Override values are
parsed as YAML scalars, so ``train.tokens=5e9`` and ``model.freeze_vision=true`` work. Every value
is checked when the recipe loads (utils/options.py): a choice is a ``Literal`` field, a number is
finite and not a list, and what a type cannot say is a one-line rule in the section's ``RULES``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from megatron_vlm.data.recipe import DataRecipe
from megatron_vlm.models.family import FAMILIES, TEXT_ONLY_KINDS, get_family
from megatron_vlm.parallel.state import ParallelLayout
from megatron_vlm.utils import options

ModelKind = Literal[(*FAMILIES, *TEXT_ONLY_KINDS)]  # every model family, and the text-only test models
Recompute = Literal["none", "selective", "full"]
DataSource = Literal["shards", "synthetic"]
LrSchedule = Literal["cosine", "constant"]
Optimizer = Literal["adam", "sgd"]
Precision = Literal["bf16", "fp32"]
WandbMode = Literal["auto", "online", "offline", "disabled"]
AttentionBackend = Literal["auto", "torch", "flash", "te"]
Fp8 = Literal["e4m3", "hybrid"]
FP8_ROWS = 16
"""With FP8, every rank's rows (tokens after the CP and SP split) must be a multiple of this: TE's FP8
GEMMs need 8, Megatron pads to 16 (MXFP8, Blackwell only and out of scope here, would need 32)."""


@dataclass
class ModelConfig:
    """Which model to build and the recipe-level options on it."""

    kind: ModelKind = "qwen2_5_vl"
    """A model family (`qwen2_5_vl`, `qwen3_vl`: models/family.py) or `gpt` (Megatron GPTModel on
    synthetic data, for tests)."""
    flavor: str = "debug"
    """Named size in the model family's flavor registry (e.g. `debug`, `7B`; Qwen3-VL: `8B`)."""
    num_layers: int | None = None
    """Override the flavor's LLM depth (e.g. a 7B-width model with fewer layers); None keeps it."""
    rope_theta: float | None = None
    """mRoPE base; LongPT uses 4e6 (1e6 scaled by Dynamic-NTK for 4x). None keeps the flavor's."""
    freeze_vision: bool = False
    """Keep the ViT blocks frozen (no grads, no optimizer state)."""
    freeze_merger: bool = False
    """Keep the patch merger (vision -> LLM projection) frozen."""
    recompute: Recompute = "none"
    """Activation recompute: `none`, `selective` (core attention) or `full` (whole layers)."""
    first_stage_layers: int | None = None
    """LLM layers on the first pipeline stage (it also holds the ViT); None splits evenly."""
    attention_backend: AttentionBackend = "auto"
    """Core attention of a model family (not `gpt`): `auto` (bf16 on a GPU: TE, else flash-attn, else torch; fp32 and
    CPU: torch), or `torch` (SDPA), `flash` (flash-attn) or `te` (Transformer Engine), which need bf16."""

    RULES = (
        *options.at_least(1, "num_layers"),
        *options.at_least(0, "first_stage_layers"),
        ("rope_theta", lambda m: m.rope_theta is None or m.rope_theta > 0, "must be positive"),
        ("flavor", lambda m: m.kind not in FAMILIES or m.flavor in get_family(m.kind).flavor_names(),
         "is not a flavor of model.kind; known: " + "; ".join(f"{n}: {', '.join(get_family(n).flavor_names())}" for n in FAMILIES)),
    )


# The recipe's parallel section is the runtime layout itself (parallel/state.py): one definition.
ParallelConfig = ParallelLayout


@dataclass
class TrainConfig:
    """Token budget, optimizer, precision and run-control settings."""

    tokens: int = 5_000_000_000
    """Total training tokens; steps = tokens // global_batch_tokens."""
    global_batch_tokens: int = 4_194_304
    """Tokens per optimizer step (e.g. 32 x 131,072); a multiple of data.max_seq_length."""
    max_steps: int | None = None
    """Stop after this many steps even if the budget allows more (schedule still uses the budget)."""
    data_source: DataSource = "shards"
    """`shards` (the real loader over data.shards) or `synthetic` (packed random batches, for tests)."""
    lr: float = 1e-5
    """Peak learning rate."""
    min_lr: float = 0.0
    """Learning rate at the end of the cosine decay."""
    lr_schedule: LrSchedule = "cosine"
    """`cosine` (warmup then cosine to min_lr) or `constant` (warmup then lr)."""
    warmup_steps: int = 0
    """Linear warmup steps from 0 to lr."""
    optimizer: Optimizer = "adam"
    """`adam` (AdamW) or `sgd`."""
    weight_decay: float = 0.1
    """Decoupled weight decay (not applied to biases and norms)."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.95
    """AdamW beta2."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    clip_grad: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    precision: Precision = "bf16"
    """`bf16` (bf16 weights, fp32 master weights and grad reduction) or `fp32`."""
    fp8: Fp8 | None = None
    """FP8 recipe through Transformer Engine (`hybrid` or `e4m3`); null for none. Needs TE (Hopper);
    every rank's rows must be a multiple of 16 (see the recipe's rules)."""
    seed: int = 1234
    """Seed for model init and every RNG the trainer owns."""
    max_nonfinite_steps: int = 3
    """Consecutive steps with NaN/Inf loss or grads after which the run stops."""

    RULES = (
        *options.at_least(1, "tokens", "global_batch_tokens", "max_steps", "max_nonfinite_steps"),
        *options.at_least(0, "lr", "min_lr", "warmup_steps", "weight_decay", "clip_grad"),
        ("adam_beta1", lambda t: 0 <= t.adam_beta1 < 1, "must be in [0, 1)"),
        ("adam_beta2", lambda t: 0 <= t.adam_beta2 < 1, "must be in [0, 1)"),
        ("adam_eps", lambda t: t.adam_eps > 0, "must be positive"),
        ("min_lr", lambda t: t.min_lr <= t.lr, "must not exceed train.lr"),
    )


@dataclass
class CheckpointConfig:
    """Where checkpoints go, how often, and what the run starts from."""

    dir: str = "checkpoints/run"
    """Checkpoint directory; holds iter_NNNNNNN/ subdirectories and the `latest` pointer."""
    save_interval: int = 500
    """Save every N steps (and always at the end and on SIGTERM/SIGUSR1); 0 saves only then."""
    resume: bool = True
    """Resume from dir/latest when it exists (model, optimizer, schedule, loader, RNG). false starts
    afresh in the same directory: its saves replace the iter_ directories of the same steps and
    `latest`, so a previous run there is overwritten (use a new dir to keep it)."""
    init_from: str = ""
    """Start weights when not resuming: an HF model dir (converted on the fly) or a Megatron checkpoint dir."""
    keep_last: int = 0
    """Delete older iter_ directories beyond the last N complete ones; 0 keeps all."""

    RULES = options.at_least(0, "save_interval", "keep_last")


@dataclass
class LoggingConfig:
    """Console, metrics file and Weights & Biases."""

    log_interval: int = 1
    """Print and log every N steps."""
    wandb_project: str = "megatron-vlm"
    """W&B project name."""
    wandb_run_name: str = ""
    """W&B run name; empty uses the checkpoint directory's name."""
    wandb_mode: WandbMode = "auto"
    """`auto` (online with an API key, offline without), `online`, `offline` or `disabled`."""
    peak_tflops: float = 989.0
    """Per-device peak TFLOP/s for the MFU estimate (H100 SXM dense bf16: 989)."""

    RULES = (*options.at_least(1, "log_interval"), *options.at_least(0, "peak_tflops"))


@dataclass
class Recipe:
    """A whole training recipe."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Model section."""
    parallel: ParallelLayout = field(default_factory=ParallelLayout)
    """Parallel layout section."""
    data: DataRecipe = field(default_factory=DataRecipe)
    """Data section (shards, sequence length, mixture); owned by the data layer."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Budget, optimizer and precision section."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint section."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Logging section."""

    RULES = (
        # TE has no fp32 kernel for packed (THD) attention; flash-attn none at all.
        ("model.attention_backend", lambda r: r.train.precision == "bf16" or r.model.attention_backend in ("auto", "torch"),
         "te and flash attention need train.precision=bf16 (no fp32 kernel for packed sequences); use auto or torch"),
        ("model.attention_backend", lambda r: r.model.kind in FAMILIES or r.model.attention_backend == "auto",
         "is chosen by Megatron's spec for model.kind=gpt; leave it auto"),
        ("checkpoint.init_from", lambda r: not r.checkpoint.init_from or _apart(r.checkpoint.dir, r.checkpoint.init_from),
         "must not be, contain or lie inside checkpoint.dir: the run's saves would write over it"),
        ("train.fp8", lambda r: r.train.fp8 is None or all(n % fp8_row_unit(r) == 0 for n in sequence_lengths(r)),
         f"with FP8 every rank's rows (sequence length / (parallel.cp x parallel.tp with sequence parallelism)) must be "
         f"a multiple of {FP8_ROWS}: make data.max_seq_length and data.seq_length_multiple multiples of "
         f"{FP8_ROWS} x cp x (tp if sequence_parallel)"),
    )


def _apart(output: str, given: str) -> bool:
    """True when ``output`` neither is, contains nor lies inside ``given`` (utils/atomic.refuse_inputs)."""
    from megatron_vlm.utils.atomic import refuse_inputs

    refuse_inputs(output, [given])  # ValueError: the rule fails
    return True


def fp8_row_unit(recipe: Recipe) -> int:
    """What every sequence length must be a multiple of for FP8: 16 rows on each CP x SP rank."""
    par = recipe.parallel
    return FP8_ROWS * par.cp * (par.tp if par.sequence_parallel else 1)


def sequence_lengths(recipe: Recipe) -> tuple[int, ...]:
    """The lengths the loader's sequences are multiples of: the maximum, and with variable-length
    packing the multiple each sequence is rounded up to."""
    data = recipe.data
    return (data.max_seq_length, data.seq_length_multiple) if data.variable_seq_length else (data.max_seq_length,)


class RecipeError(options.OptionError):
    """A recipe that cannot be used; the message is one line saying why."""


def _apply_override(tree: dict, override: str) -> None:
    if "=" not in override:
        raise RecipeError(f"override {override!r} is not of the form section.key=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {key}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> Recipe:
    """Read a YAML recipe (or start from defaults when path is None) and apply ``key=value`` overrides."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe not found: {path}")
        from megatron_vlm.recipe_include import RecipeIncludeError, read_recipe_tree

        try:
            tree = read_recipe_tree(path)  # follows `base:` includes and fills ${name} (examples/recipes/README.md)
        except RecipeIncludeError as err:
            raise RecipeError(str(err)) from None
    for override in overrides:
        _apply_override(tree, override)
    return options.build(Recipe, tree, "", RecipeError)


def recipe_to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def recipe_to_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML (printed at start, saved with every checkpoint)."""
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


def recipe_from_dict(values: dict) -> Recipe:
    return options.build(Recipe, values, "", RecipeError)
