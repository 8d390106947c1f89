"""Sweep files: YAML -> a frozen, validated :class:`SweepConfig`.

Every check happens here, before anything touches storage: a bad sweep file fails with exit code 2,
naming the key, and leaves no database behind. Everything downstream (space, study, tracking) takes
a :class:`SweepConfig` and trusts it.

Layout of a sweep file (see ``sweeps/*.yaml``)::

    study:   {name, direction, metric, n_trials, timeout, seed}
    sampler: {name: tpe | random | grid, n_startup_trials, multivariate, group, constant_liar}
    pruner:  {name: hyperband | median | none, min_resource, reduction_factor, ...}
    storage: {url, heartbeat_interval, grace_period, max_retry}
    tracking: {uri, experiment, artifacts}
    trials:  {dir, keep_checkpoints}
    base:    path/to/train.yaml        # optional, relative to the sweep file
    trainer: {data: ..., model: ..., train: {epochs: 5}}   # merged over `base`
    space:   {param_name: {path: optimizer.lr, low: .., high: .., log: true, step: .., when: ..}}
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vitsweep.config import Config, _SECTION_TYPES, _coerce, build_config, config_keys, read_yaml
from vitsweep.errors import ConfigError

DEFAULT_STORAGE = "sqlite:///storage/optuna.db"
DEFAULT_TRACKING = "sqlite:///storage/mlflow.db"
DEFAULT_ARTIFACTS = "storage/mlartifacts"
DEFAULT_TRIALS_DIR = "storage/trials"
METRICS = {"val_acc": "maximize", "val_loss": "minimize", "train_loss": "minimize"}
STORAGE_ENV = "VITSWEEP_STORAGE"  # like MLflow's MLFLOW_TRACKING_URI, for the Optuna storage
TRACKING_ENV = "MLFLOW_TRACKING_URI"


def storage_url(given: str | None = None) -> str:
    """The Optuna storage of commands that take ``--storage``: ``--storage``, else
    ``$VITSWEEP_STORAGE``, else ``sqlite:///storage/optuna.db``. A bad URL is a ConfigError."""
    if given is not None:
        _check_url(given, "--storage")
        return given
    env = os.environ.get(STORAGE_ENV)
    if env:
        _check_url(env, f"${STORAGE_ENV}")
        return env
    return DEFAULT_STORAGE


def tracking_uri(given: str | None = None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///storage/mlflow.db``."""
    return given or os.environ.get(TRACKING_ENV) or DEFAULT_TRACKING


# ---------------------------------------------------------------------------------------------
# The frozen result


@dataclass(frozen=True)
class StudySpec:
    name: str
    direction: str = "maximize"
    metric: str = "val_acc"
    n_trials: int = 20
    timeout: float | None = None  # seconds per `vitsweep run` invocation; no new trial after it
    seed: int | None = 0


@dataclass(frozen=True)
class SamplerSpec:
    name: str = "tpe"  # tpe | random | grid
    n_startup_trials: int = 10  # TPE: random trials first, counted per Hyperband bracket
    multivariate: bool = True
    group: bool = True  # TPE: model conditional sub-spaces separately (needs multivariate)
    constant_liar: bool = True  # TPE: running trials count as bad, so parallel workers spread out


@dataclass(frozen=True)
class PrunerSpec:
    name: str = "hyperband"  # hyperband | median | none
    min_resource: int = 1  # hyperband: epochs before the first rung
    reduction_factor: int = 3  # hyperband: keep the best 1/eta at each rung
    bootstrap_count: int = 0
    n_startup_trials: int = 5  # median: trials before pruning starts
    n_warmup_steps: int = 1  # median: epochs before a trial can be pruned


@dataclass(frozen=True)
class StorageSpec:
    url: str = DEFAULT_STORAGE
    heartbeat_interval: int = 60  # seconds between a running trial's heartbeats
    grace_period: int | None = None  # seconds without a heartbeat before a trial counts as dead
    max_retry: int = 2  # re-queue a dead worker's trial this many times


@dataclass(frozen=True)
class TrackingSpec:
    uri: str = DEFAULT_TRACKING  # "none" disables MLflow
    experiment: str | None = None  # default: the study name
    artifacts: str = DEFAULT_ARTIFACTS


@dataclass(frozen=True)
class TrialsSpec:
    dir: str = DEFAULT_TRIALS_DIR  # per trial: DIR/<study>/<trial number>/ (checkpoints)
    keep_checkpoints: bool = False  # delete a trial's checkpoints when it ends


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

    @property
    def index(self) -> int | None:
        m = re.search(r"\[(\d+)\]$", self.path)
        return int(m.group(1)) if m else None


@dataclass(frozen=True)
class SweepConfig:
    study: StudySpec
    sampler: SamplerSpec
    pruner: PrunerSpec
    storage: StorageSpec
    tracking: TrackingSpec
    trials: TrialsSpec
    base: Config  # the trainer config every trial starts from (train.test already off)
    space: tuple[Param, ...]
    source: str = "sweep"
    raw_trainer: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def epochs(self) -> int:
        return self.base.train.epochs

    def with_overrides(self, *, n_trials: int | None = None, timeout: float | None = None,
                       storage: str | None = None, tracking_uri: str | None = None) -> SweepConfig:
        """Command-line options over the file's values (validated like the file)."""
        study, st, tr = self.study, self.storage, self.tracking
        if n_trials is not None:
            if n_trials < 1:
                raise ConfigError(f"--n-trials {n_trials}: must be >= 1")
            study = dataclasses.replace(study, n_trials=n_trials)
        if timeout is not None:
            if timeout <= 0:
                raise ConfigError(f"--timeout {timeout}: must be > 0 seconds")
            study = dataclasses.replace(study, timeout=timeout)
        if storage is not None:
            _check_url(storage, "--storage")
            st = dataclasses.replace(st, url=storage)
        if tracking_uri is not None:
            tr = dataclasses.replace(tr, uri=tracking_uri)
        return dataclasses.replace(self, study=study, storage=st, tracking=tr)


# ---------------------------------------------------------------------------------------------
# Loading


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep file; raises :class:`ConfigError` listing every problem."""
    p = Path(path)
    raw = read_yaml(p)
    return build_sweep(raw, source=str(p), base_dir=p.parent)


_TOP = ("study", "sampler", "pruner", "storage", "tracking", "trials", "base", "trainer", "space")


def build_sweep(raw: dict[str, Any], source: str = "sweep", base_dir: Path | None = None) -> SweepConfig:
    errors: list[str] = []
    for key in raw:
        if key not in _TOP:
            errors.append(_unknown(str(key), list(_TOP)))

    study_raw = dict(_mapping(raw, "study", errors))
    study_raw.setdefault("name", Path(source).stem)
    study = _section("study", StudySpec, study_raw, errors)
    sampler = _section("sampler", SamplerSpec, _mapping(raw, "sampler", errors), errors)
    pruner = _section("pruner", PrunerSpec, _mapping(raw, "pruner", errors), errors)
    # Where the file names no store, the commands' own defaults apply (environment, then SQLite).
    storage_raw, tracking_raw = dict(_mapping(raw, "storage", errors)), dict(_mapping(raw, "tracking", errors))
    if "url" not in storage_raw:
        try:
            storage_raw["url"] = storage_url()
        except ConfigError as e:  # a bad $VITSWEEP_STORAGE: listed with the file's problems
            errors.append(str(e))
    tracking_raw.setdefault("uri", tracking_uri())
    storage = _section("storage", StorageSpec, storage_raw, errors)
    tracking = _section("tracking", TrackingSpec, tracking_raw, errors)
    trials = _section("trials", TrialsSpec, _mapping(raw, "trials", errors), errors)

    if study is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", study.name):
            errors.append(f"study.name = {study.name!r}: use letters, digits, '_', '-', '.'")
        if study.direction not in ("maximize", "minimize"):
            errors.append(f"study.direction = {study.direction!r}: must be maximize or minimize")
        if study.metric not in METRICS:
            errors.append(f"study.metric = {study.metric!r}: must be one of {', '.join(METRICS)}")
        elif study.direction != METRICS[study.metric]:
            errors.append(f"study.direction = {study.direction}: {study.metric} should be "
                          f"{METRICS[study.metric]}d")
        if study.n_trials < 1:
            errors.append(f"study.n_trials = {study.n_trials}: must be >= 1")
        if study.timeout is not None and study.timeout <= 0:
            errors.append(f"study.timeout = {study.timeout}: must be > 0 seconds or null")
    if sampler is not None:
        if sampler.name not in ("tpe", "random", "grid"):
            errors.append(f"sampler.name = {sampler.name!r}: unknown sampler; must be tpe, random or grid")
        if sampler.n_startup_trials < 0:
            errors.append(f"sampler.n_startup_trials = {sampler.n_startup_trials}: must be >= 0")
        if sampler.group and not sampler.multivariate:
            errors.append("sampler.group = true needs sampler.multivariate = true")
    if pruner is not None:
        if pruner.name not in ("hyperband", "median", "none"):
            errors.append(f"pruner.name = {pruner.name!r}: unknown pruner; must be hyperband, median or none")
        if pruner.min_resource < 1:
            errors.append(f"pruner.min_resource = {pruner.min_resource}: must be >= 1 epoch")
        if pruner.reduction_factor < 2:
            errors.append(f"pruner.reduction_factor = {pruner.reduction_factor}: must be >= 2")
    if storage is not None:
        _check_url(storage.url, "storage.url", errors)
        if storage.heartbeat_interval < 1:
            errors.append(f"storage.heartbeat_interval = {storage.heartbeat_interval}: must be >= 1 second")
        if storage.grace_period is not None and storage.grace_period <= storage.heartbeat_interval:
            errors.append(f"storage.grace_period = {storage.grace_period}: must exceed "
                          f"storage.heartbeat_interval ({storage.heartbeat_interval})")
        if storage.max_retry < 0:
            errors.append(f"storage.max_retry = {storage.max_retry}: must be >= 0")

    # The trainer config: `base` file, then the inline `trainer` mapping over it.
    trainer_raw: dict[str, Any] = {}
    base_ref = raw.get("base")
    if base_ref is not None:
        if not isinstance(base_ref, str):
            errors.append(f"base = {base_ref!r}: must be a path to a trainer YAML")
        else:
            bp = Path(base_ref)
            if not bp.is_absolute() and base_dir is not None:
                bp = base_dir / bp
            try:
                trainer_raw = read_yaml(bp)
            except ConfigError as e:
                errors.append(f"base: {e}")
    inline = _mapping(raw, "trainer", errors)
    trainer_raw = _merge(trainer_raw, inline)
    base_cfg: Config | None = None
    try:
        base_cfg = build_config(trainer_raw, {"train.test": False}, source=f"{source}: trainer")
    except ConfigError as e:
        errors.append(str(e).replace("\n", "\n  "))

    space = _build_space(raw.get("space"), errors)

    if sampler is not None and sampler.name == "grid":
        for p in space:
            if p.kind == "float" and p.step is None:
                errors.append(f"space.{p.name}: the grid sampler needs a step (or choices) for floats")
            if p.when:
                errors.append(f"space.{p.name}.when: the grid sampler does not support conditional params")
    if pruner is not None and base_cfg is not None and pruner.name == "hyperband" \
            and pruner.min_resource > base_cfg.train.epochs:
        errors.append(f"pruner.min_resource = {pruner.min_resource}: must not exceed the trials' "
                      f"trainer.train.epochs ({base_cfg.train.epochs})")

    if errors:
        lines = "\n".join(f"  - {e}" for e in errors)
        raise ConfigError(f"invalid sweep ({source}):\n{lines}")
    assert study and sampler and pruner and storage and tracking and trials and base_cfg
    return SweepConfig(study=study, sampler=sampler, pruner=pruner, storage=storage, tracking=tracking,
                       trials=trials, base=base_cfg, space=space, source=source, raw_trainer=trainer_raw)


# ---------------------------------------------------------------------------------------------
# The search space


_PARAM_KEYS = ("path", "type", "low", "high", "log", "step", "choices", "when")


def _build_space(raw: Any, errors: list[str]) -> tuple[Param, ...]:
    if raw is None or raw == {}:
        errors.append("space: missing; declare at least one parameter, e.g. "
                      "space: {lr: {path: optimizer.lr, low: 1e-4, high: 1e-2, log: true}}")
        return ()
    if not isinstance(raw, dict):
        errors.append(f"space: expected a mapping of parameter name -> spec, got {type(raw).__name__}")
        return ()
    hints = {f"{s}.{f.name}": typing.get_type_hints(cls)[f.name]
             for s, cls in _SECTION_TYPES.items() for f in dataclasses.fields(cls)}
    params: list[Param] = []
    whens: dict[str, Any] = {}
    paths: dict[str, str] = {}
    for name, spec in raw.items():
        where = f"space.{name}"
        if not isinstance(spec, dict):
            errors.append(f"{where}: expected a mapping with path and low/high or choices")
            continue
        n0 = len(errors)
        for k in spec:
            if k not in _PARAM_KEYS:
                errors.append(_unknown(f"{where}.{k}", [f"{where}.{x}" for x in _PARAM_KEYS]))
        path = spec.get("path")
        hint = None
        if not isinstance(path, str):
            errors.append(f"{where}.path: missing; the config key this param sets, e.g. optimizer.lr")
        else:
            m = re.fullmatch(r"([a-z_]+\.[a-z_0-9]+)(?:\[(\d+)\])?", path)
            key = m.group(1) if m else path
            if key not in hints:
                errors.append(f"{where}.path = {path!r}: " + _unknown(key, config_keys()))
            else:
                hint = hints[key]
                is_tuple = "tuple" in str(hint)
                if m and m.group(2) is not None:
                    if not is_tuple:
                        errors.append(f"{where}.path = {path!r}: {key} is not a list; drop the [index]")
                    elif int(m.group(2)) > 2:
                        errors.append(f"{where}.path = {path!r}: index must be 0, 1 or 2")
                    else:
                        hint = float
                elif is_tuple:
                    errors.append(f"{where}.path = {path!r}: sample one entry at a time, e.g. {key}[0]")
            if path in paths and not spec.get("when"):
                errors.append(f"{where}.path = {path!r}: already set by space.{paths[path]} "
                              f"(two params may share a path only under different `when` conditions)")
            paths.setdefault(path, str(name))

        kind = spec.get("type")
        choices = spec.get("choices")
        if kind is None:
            if choices is not None:
                kind = "categorical"
            elif all(isinstance(spec.get(k), int) and not isinstance(spec.get(k), bool)
                     for k in ("low", "high")) and (spec.get("step") is None or isinstance(spec.get("step"), int)) \
                    and hint is int:
                kind = "int"
            else:
                kind = "float"
        if kind not in ("float", "int", "categorical"):
            errors.append(f"{where}.type = {kind!r}: must be float, int or categorical")
            continue

        low = high = step = None
        log = False
        ch: tuple[Any, ...] = ()
        if kind == "categorical":
            for k in ("low", "high", "log", "step"):
                if k in spec:
                    errors.append(f"{where}.{k}: not used with choices (categorical)")
            if not isinstance(choices, list) or not choices:
                errors.append(f"{where}.choices: must be a non-empty list")
            else:
                ch = tuple(choices)
                if len(set(map(repr, ch))) != len(ch):
                    errors.append(f"{where}.choices = {choices}: has duplicates")
                for c in ch:
                    if not (c is None or isinstance(c, (bool, int, float, str))):
                        errors.append(f"{where}.choices: {c!r} is not a plain value (number, string, bool, null)")
                    elif hint is not None:
                        _check_value(c, hint, f"{where}.choices", errors)
        else:
            if choices is not None:
                errors.append(f"{where}.choices: not used with type {kind}")
            low, high, step, log = _number(spec.get("low"), f"{where}.low", errors), \
                _number(spec.get("high"), f"{where}.high", errors), spec.get("step"), spec.get("log", False)
            if not isinstance(log, bool):
                errors.append(f"{where}.log = {log!r}: must be true or false")
                log = False
            if step is not None:
                step = _number(step, f"{where}.step", errors)
                if step is not None and step <= 0:
                    errors.append(f"{where}.step = {step}: must be > 0")
                    step = None
            if low is not None and high is not None:
                if low > high:
                    errors.append(f"{where}: low ({low}) > high ({high})")
                if log and low <= 0:
                    errors.append(f"{where}.low = {low}: must be > 0 with log: true")
                if log and step is not None:
                    errors.append(f"{where}: log and step cannot be combined (Optuna); "
                                  f"drop step, or use choices for a fixed log grid")
                if kind == "int":
                    for k, v in (("low", low), ("high", high), ("step", step)):
                        if v is not None and not float(v).is_integer():
                            errors.append(f"{where}.{k} = {v}: must be an integer for type int")
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
        if len(errors) == n0:
            params.append(Param(name=str(name), path=str(path), kind=kind, low=low, high=high, log=log,
                                step=step, choices=ch))
            whens[str(name)] = spec.get("when")
    # Conditions may name any param (by name or path); params are then ordered so that a
    # condition's param is always sampled before the params that depend on it.
    resolved = {p.name: dataclasses.replace(p, when=_build_when(whens.get(p.name), f"space.{p.name}",
                                                                [q for q in params if q.name != p.name], errors))
                for p in params}
    ordered: list[Param] = []
    visiting: set[str] = set()

    def visit(p: Param) -> None:
        if p in ordered:
            return
        if p.name in visiting:
            errors.append(f"space.{p.name}.when: conditions form a cycle")
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
            hint = f"; did you mean '{close[0]}'?" if close else ""
            errors.append(f"{where}.when: condition on '{ref}', which is not a param of the space{hint} "
                          f"(params: {', '.join(p.name for p in earlier) or 'none'})")
            continue
        values = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        if target.kind == "categorical":
            bad = [v for v in values if v not in target.choices]
            if bad:
                errors.append(f"{where}.when: {ref} = {bad[0]!r} is not one of its choices "
                              f"({', '.join(map(str, target.choices))})")
        out.append((target.name, values))
    return tuple(out)


def _check_value(value: Any, hint: Any, where: str, errors: list[str]) -> None:
    try:
        _coerce(value, hint)
    except ValueError as e:
        errors.append(f"{where} = {value!r}: {e}")


def _number(v: Any, where: str, errors: list[str]) -> float | int | None:
    if isinstance(v, str):
        try:
            v = float(v)  # YAML reads 1e-4 (no dot) as a string
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        errors.append(f"{where} = {v!r}: must be a number" if v is not None else f"{where}: missing")
        return None
    return v


# ---------------------------------------------------------------------------------------------
# Helpers


def _mapping(raw: dict[str, Any], key: str, errors: list[str]) -> dict[str, Any]:
    v = raw.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        errors.append(f"{key}: expected a mapping, got {v!r}")
        return {}
    return v


def _section(name: str, cls: type, given: dict[str, Any], errors: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    n0 = len(errors)
    for k, v in given.items():
        if k not in fields:
            extra = "; max_resource is always the trials' train.epochs" if (name, k) == ("pruner", "max_resource") else ""
            errors.append(_unknown(f"{name}.{k}", [f"{name}.{f}" for f in fields]) + extra)
            continue
        try:
            kwargs[k] = _coerce(v, hints[k])
        except ValueError as e:
            errors.append(f"{name}.{k} = {v!r}: {e}")
    if len(errors) > n0:
        return None
    return cls(**kwargs)


def _check_url(url: str, where: str, errors: list[str] | None = None) -> None:
    """Append the problem to ``errors``, or raise it when there is no list to collect it in."""
    if not re.match(r"^(sqlite|postgresql(\+\w+)?|mysql(\+\w+)?)://", url):
        msg = f"{where} = {url!r}: must be a database URL: sqlite:///path.db, postgresql://..., mysql://..."
        if errors is None:
            raise ConfigError(msg)
        errors.append(msg)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _unknown(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown key '{key}'{hint} (allowed: {', '.join(allowed)})"


def dump(sweep: SweepConfig) -> str:
    """A readable YAML summary (for logs)."""
    return yaml.safe_dump({"study": dataclasses.asdict(sweep.study)}, sort_keys=False)
