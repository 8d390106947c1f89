"""Typed, frozen sections from plain dicts (YAML, ``--set`` overrides, a trial's params): the
coercion of one value to a field's type, the "unknown key" message with its suggestion, and a
section built with every problem collected. The trainer config (``vitsweep.train.config``) and the
sweep file (``vitsweep.sweep.spec``) are both built with these, so both say the same thing about
the same mistake."""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Literal

from vitsweep.inputs import brief, error_list, is_finite


def coerce(value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (a field's annotation); ValueError says what is allowed."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0])
    if origin is Literal:
        if value not in args:
            raise ValueError(f"must be one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in re.split(r"[,\s]+", value.strip("()[] ")) if v]
        if not isinstance(value, (list, tuple)):
            raise ValueError("must be a list of numbers, e.g. [0.9, 0.999]")
        return tuple(coerce(v, args[0]) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError("must be true or false")
    if hint is int:
        return _int(value)
    if hint is float:
        return _float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return value
    raise ValueError(f"unsupported type {hint}")  # pragma: no cover


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError("must be an integer")
    if abs(value) >= 2**63:
        raise ValueError("must be an integer between -2**63 and 2**63 - 1")
    return value


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number")
    if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise ValueError("must be a number") from None
    if not is_finite(value):  # an int beyond any float too (math.isfinite would raise)
        raise ValueError("must be a finite number")
    return float(value)


def unknown_key(key: str, allowed: list[str]) -> str:
    """``unknown key 'model.dimm'; did you mean 'model.dim'? (allowed: ...)``."""
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    section = key.partition(".")[0]
    same = [k for k in allowed if k.startswith(section + ".")]
    listing = ", ".join(same or allowed)
    return f"unknown key {brief(key)}{hint} (allowed: {listing})"


def build_section(name: str, cls: type, given: dict[str, Any], errors: list[str],
                  notes: dict[str, str] | None = None) -> Any:
    """``cls(**given)`` with each value coerced to its field's type; every unknown key and bad
    value is appended to ``errors`` (``notes``: an extra word for a given unknown key), and fields
    that failed keep their defaults."""
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for k, v in given.items():
        if k not in fields:
            errors.append(unknown_key(f"{name}.{k}", [f"{name}.{f}" for f in fields]) + (notes or {}).get(k, ""))
            continue
        try:
            kwargs[k] = coerce(v, hints[k])
        except ValueError as e:
            errors.append(f"{name}.{k} = {brief(v)}: {e}")
    try:
        return cls(**kwargs)
    except TypeError:  # a required field that failed to parse (already in errors)
        return None


def format_errors(what: str, errors: list[str]) -> str:
    """``invalid config (file.yaml):`` and one ``  - problem`` line per error, at most
    ``vitsweep.inputs.MAX_ERRORS`` of them (the rest counted): :func:`vitsweep.inputs.error_list`."""
    return error_list(what, errors)
