"""The search space: the ONLY place that calls ``trial.suggest_*``.

``suggest(trial, sweep)`` samples the declared params (skipping those whose ``when`` does not hold)
and returns the trial's trainer config; ``config_for_params(sweep, params)`` rebuilds that exact
config from a trial's params (``FrozenTrial.params``), e.g. to promote the best trial.
"""

from __future__ import annotations

from typing import Any

from vitsweep.config import DEFAULT_BETAS, Config
from vitsweep.sweep import Param, SweepConfig


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
