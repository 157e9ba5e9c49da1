"""Typed options: dataclasses built from loose values (YAML, dotted overrides) and checked at once.

A field's annotation is its check: ``int``/``float`` refuse lists, booleans, inf and nan (YAML's
``5e9`` string is a number); ``bool`` wants true/false; ``Literal["a", "b"]`` is a choice;
``list[int]``/``dict[str, float]`` check their items; ``X | None`` also takes null. What a type
cannot say goes in the class's ``RULES``, one line each, checked after the fields:

    RULES = (
        ("long_share", lambda d: 0 <= d.long_share <= 1, "must be in [0, 1]"),
        ("pages_range", lambda d: d.pages_range[0] <= d.pages_range[1], "must be [min, max]"),
    )

The key names the field the message is about (``section.key=value: why``); the check gets the
whole object, so a rule may read several fields; a check that raises counts as failed. Every
error is one line naming the key.

The same dataclass is a command's options: ``add_arguments(parser, cls)`` makes one flag per
field (``--field-name``; the type, choices and default from the annotation and the default, the
help from the docstring under the field), ``from_args(cls, namespace)`` turns the parsed flags
back into the dataclass, and ``make(cls, caller, **kw)`` is the Python API's way in. A field's
``metadata`` may say ``positional``, ``metavar`` or ``group`` (an argument group's title).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import os
import textwrap
import types
import typing


class OptionError(ValueError):
    """An option that cannot be used; the message is one line naming the key and why."""


def build(cls, values: dict, where: str = "", error: type[OptionError] = OptionError):
    """``cls(**values)`` with each value checked and coerced to its field's annotation (nested
    dataclasses from nested mappings), then the class's RULES; ``error`` names the first bad key."""
    if not isinstance(values, dict):
        raise error(f"{where.rstrip('.') or 'options'}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise error(f"unknown key(s) {', '.join(where + str(k) for k in unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build(hint, {} if value is None else value, f"{where}{name}.", error)
        else:
            kwargs[name] = coerce(value, hint, where + name, error)
    obj = cls(**kwargs)
    _apply_rules(obj, where, error)
    return obj


def at_least(low, *keys: str) -> tuple:
    """RULES entries: each field in ``keys`` is ``>= low`` (or None, where its type allows it)."""
    return tuple((key, lambda o, key=key: getattr(o, key) is None or getattr(o, key) >= low, f"must be at least {low}")
                 for key in keys)


def check(obj, where: str = "", error: type[OptionError] = OptionError) -> None:
    """Check an object built in code (not through ``build``) the same way: every field, then RULES."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check(value, f"{where}{f.name}.", error)
        else:
            coerce(value, hints[f.name], where + f.name, error)
    _apply_rules(obj, where, error)


def choices(cls, name: str) -> tuple:
    """The values a ``Literal`` field of ``cls`` allows."""
    return _literal(typing.get_type_hints(cls)[name])


def _apply_rules(obj, where: str, error) -> None:
    for key, ok, why in getattr(type(obj), "RULES", ()):
        try:
            good = ok(obj)
        except (ArithmeticError, TypeError, ValueError, IndexError, KeyError):
            good = False
        if not good:
            value = obj
            for part in key.split("."):
                value = getattr(value, part)
            raise error(f"{where}{key}={value!r}: {why}")


def _literal(hint) -> tuple:
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()


def coerce(value, hint, key: str, error: type[OptionError] = OptionError):
    """``value`` as the annotation ``hint`` asks (YAML is loose: 5e9 -> int, 1 -> float); ``error``
    naming ``key`` when it cannot be."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else hint
    choice = _literal(hint)
    if choice:
        if value not in choice:
            raise error(f"{key}: {value!r} is not one of {', '.join(map(str, choice))}")
        return value
    base = typing.get_origin(hint) or hint
    fail = error(f"{key}: cannot use {value!r} as {_type_name(hint)}")
    if value is None or isinstance(value, bool) and base is not bool:
        raise fail
    if base is int or base is float:
        if not isinstance(value, (int, float, str)):
            raise fail
        try:
            number = float(value)
        except ValueError:
            raise fail from None
        if not math.isfinite(number) or (base is int and number != int(number)):
            raise fail
        return int(number) if base is int else number
    if base is bool:
        if not isinstance(value, bool):
            raise fail
        return value
    if base is str:
        if not isinstance(value, (str, int, float, os.PathLike)):
            raise fail
        return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if base is list:
        if not isinstance(value, (list, tuple)):
            raise fail
        return [coerce(v, args[0], f"{key}[{i}]", error) for i, v in enumerate(value)] if args else list(value)
    if base is tuple:
        if not isinstance(value, (list, tuple)) or (args and len(value) != len(args)):
            raise fail
        return tuple(coerce(v, t, f"{key}[{i}]", error) for i, (v, t) in enumerate(zip(value, args))) if args else tuple(value)
    if base is dict:
        if not isinstance(value, dict):
            raise fail
        if not args:
            return dict(value)
        return {coerce(k, args[0], key, error): coerce(v, args[1], f"{key}.{k}", error) for k, v in value.items()}
    return value


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) if not typing.get_args(hint) else str(hint).replace("typing.", "")


# ---- commands --------------------------------------------------------------------------------


def field_docs(cls) -> dict[str, str]:
    """The docstring under each field of a dataclass (read from its source), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        except (OSError, TypeError):
            continue
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One command-line argument per field of ``cls`` (see the module docstring)."""
    hints, docs, groups = typing.get_type_hints(cls), field_docs(cls), {}
    for f in dataclasses.fields(cls):
        hint, meta = hints[f.name], f.metadata
        target = parser
        if "group" in meta:
            target = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kw: dict = {"help": docs.get(f.name, "")}
        if not required and default not in (None, False, "", ()):
            kw["help"] += f" (default: {' '.join(map(str, default)) if isinstance(default, (list, tuple)) else default})"
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            hint = next(t for t in typing.get_args(hint) if t is not type(None))
        base, args = typing.get_origin(hint) or hint, typing.get_args(hint)
        if base is bool:
            target.add_argument(f"--{f.name.replace('_', '-')}", action="store_true", default=default, **kw)
            continue
        item = args[0] if base in (list, tuple) and args else hint
        if _literal(item):
            kw["choices"] = list(_literal(item))
            item = type(kw["choices"][0])
        kw["type"] = item if item in (int, float, str) else str
        if base is list:
            kw["nargs"] = "+"
        elif base is tuple:
            kw["nargs"] = len(args)
        if "metavar" in meta:
            kw["metavar"] = meta["metavar"]
        if meta.get("positional"):
            target.add_argument(f.name, **kw)
        else:
            target.add_argument(f"--{f.name.replace('_', '-')}", required=required, default=default, **kw)


def from_args(cls, args: argparse.Namespace):
    """The options ``add_arguments`` parsed, as ``cls`` (values checked as ``build`` does)."""
    return build(cls, {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def make(cls, caller: str, **values):
    """``cls`` from keyword options (a stage's Python API): TypeError naming an unknown one, the
    values checked as ``build`` does."""
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise TypeError(f"{caller}() got an unknown option {key!r}")
    return build(cls, values, "")
