"""Recipe files that build on other recipe files: the `base:` include and `${name}`.

    from megatron_vlm.recipe_include import read_recipe_tree
    tree = read_recipe_tree("examples/recipes/ablations/task_reasoning.yaml")   # plain dict

A recipe YAML may name the recipe(s) it starts from, relative to its own directory:

    base: ../mmprolong_7b.yaml       # or a list; later entries win over earlier ones
    data:
      mixture: {reasoning: 1.0}

The rules, kept small so a reader can merge by eye:

- sections (model, parallel, data, train, checkpoint, logging) merge key by key; a key set in the
  including file replaces the base's value whole (a `mixture` mapping is replaced, not merged);
- `name:` (top level, optional) names the run; it defaults to the file's stem of the recipe
  being read, and every `${name}` inside a string value becomes it, so a base can say
  `checkpoint: {dir: checkpoints/${name}}` and each recipe built on it gets its own directory;
- `base` and `name` are removed from the result; what is left is what the trainer's config takes.
"""

from __future__ import annotations

from pathlib import Path

import yaml

META_KEYS = ("base", "name")


class RecipeIncludeError(ValueError):
    """A recipe file that cannot be resolved; the message is one line saying why."""


def _load(path: Path, chain: tuple[Path, ...]) -> dict:
    if path in chain:
        raise RecipeIncludeError(f"recipe includes itself: {' -> '.join(str(p) for p in (*chain, path))}")
    if not path.is_file():
        where = f" (base of {chain[-1]})" if chain else ""
        raise RecipeIncludeError(f"recipe not found: {path}{where}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeIncludeError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise RecipeIncludeError(f"{path}: a recipe is a mapping of sections, got {type(tree).__name__}")
    bases = tree.pop("base", None) or []
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    for base in bases:
        base_tree = _load((path.parent / base).resolve(), (*chain, path))
        base_tree.pop("name", None)  # a run is named by the file being read, never by its base
        merged = merge(merged, base_tree)
    return merge(merged, tree)


def merge(base: dict, top: dict) -> dict:
    """`top` over `base`: sections merge key by key, keys inside a section are replaced whole."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for section, values in top.items():
        if isinstance(values, dict) and isinstance(out.get(section), dict) and section not in META_KEYS:
            out[section] = {**out[section], **values}
        else:
            out[section] = values
    return out


def _substitute(value, name: str):
    if isinstance(value, str):
        return value.replace("${name}", name)
    if isinstance(value, dict):
        return {k: _substitute(v, name) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, name) for v in value]
    return value


def read_recipe_tree(path: str | Path, name: str | None = None) -> dict:
    """The recipe at `path` with its bases merged in and `${name}` filled; `base`/`name` removed.

    `name` overrides the recipe's own `name:` (and the file-stem default).
    """
    path = Path(path).resolve()
    tree = _load(path, ())
    run_name = name or tree.pop("name", None) or path.stem
    tree.pop("name", None)
    return _substitute(tree, str(run_name))


def diff_paths(a: dict, b: dict, prefix: str = "") -> set[str]:
    """Dotted `section.key` paths whose values differ between two resolved recipes."""
    out = set()
    for key in set(a) | set(b):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict) and not prefix:
            out |= diff_paths(va, vb, f"{key}.")
        elif va != vb:
            out.add(prefix + key)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m megatron_vlm.recipe_include RECIPE.yaml`: print the recipe with its bases merged in."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m megatron_vlm.recipe_include", description=main.__doc__)
    parser.add_argument("recipe")
    args = parser.parse_args(argv)
    try:
        tree = read_recipe_tree(args.recipe)
    except RecipeIncludeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump(tree, sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
