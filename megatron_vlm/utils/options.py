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
"""

from __future__ import annotations

import dataclasses
import math
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
        if not isinstance(value, (str, int, float)):
            raise fail
        return str(value)
    if base is list:
        if not isinstance(value, (list, tuple)):
            raise fail
        return [coerce(v, args[0], f"{key}[{i}]", error) for i, v in enumerate(value)] if args else list(value)
    if base is dict:
        if not isinstance(value, dict):
            raise fail
        if not args:
            return dict(value)
        return {coerce(k, args[0], key, error): coerce(v, args[1], f"{key}.{k}", error) for k, v in value.items()}
    return value


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) if not typing.get_args(hint) else str(hint).replace("typing.", "")
