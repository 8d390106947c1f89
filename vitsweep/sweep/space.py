"""The search space: parsing a sweep file's ``space:`` into :class:`Param`s, and the ONLY place
that calls ``trial.suggest_*``.

``suggest(trial, sweep)`` samples the declared params (skipping those whose ``when`` does not hold)
and returns the trial's trainer config; ``config_for_params(sweep, params)`` rebuilds that exact
config from a trial's params (``FrozenTrial.params``), e.g. to promote the best trial.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vitsweep.inputs import brief, brief_list, is_finite
from vitsweep.schema import coerce, unknown_key
from vitsweep.train.config import DEFAULT_BETAS, SECTIONS, Config, config_keys

if TYPE_CHECKING:  # a type only: spec imports this module to parse the space
    from vitsweep.sweep.spec import SweepConfig


@dataclass(frozen=True)
class Param:
    """One searched value: Optuna param ``name`` sets config ``path`` (``optimizer.betas[0]``)."""

    name: str
    path: str
    kind: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # ((param name, allowed values), ...)

    @property
    def key(self) -> str:
        """The config key without an index: ``optimizer.betas`` for ``optimizer.betas[0]``."""
        return self.path.split("[")[0]

    def to_spec(self) -> dict[str, Any]:
        """The sweep file's entry for this param (``parse_space`` reads it back to an equal Param)."""
        spec: dict[str, Any] = {"path": self.path, "type": self.kind}
        if self.kind == "categorical":
            spec["choices"] = list(self.choices)
        else:
            spec.update(low=self.low, high=self.high, log=self.log)
            if self.step is not None:
                spec["step"] = self.step
        if self.when:
            spec["when"] = {name: list(vals) for name, vals in self.when}
        return spec

    @property
    def index(self) -> int | None:
        m = re.search(r"\[(\d+)\]$", self.path)
        return int(m.group(1)) if m else None


def active(param: Param, params: dict[str, Any]) -> bool:
    """Whether ``param`` is sampled, given the values already chosen."""
    return all(name in params and params[name] in allowed for name, allowed in param.when)


def suggest(trial: Any, sweep: SweepConfig) -> Config:
    """Sample the trial's params in declaration order and build its trainer config.

    May raise ``ConfigError`` for a bad sampled combination (e.g. heads not dividing dim)."""
    chosen: dict[str, Any] = {}
    for p in sweep.space:
        if not active(p, chosen):
            continue
        if p.kind == "categorical":
            chosen[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.kind == "int":
            chosen[p.name] = trial.suggest_int(p.name, p.low, p.high, step=p.step or 1, log=p.log)
        else:
            chosen[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
    return config_for_params(sweep, chosen)


def distribution_of(p: Param) -> Any:
    """The Optuna distribution :func:`suggest` samples ``p`` from."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if p.kind == "categorical":
        return CategoricalDistribution(list(p.choices))
    if p.kind == "int":
        return IntDistribution(int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return FloatDistribution(p.low, p.high, step=p.step, log=p.log)


def config_for_params(sweep: SweepConfig, params: dict[str, Any]) -> Config:
    """The full trainer config a trial with these params ran (``train.test`` is off for trials).

    Params that are inactive for these values are ignored. Indexed paths (``optimizer.betas[0]``)
    replace one entry of the optimizer's default betas (of the *chosen* optimizer)."""
    plain: dict[str, Any] = {}
    indexed: dict[str, dict[int, Any]] = {}
    chosen: dict[str, Any] = {}
    for p in sweep.space:
        if p.name not in params or not active(p, chosen):
            continue
        value = params[p.name]
        chosen[p.name] = value
        if p.index is None:
            plain[p.path] = value
        else:
            indexed.setdefault(p.key, {})[p.index] = value
    if "optimizer.betas" in indexed and "optimizer.betas" not in plain:
        # Start from the chosen optimizer's betas: the base's if it is the same optimizer.
        name = plain.get("optimizer.name", sweep.base.optimizer.name)
        start = sweep.base.optimizer.betas if name == sweep.base.optimizer.name else DEFAULT_BETAS[name]
        betas = list(start or DEFAULT_BETAS[name])
        for i, v in indexed.pop("optimizer.betas").items():
            if i < len(betas):
                betas[i] = v
            else:
                betas.extend([None] * (i + 1 - len(betas)))
                betas[i] = v
        plain["optimizer.betas"] = betas
    elif "optimizer.name" in plain and "optimizer.betas" not in plain \
            and plain["optimizer.name"] == sweep.base.optimizer.name:
        plain["optimizer.betas"] = list(sweep.base.optimizer.betas or [])
    for key, entries in indexed.items():  # pragma: no cover - betas is the only tuple key today
        current = list(getattr(getattr(sweep.base, key.split(".")[0]), key.split(".")[1]) or [])
        for i, v in entries.items():
            current[i] = v
        plain[key] = current
    return sweep.base.replace(**plain)


def describe_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------------------------------
# Parsing a sweep file's `space:` (every problem is appended to `errors`; nothing raises)


_PARAM_KEYS = ("path", "type", "low", "high", "log", "step", "choices", "when")


def parse_space(raw: Any, errors: list[str]) -> tuple[Param, ...]:
    """The declared params, ordered so that a ``when`` condition's param is sampled before the
    params that depend on it."""
    if raw is None or raw == {}:
        errors.append("space: missing; declare at least one parameter, e.g. "
                      "space: {lr: {path: optimizer.lr, low: 1e-4, high: 1e-2, log: true}}")
        return ()
    if not isinstance(raw, dict):
        errors.append(f"space: expected a mapping of parameter name -> spec, got {type(raw).__name__}")
        return ()
    hints = {f"{s}.{f.name}": typing.get_type_hints(cls)[f.name]
             for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    params: list[Param] = []
    whens: dict[str, Any] = {}
    paths: dict[str, str] = {}
    for name, spec in raw.items():
        where = f"space.{brief(name, plain=True)}"
        if not isinstance(spec, dict):
            errors.append(f"{where}: expected a mapping with path and low/high or choices")
            continue
        n0 = len(errors)
        for k in spec:
            if k not in _PARAM_KEYS:
                errors.append(unknown_key(f"{where}.{k}", [f"{where}.{x}" for x in _PARAM_KEYS]))
        path, hint = _path(spec, where, hints, paths, name, errors)
        kind = _kind(spec, hint)
        if kind not in ("float", "int", "categorical"):
            errors.append(f"{where}.type = {brief(kind)}: must be float, int or categorical")
            continue
        if kind == "categorical":
            values: dict[str, Any] = {"choices": _choices(spec, where, hint, errors)}
        else:
            values = _range(spec, kind, where, path, hint, errors)
        if len(errors) == n0:
            params.append(Param(name=str(name), path=str(path), kind=kind, **values))
            whens[str(name)] = spec.get("when")
    return _ordered(params, whens, errors)


def _path(spec: dict[str, Any], where: str, hints: dict[str, Any], paths: dict[str, str], name: Any,
          errors: list[str]) -> tuple[Any, Any]:
    """The config key a param sets, and the type its values must have (None: unknown key)."""
    path = spec.get("path")
    hint = None
    if not isinstance(path, str):
        errors.append(f"{where}.path: missing; the config key this param sets, e.g. optimizer.lr")
        return path, None
    m = re.fullmatch(r"([a-z_]+\.[a-z_0-9]+)(?:\[(\d+)\])?", path)
    key = m.group(1) if m else path
    if key not in hints:
        errors.append(f"{where}.path = {brief(path)}: " + unknown_key(key, config_keys()))
    else:
        hint = hints[key]
        is_tuple = "tuple" in str(hint)
        if m and m.group(2) is not None:
            if not is_tuple:
                errors.append(f"{where}.path = {brief(path)}: {key} is not a list; drop the [index]")
            elif int(m.group(2)) > 2:
                errors.append(f"{where}.path = {brief(path)}: index must be 0, 1 or 2")
            else:
                hint = float
        elif is_tuple:
            errors.append(f"{where}.path = {brief(path)}: sample one entry at a time, e.g. {key}[0]")
    if path in paths and not spec.get("when"):
        errors.append(f"{where}.path = {brief(path)}: already set by space.{brief(paths[path], plain=True)} "
                      f"(two params may share a path only under different `when` conditions)")
    paths.setdefault(path, str(name))
    return path, hint


def _kind(spec: dict[str, Any], hint: Any) -> Any:
    kind = spec.get("type")
    if kind is not None:
        return kind
    if spec.get("choices") is not None:
        return "categorical"
    if all(isinstance(spec.get(k), int) and not isinstance(spec.get(k), bool) for k in ("low", "high")) \
            and (spec.get("step") is None or isinstance(spec.get("step"), int)) and hint is int:
        return "int"
    return "float"


def _choices(spec: dict[str, Any], where: str, hint: Any, errors: list[str]) -> tuple[Any, ...]:
    choices = spec.get("choices")
    for k in ("low", "high", "log", "step"):
        if k in spec:
            errors.append(f"{where}.{k}: not used with choices (categorical)")
    if not isinstance(choices, list) or not choices:
        errors.append(f"{where}.choices: must be a non-empty list")
        return ()
    ch = tuple(choices)
    if len(set(map(repr, ch))) != len(ch):
        errors.append(f"{where}.choices = {brief(choices)}: has duplicates")
    for c in ch:
        if not (c is None or isinstance(c, (bool, int, float, str))):
            errors.append(f"{where}.choices: {brief(c)} is not a plain value (number, string, bool, null)")
        elif hint is not None:
            _check_value(c, hint, f"{where}.choices", errors)
    return ch


def _range(spec: dict[str, Any], kind: str, where: str, path: Any, hint: Any, errors: list[str]) -> dict[str, Any]:
    """low, high, step and log of a float or int param."""
    if spec.get("choices") is not None:
        errors.append(f"{where}.choices: not used with type {kind}")
    low, high = _number(spec.get("low"), f"{where}.low", errors), _number(spec.get("high"), f"{where}.high", errors)
    step, log = spec.get("step"), spec.get("log", False)
    if not isinstance(log, bool):
        errors.append(f"{where}.log = {brief(log)}: must be true or false")
        log = False
    if step is not None:
        step = _number(step, f"{where}.step", errors)
        if step is not None and step <= 0:
            errors.append(f"{where}.step = {brief(step)}: must be > 0")
            step = None
    if low is not None and high is not None:
        if low > high:
            errors.append(f"{where}: low ({brief(low)}) > high ({brief(high)})")
        if log and low <= 0:
            errors.append(f"{where}.low = {brief(low)}: must be > 0 with log: true")
        if log and step is not None:
            errors.append(f"{where}: log and step cannot be combined (Optuna); "
                          f"drop step, or use choices for a fixed log grid")
        if kind == "int":
            for k, v in (("low", low), ("high", high), ("step", step)):
                if v is not None and not float(v).is_integer():
                    errors.append(f"{where}.{k} = {brief(v)}: must be an integer for type int")
            low, high = int(low), int(high)
            step = int(step) if step is not None else None
            if hint is not None and hint is not int and "int" not in str(hint):
                errors.append(f"{where}.type = int: {path} is not an integer key; use type float")
        elif hint is not None:
            if hint is int:
                errors.append(f"{where}.type = float: {path} is an integer key; use type int")
            low, high = float(low), float(high)
        if hint is not None:
            _check_value(low, hint, f"{where}.low", errors)
    return {"low": low, "high": high, "step": step, "log": log}


def _ordered(params: list[Param], whens: dict[str, Any], errors: list[str]) -> tuple[Param, ...]:
    """Conditions may name any param (by name or path); params are then ordered so that a
    condition's param is always sampled before the params that depend on it."""
    resolved = {p.name: dataclasses.replace(p, when=_build_when(whens.get(p.name), f"space.{p.name}",
                                                                [q for q in params if q.name != p.name], errors))
                for p in params}
    ordered: list[Param] = []
    visiting: set[str] = set()

    def visit(p: Param) -> None:
        if p in ordered:
            return
        if p.name in visiting:
            errors.append(f"space.{brief(p.name, plain=True)}.when: conditions form a cycle")
            return
        visiting.add(p.name)
        for dep, _ in p.when:
            visit(resolved[dep])
        visiting.discard(p.name)
        if p not in ordered:
            ordered.append(p)

    for p in resolved.values():
        visit(p)
    return tuple(ordered)


def _build_when(raw: Any, where: str, earlier: list[Param], errors: list[str]) -> tuple:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        errors.append(f"{where}.when: expected a mapping, e.g. when: {{optimizer: adan}}")
        return ()
    out = []
    for ref, allowed in raw.items():
        target = next((p for p in earlier if p.name == ref), None) or \
            next((p for p in earlier if p.path == ref), None)
        if target is None:
            names = [p.name for p in earlier] + [p.path for p in earlier]
            close = difflib.get_close_matches(str(ref), names, n=1)
            hint = f"; did you mean {brief(close[0])}?" if close else ""
            errors.append(f"{where}.when: condition on {brief(str(ref))}, which is not a param of the space{hint} "
                          f"(params: {brief_list(p.name for p in earlier) or 'none'})")
            continue
        values = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        if target.kind == "categorical":
            bad = [v for v in values if v not in target.choices]
            if bad:
                errors.append(f"{where}.when: {brief(ref, plain=True)} = {brief(bad[0])} is not one of its choices "
                              f"({brief_list(target.choices)})")
        out.append((target.name, values))
    return tuple(out)


def _check_value(value: Any, hint: Any, where: str, errors: list[str]) -> None:
    try:
        coerce(value, hint)
    except ValueError as e:
        errors.append(f"{where} = {brief(value)}: {e}")


def _number(v: Any, where: str, errors: list[str]) -> float | int | None:
    if isinstance(v, str):
        try:
            v = float(v)  # YAML reads 1e-4 (no dot) as a string
        except ValueError:
            pass
    if not is_finite(v):
        errors.append(f"{where} = {brief(v)}: must be a number" if v is not None else f"{where}: missing")
        return None
    return v



