"""Recipe YAML + dotted overrides -> nested dataclasses; errors for typos; YAML round trip."""

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from megatron_vlm.data.recipe import DataRecipe
from megatron_vlm.training import config as cfg
from megatron_vlm.training.config import RecipeError, load_recipe, recipe_from_dict, recipe_to_yaml

REPO = Path(__file__).resolve().parents[2]


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {kind: gpt}\ntrain: {tokens: 5e9, lr: 1}\ndata: {max_seq_length: 4096}\n")
    r = load_recipe(path, ["train.lr=3e-4", "parallel.tp=2", "model.freeze_vision=true", "train.fp8=null"])
    assert r.model.kind == "gpt"
    assert r.train.tokens == 5_000_000_000 and isinstance(r.train.tokens, int)
    assert r.train.lr == 3e-4
    assert r.parallel.tp == 2
    assert r.model.freeze_vision is True
    assert isinstance(r.data, DataRecipe) and r.data.max_seq_length == 4096


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.lrr=1"], "unknown key.*train.lrr"),
        (["parallel.tp=two"], "parallel.tp: cannot use 'two' as int"),
        (["train.tokens=1.5"], "cannot use 1.5 as int"),
        (["model.freeze_vision=3"], "freeze_vision"),
        (["train"], "not of the form"),
    ],
)
def test_bad_recipes_fail_with_the_key(overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(None, overrides)


def test_missing_recipe_file():
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe("/nonexistent/recipe.yaml")


def test_resolved_yaml_round_trips():
    r = load_recipe(None, ["train.lr=0.5", "checkpoint.dir=/tmp/x"])
    again = recipe_from_dict(yaml.safe_load(recipe_to_yaml(r)))
    assert again == r


def test_every_field_has_a_docstring():
    """STYLE.md: a docstring under every config field (checked in the source, not by convention)."""
    import ast
    import inspect

    for cls in (cfg.ModelConfig, cfg.ParallelConfig, cfg.TrainConfig, cfg.CheckpointConfig, cfg.LoggingConfig, cfg.Recipe):
        body = ast.parse(inspect.getsource(cls)).body[0].body
        documented = {
            node.target.id
            for node, nxt in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
        }
        names = {f.name for f in dataclasses.fields(cls)}
        assert names <= documented, f"{cls.__name__}: undocumented {sorted(names - documented)}"
        assert typing.get_type_hints(cls)


@pytest.mark.parametrize("recipe", sorted((REPO / "examples" / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_example_recipes_load(recipe):
    loaded = load_recipe(recipe)
    assert loaded.model.kind in ("qwen2_5_vl", "qwen3_vl", "gpt")
    assert loaded.train.tokens > 0 and loaded.data.max_seq_length > 0
    assert abs(sum(loaded.data.mixture.values()) - 1.0) < 1e-6


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.lr_schedule=cosin"], r"train.lr_schedule: 'cosin' is not one of cosine, constant"),
        (["logging.wandb_mode=offlin"], r"logging.wandb_mode: 'offlin' is not one of auto, online, offline, disabled"),
        (["model.kind=qwen25"], r"model.kind: 'qwen25' is not one of"),
        (["model.recompute=some"], r"model.recompute: 'some' is not one of none, selective, full"),
        (["train.data_source=disk"], r"train.data_source: 'disk' is not one of shards, synthetic"),
        (["train.optimizer=adamw"], r"train.optimizer: 'adamw' is not one of adam, sgd"),
        (["train.precision=fp16"], r"train.precision: 'fp16' is not one of bf16, fp32"),
        (["data.length_distribution=long"], r"data.length_distribution: 'long' is not one of pool-native"),
        (["data.image_backend=cv2"], r"data.image_backend: 'cv2' is not one of pil, dali"),
        (["train.lr=[1, 2]"], r"train.lr: cannot use \[1, 2\] as float"),
        (["parallel.tp=[2]"], r"parallel.tp: cannot use \[2\] as int"),  # issue 18: a list where a number belongs
        (["train.tokens=.inf"], r"train.tokens: cannot use inf as int"),
        (["train.lr=.nan"], r"train.lr: cannot use nan as float"),
        (["data.pages_range=[32, x]"], r"data.pages_range\[1\]: cannot use 'x' as int"),
        (["data.mixture={reasoning: many}"], r"data.mixture.reasoning: cannot use 'many' as float"),
        (["data.short_share=0.1"], r"data.short_source='': needed when short_share > 0"),
        (["model.kind=qwen3_vl", "model.flavor=7B"],
         r"model.flavor='7B': is not a flavor of model.kind; known: qwen2_5_vl: .*7B.*; qwen3_vl: debug, 2B, 4B, 8B, 32B"),
        (["model.flavor=8B"], r"model.flavor='8B': is not a flavor of model.kind"),  # the default kind, qwen2_5_vl
    ],
)
def test_choices_types_and_rules_fail_at_load_with_the_key(overrides, message):
    """A typo in a choice or a value of the wrong kind stops the run when the recipe loads, in one line."""
    with pytest.raises(RecipeError, match=message) as err:
        load_recipe(None, overrides)
    assert "\n" not in str(err.value)


def test_rules_see_the_whole_section_and_objects_built_in_code():
    from megatron_vlm.utils import options

    with pytest.raises(options.OptionError, match=r"data.max_seq_length=100: must be a multiple of pad_multiple"):
        DataRecipe(max_seq_length=100, pad_multiple=8).validate()
    with pytest.raises(options.OptionError, match=r"data.length_distribution: 'x' is not one of"):
        DataRecipe(length_distribution="x").validate()
    with pytest.raises(options.OptionError, match=r"data.pages_range=\[32\]: must be \[min, max\]"):
        DataRecipe.from_dict({"pages_range": [32]})
    DataRecipe().validate()


def test_model_kinds_are_the_provider_registry():
    from megatron_vlm.training.providers import PROVIDERS
    from megatron_vlm.utils import options

    assert set(options.choices(cfg.ModelConfig, "kind")) == set(PROVIDERS)


RANGES = [
    ("train.global_batch_tokens=0", r"train.global_batch_tokens=0: must be at least 1"),  # was a ZeroDivisionError
    ("data.max_seq_length=0", r"data.max_seq_length=0: must be at least 1"),  # was a ZeroDivisionError
    ("train.tokens=-1", r"train.tokens=-1: must be at least 1"),
    ("train.max_steps=0", r"train.max_steps=0: must be at least 1"),
    ("train.lr=-0.1", r"train.lr=-0.1: must be at least 0"),
    ("train.adam_beta2=1.0", r"train.adam_beta2=1.0: must be in \[0, 1\)"),
    ("parallel.tp=0", r"parallel.tp=0: must be at least 1"),
    ("parallel.vpp=0", r"parallel.vpp=0: must be at least 1"),
    ("checkpoint.save_interval=-1", r"checkpoint.save_interval=-1: must be at least 0"),
    ("logging.log_interval=0", r"logging.log_interval=0: must be at least 1"),
    ("model.num_layers=0", r"model.num_layers=0: must be at least 1"),
    ("data.token_budget=-5", r"data.token_budget=-5: must be at least 1"),
    ("data.token_budget=lots", r"data.token_budget: cannot use 'lots' as int"),
    ("data.max_pixels=0", r"data.max_pixels=0: must be at least 1"),
    ("data.min_pixels=0", r"data.min_pixels=0: must be at least 1"),
    ("data.samples_per_shard=0", r"data.samples_per_shard=0: must be at least 1"),
    ("data.pages_range=ab", r"data.pages_range: cannot use 'ab' as list\[int\]"),
    ("data.pages_range=[50, 32]", r"data.pages_range=\[50, 32\]: must be \[min, max\] pages with 1 <= min <= max"),
    ("data.length_histogram={'9-3': 1}", r"data.length_histogram=\{'9-3': 1.0\}: must map \"lo-hi\" token ranges"),
    ("data.max_bad_samples=0", r"data.max_bad_samples=0: must be at least 1"),
    ("data.num_workers=-1", r"data.num_workers=-1: must be at least 0"),
    ("checkpoint.init_from=checkpoints/run/iter_0000010", r"checkpoint.init_from='checkpoints/run/iter_0000010': must "
     r"not be, contain or lie inside checkpoint.dir"),
]


@pytest.mark.parametrize("override, message", RANGES, ids=[o for o, _ in RANGES])
def test_ranges_fail_at_load_with_the_key(override, message):
    with pytest.raises(RecipeError, match=message) as err:
        load_recipe(None, [override])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override, message", [r for r in RANGES if r[0].startswith("data.")],
                         ids=[o for o, _ in RANGES if o.startswith("data.")])
def test_build_applies_the_same_rules_to_the_data_section(override, message, tmp_path, capsys):
    """`preprocess_data.py build --recipe` reads the data section through the same rules: one line, exit 2,
    nothing written."""
    import yaml

    from megatron_vlm.data import build

    key, raw = override.split("=", 1)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"data": {key.split(".", 1)[1]: yaml.safe_load(raw)}}))
    parser = __import__("argparse").ArgumentParser()
    build.add_arguments(parser)
    args = parser.parse_args(["--pool", str(tmp_path / "pool"), "--qa", str(tmp_path / "qa"),
                              "--recipe", str(tmp_path / "recipe.yaml"), "--output", str(tmp_path / "out")])
    assert build.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and __import__("re").search(message, err), err
    assert not (tmp_path / "out").exists()
