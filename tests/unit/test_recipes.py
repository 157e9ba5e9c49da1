"""Every recipe under examples/recipes loads and validates; ablations differ from the base only in their knob."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from megatron_vlm.data.recipe import DataRecipe
from megatron_vlm.planner import GB, Layout, Training, estimate_memory, shapes_for
from megatron_vlm.recipe_include import RecipeIncludeError, diff_paths, merge, read_recipe_tree

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "examples" / "recipes"
ALL = sorted(RECIPES.rglob("*.yaml"))
BASE = RECIPES / "mmprolong_7b.yaml"
ABLATIONS = sorted((RECIPES / "ablations").glob("*.yaml"))
SECTIONS = {"model", "parallel", "data", "train", "checkpoint", "logging"}
TASKS = {"extract-single", "extract-multi", "reasoning", "ocr-full", "ocr-needle"}  # docs/formats.md


def _ids(paths):
    return [str(p.relative_to(RECIPES)) for p in paths]


@pytest.mark.parametrize("path", ALL, ids=_ids(ALL))
def test_recipe_resolves_and_data_section_validates(path):
    tree = read_recipe_tree(path)
    assert set(tree) <= SECTIONS, f"unknown sections {set(tree) - SECTIONS}"
    data = DataRecipe.from_dict(tree.get("data", {}))  # unknown keys and bad values raise
    if data.mixture:
        assert set(data.mixture) <= TASKS
        assert sum(data.mixture.values()) == pytest.approx(1.0)
    assert data.length_distribution in {"pool-native", "long-biased", "custom"}
    assert 0.0 <= data.short_share < 1.0
    assert "${" not in str(tree)


@pytest.mark.parametrize("path", ALL, ids=_ids(ALL))
def test_recipe_loads_with_the_trainers_and_builders_loaders(path):
    """What `megatron_vlm.train --config` and `preprocess_data.py build --recipe` read."""
    from megatron_vlm.training.config import load_recipe, recipe_from_dict

    recipe = load_recipe(path)
    assert recipe == recipe_from_dict(read_recipe_tree(path))
    assert recipe.train.global_batch_tokens % recipe.data.max_seq_length == 0
    assert DataRecipe.from_yaml(path) == recipe.data  # validates too


def test_overrides_apply_on_top_of_included_recipes():
    from megatron_vlm.training.config import RecipeError, load_recipe

    recipe = load_recipe(RECIPES / "ablations" / "task_reasoning.yaml", ["parallel.cp=4", "data.pad_multiple=8"])
    assert recipe.data.mixture == {"reasoning": 1.0} and recipe.parallel.cp == 4 and recipe.model.flavor == "7B"
    assert recipe.checkpoint.dir == "checkpoints/task_reasoning"
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(RECIPES / "nope.yaml")


def test_final_recipe_has_the_papers_numbers():
    r = read_recipe_tree(BASE)
    assert r["model"]["flavor"] == "7B"
    assert r["data"]["max_seq_length"] == 131072
    assert r["train"]["tokens"] == 5_000_000_000 == r["data"]["token_budget"]
    assert r["train"]["global_batch_tokens"] == 32 * 131072
    assert r["train"]["tokens"] // r["train"]["global_batch_tokens"] == 1192
    assert r["data"]["mixture"] == {"extract-single": 0.4, "extract-multi": 0.4, "reasoning": 0.2}
    assert r["data"]["length_distribution"] == "pool-native" and r["data"]["short_share"] == 0.0
    # Dynamic-NTK: 1e6 * 4^(128/126) = 4.09e6, which the paper rounds to 4e6.
    assert r["model"]["rope_theta"] == 4e6
    assert abs(1e6 * 4 ** (128 / 126) / r["model"]["rope_theta"] - 1) < 0.03


def _knob_of(path: Path) -> str:
    family = path.stem.split("_")[0]
    return {"task": "data.mixture", "ratio": "data.mixture", "length": "data.length_distribution",
            "short": "data.short_share"}[family]


@pytest.mark.parametrize("path", ABLATIONS, ids=_ids(ABLATIONS))
def test_ablation_differs_from_base_only_in_its_knob(path):
    ablation = read_recipe_tree(path)
    base = read_recipe_tree(BASE, name=path.stem)  # same run name, so identity paths compare equal
    assert diff_paths(ablation, base) <= {_knob_of(path)}
    # and the run itself is its own: shards, checkpoints and W&B run carry the recipe's name
    assert ablation["checkpoint"]["dir"].endswith(path.stem) and ablation["data"]["shards"].endswith(path.stem)


def test_every_ablation_row_of_the_paper_is_there():
    stems = {p.stem for p in ABLATIONS}
    assert {f"task_{t.replace('-', '_')}" for t in TASKS} <= stems
    assert {"length_pool_native", "length_long_biased"} <= stems
    assert {f"ratio_{e}_{10 - e}" for e in (0, 2, 4, 6, 8, 10)} <= stems
    assert len([s for s in stems if s.startswith("short_")]) >= 2


@pytest.mark.parametrize("e", [0, 2, 4, 6, 8, 10])
def test_ratio_rows_hold_their_ratio(e):
    mix = read_recipe_tree(RECIPES / "ablations" / f"ratio_{e}_{10 - e}.yaml")["data"]["mixture"]
    extraction = mix.get("extract-single", 0) + mix.get("extract-multi", 0)
    assert extraction == pytest.approx(e / 10) and mix.get("reasoning", 0) == pytest.approx((10 - e) / 10)


def test_task_rows_train_one_task_and_length_row_is_long_biased():
    for t in TASKS:
        tree = read_recipe_tree(RECIPES / "ablations" / f"task_{t.replace('-', '_')}.yaml")
        assert tree["data"]["mixture"] == {t: 1.0}
    assert read_recipe_tree(RECIPES / "ablations" / "length_long_biased.yaml")["data"]["length_distribution"] == "long-biased"


# GPU counts the flavor recipes are written for (their comments say the same).
FLAVOR_RECIPES = {"mmprolong_7b.yaml": 64, "mmprolong_3b.yaml": 32, "mmprolong_72b.yaml": 256,
                  "mmprolong_qwen3vl_8b.yaml": 64}


@pytest.mark.parametrize("name, gpus", sorted(FLAVOR_RECIPES.items()))
def test_flavor_recipe_layout_fits_h100_by_the_planner(name, gpus):
    r = read_recipe_tree(RECIPES / name)
    p, m, t = r["parallel"], r["model"], r["train"]
    tp, pp, cp = p.get("tp", 1), p.get("pp", 1), p.get("cp", 1)
    assert gpus % (tp * pp * cp) == 0
    assert r["data"]["pad_multiple"] == 2 * cp  # each packed sub-sequence splits into 2*cp chunks
    # variable-length sequences split evenly over CP ranks and, with sequence parallelism, TP ranks
    sp_unit = cp * tp if p.get("sequence_parallel", False) else 1
    assert r["data"]["variable_seq_length"] and r["data"]["seq_length_multiple"] % math.lcm(2 * cp, sp_unit) == 0
    dp = gpus // (tp * pp * cp)
    seqs = t["global_batch_tokens"] // r["data"]["max_seq_length"]
    assert seqs % dp == 0
    shapes = shapes_for(m["flavor"], m["kind"])
    assert shapes.num_kv_heads % tp == 0 and shapes.num_heads % tp == 0
    mem = estimate_memory(
        shapes, Layout(tp=tp, pp=pp, cp=cp, dp=dp, sequence_parallel=p.get("sequence_parallel", False)),
        Training(seq_length=r["data"]["max_seq_length"], recompute=m["recompute"], micro_batches=seqs // dp,
                 train_vision=not m.get("freeze_vision", False)),
    )
    assert mem.total <= (80 - 6) * GB, mem.as_gb()


@pytest.mark.parametrize("name, gpus", sorted(FLAVOR_RECIPES.items()))
def test_flavor_recipe_layout_is_the_planners_suggestion(name, gpus):
    from megatron_vlm.planner import PlanRequest, plan

    r = read_recipe_tree(RECIPES / name)
    best = plan(PlanRequest(flavor=r["model"]["flavor"], family=r["model"]["kind"], seq_length=r["data"]["max_seq_length"], num_gpus=gpus,
                            recompute=r["model"]["recompute"], global_batch_tokens=r["train"]["global_batch_tokens"],
                            token_budget=r["train"]["tokens"], train_vision=not r["model"]["freeze_vision"]))[0]
    p = r["parallel"]
    assert (best.layout.tp, best.layout.pp, best.layout.cp) == (p["tp"], p.get("pp", 1), p["cp"])


def test_flavor_recipes_differ_from_7b_only_in_model_and_layout():
    allowed = {"model.flavor", "model.tokenizer", "model.recompute", "parallel.tp", "parallel.cp", "parallel.pp",
               "checkpoint.init_from", "data.tokenizer", "data.pad_multiple"}
    for name in ("mmprolong_3b.yaml", "mmprolong_72b.yaml"):
        assert diff_paths(read_recipe_tree(RECIPES / name), read_recipe_tree(BASE, name=Path(name).stem)) <= allowed
    # The transfer experiment: another family, with its own RoPE choice (next test); the same data recipe.
    name = "mmprolong_qwen3vl_8b.yaml"
    diff = diff_paths(read_recipe_tree(RECIPES / name), read_recipe_tree(BASE, name=Path(name).stem))
    assert diff <= allowed | {"model.kind", "model.rope_theta"} and "model.kind" in diff


def test_qwen3vl_transfer_keeps_its_native_rope():
    """128K is inside Qwen3-VL's native window, so the Dynamic-NTK rule (s = target / native) leaves the
    base alone: the recipe's rope_theta is the published 8B config's, and 2 x 128K is the window."""
    import json

    from tests.conftest import REFERENCE

    r = read_recipe_tree(RECIPES / "mmprolong_qwen3vl_8b.yaml")
    published = REFERENCE / "qwen3_vl" / "Qwen3-VL-8B-Instruct" / "config.json"
    if not published.is_file():
        pytest.skip(f"reference config not found at {published}")
    text = json.loads(published.read_text())["text_config"]
    assert r["model"]["rope_theta"] == text["rope_theta"] == 5e6
    assert r["data"]["max_seq_length"] / text["max_position_embeddings"] == 0.5


# The include mechanism itself.

def test_include_rules(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "name: from-a\ndata: {mixture: {reasoning: 0.5, extract-single: 0.5}, seed: 1}\n"
        "checkpoint: {dir: 'ck/${name}'}\ntrain: {lr: 1.0}\n"
    )
    (tmp_path / "b.yaml").write_text("train: {lr: 2.0, warmup_steps: 3}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("base: [../a.yaml, ../b.yaml]\ndata: {mixture: {reasoning: 1.0}}\n")
    tree = read_recipe_tree(tmp_path / "sub" / "c.yaml")
    assert tree["data"] == {"mixture": {"reasoning": 1.0}, "seed": 1}  # a key's value is replaced whole
    assert tree["train"] == {"lr": 2.0, "warmup_steps": 3}  # later bases win
    assert tree["checkpoint"]["dir"] == "ck/c"  # the read file names the run, not its base
    assert "base" not in tree and "name" not in tree
    assert read_recipe_tree(tmp_path / "sub" / "c.yaml", name="x")["checkpoint"]["dir"] == "ck/x"
    assert read_recipe_tree(tmp_path / "a.yaml")["checkpoint"]["dir"] == "ck/from-a"


def test_include_errors_are_one_line(tmp_path):
    (tmp_path / "x.yaml").write_text("base: y.yaml\n")
    (tmp_path / "y.yaml").write_text("base: x.yaml\n")
    with pytest.raises(RecipeIncludeError, match="includes itself"):
        read_recipe_tree(tmp_path / "x.yaml")
    (tmp_path / "z.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(RecipeIncludeError, match="recipe not found: .*missing.yaml \\(base of"):
        read_recipe_tree(tmp_path / "z.yaml")
    (tmp_path / "l.yaml").write_text("- 1\n")
    with pytest.raises(RecipeIncludeError, match="mapping of sections"):
        read_recipe_tree(tmp_path / "l.yaml")


def test_merge_does_not_mutate_inputs():
    base = {"data": {"seed": 1}}
    top = {"data": {"seed": 2}}
    assert merge(base, top) == {"data": {"seed": 2}} and base == {"data": {"seed": 1}}


def test_data_recipe_fields_cover_what_recipes_set():
    fields = {f.name for f in dataclasses.fields(DataRecipe)}
    assert set(read_recipe_tree(BASE)["data"]) <= fields
