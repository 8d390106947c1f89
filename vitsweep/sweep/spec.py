"""Sweep files: YAML -> a frozen, validated :class:`SweepConfig`.

Every check happens here, before anything touches storage: a bad sweep file fails with exit code 2,
naming the key, and leaves no database behind. Everything downstream (space, study, tracking) takes
a :class:`SweepConfig` and trusts it.

Layout of a sweep file (see ``sweeps/*.yaml``)::

    study:   {name, direction, metric, n_trials, timeout, seed, patience, min_delta}
    sampler: {name: tpe | random | grid, n_startup_trials, multivariate, group, constant_liar}
    pruner:  {name: hyperband | median | none, min_resource, reduction_factor, ...}
    storage: {url, heartbeat_interval, grace_period, max_retry}
    tracking: {uri, experiment, artifacts}
    trials:  {dir, keep_checkpoints}
    base:    path/to/train.yaml        # optional, relative to the sweep file
    trainer: {data: ..., model: ..., train: {epochs: 5}}   # merged over `base`
    space:   {param_name: {path: optimizer.lr, low: .., high: .., log: true, step: .., when: ..}}
    enqueue: [{param_name: value, ...}, ...]   # optional: points the study tries first
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vitsweep.errors import ConfigError
from vitsweep.inputs import brief, brief_path
from vitsweep.schema import build_section, format_errors, unknown_key
from vitsweep.sweep.pruners import PRUNERS
from vitsweep.sweep.samplers import SAMPLERS
from vitsweep.train.config import Config, build_config, read_yaml
from vitsweep.train.schedules import SCHEDULES
from vitsweep.paths import (DEFAULT_ARTIFACTS, DEFAULT_STORAGE, DEFAULT_TRACKING, DEFAULT_TRIALS_DIR,
                            check_tracking_uri, check_url, storage_url, tracking_uri)
from vitsweep.sweep.grid import check_grid
from vitsweep.sweep.enqueue import parse_enqueue
from vitsweep.sweep.space import Param, config_for_params, parse_space

METRICS = {"val_acc": "maximize", "val_loss": "minimize", "train_loss": "minimize"}


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
    # Plateau: the sweep ends (for every worker) once `patience` finished trials in a row have not
    # improved the best value by more than `min_delta` (sweep/plateau.py). null: off.
    patience: int | None = None
    min_delta: float = 0.0


@dataclass(frozen=True)
class SamplerSpec:
    name: Literal[tuple(SAMPLERS)] = "tpe"  # vitsweep.sweep.samplers.SAMPLERS
    n_startup_trials: int = 10  # TPE: random trials first, counted per Hyperband bracket
    multivariate: bool = True
    group: bool = True  # TPE: model conditional sub-spaces separately (needs multivariate)
    constant_liar: bool = True  # TPE: running trials count as bad, so parallel workers spread out


@dataclass(frozen=True)
class PrunerSpec:
    name: Literal[tuple(PRUNERS)] = "hyperband"  # vitsweep.sweep.pruners.PRUNERS
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
    # Points of the space a new study tries first, in order (Optuna's enqueue_trial): each sets
    # every param it samples, e.g. the hand recipe the sweep is to beat (sweep/space.parse_enqueue).
    enqueue: tuple[dict[str, Any], ...] = ()

    @property
    def epochs(self) -> int:
        return self.base.train.epochs

    def to_dict(self) -> dict[str, Any]:
        """The sweep as a sweep file's mapping: ``build_sweep(s.to_dict()) == s`` (what a study
        stores is what is parsed back). JSON-safe."""
        raw: dict[str, Any] = {name: dataclasses.asdict(getattr(self, name)) for name in _SPECS}
        raw["trainer"] = self.base.to_dict()
        raw["space"] = {p.name: p.to_spec() for p in self.space}
        if self.enqueue:
            raw["enqueue"] = [dict(point) for point in self.enqueue]
        return json.loads(json.dumps(raw))

    def with_overrides(self, *, n_trials: int | None = None, timeout: float | None = None,
                       storage: str | None = None, tracking_uri: str | None = None) -> SweepConfig:
        """Command-line options over the file's values (validated like the file)."""
        study, st, tr = self.study, self.storage, self.tracking
        if n_trials is not None:
            if n_trials < 1:
                raise ConfigError(f"--n-trials {brief(n_trials)}: must be >= 1")
            study = dataclasses.replace(study, n_trials=n_trials)
        if timeout is not None:
            if not (0 < timeout < float("inf")):  # nan and inf too
                raise ConfigError(f"--timeout {timeout}: must be a number of seconds > 0")
            study = dataclasses.replace(study, timeout=timeout)
        if storage is not None:
            check_url(storage, "--storage")
            st = dataclasses.replace(st, url=storage)
        if tracking_uri is not None:
            check_tracking_uri(tracking_uri, "--tracking-uri")
            tr = dataclasses.replace(tr, uri=tracking_uri)
        return dataclasses.replace(self, study=study, storage=st, tracking=tr)


# ---------------------------------------------------------------------------------------------
# Loading


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Read and validate a sweep file; raises :class:`ConfigError` listing every problem.
    ``overrides`` (``vitsweep run --set key=value``) replace trainer config keys, as ``train --set``."""
    p = Path(path)
    raw = read_yaml(p)
    return build_sweep(raw, source=str(p), base_dir=p.parent, overrides=overrides)


_SPECS = ("study", "sampler", "pruner", "storage", "tracking", "trials")
_TOP = (*_SPECS, "base", "trainer", "space", "enqueue")


def build_sweep(raw: dict[str, Any], source: str = "sweep", base_dir: Path | None = None,
                overrides: dict[str, Any] | None = None) -> SweepConfig:
    errors: list[str] = []
    for key in raw:
        if key not in _TOP:
            errors.append(unknown_key(str(key), list(_TOP)))

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
    if "uri" not in tracking_raw:
        try:
            tracking_raw["uri"] = tracking_uri()
        except ConfigError as e:  # a bad $MLFLOW_TRACKING_URI: listed with the file's problems
            errors.append(str(e))
    storage = _section("storage", StorageSpec, storage_raw, errors)
    tracking = _section("tracking", TrackingSpec, tracking_raw, errors)
    trials = _section("trials", TrialsSpec, _mapping(raw, "trials", errors), errors)

    _check_sections(study, sampler, pruner, storage, errors)
    if tracking is not None and "uri" in _mapping(raw, "tracking", []):
        check_tracking_uri(tracking.uri, "tracking.uri", errors)

    base_cfg = _trainer_config(raw, source, base_dir, errors, overrides or {})
    space = parse_space(raw.get("space"), errors)
    enqueue = parse_enqueue(raw.get("enqueue"), space, errors)
    if sampler is not None and sampler.name == "grid":
        check_grid(space, errors)
        if enqueue:
            errors.append("enqueue: not with sampler grid, which tries every point of the space anyway; "
                          "remove enqueue or use sampler tpe or random")
    if pruner is not None and base_cfg is not None and pruner.name == "hyperband" \
            and pruner.min_resource > base_cfg.train.epochs:
        errors.append(f"pruner.min_resource = {pruner.min_resource}: must not exceed the trials' "
                      f"trainer.train.epochs ({base_cfg.train.epochs})")

    if base_cfg is not None and pruner is not None and SCHEDULES[base_cfg.schedule.name].branches:
        base_cfg = _rung_branches(base_cfg, pruner, errors)
    if errors:
        raise ConfigError(format_errors(f"invalid sweep ({brief_path(source)})", errors))
    assert study and sampler and pruner and storage and tracking and trials and base_cfg
    sweep = SweepConfig(study=study, sampler=sampler, pruner=pruner, storage=storage, tracking=tracking,
                        trials=trials, base=base_cfg, space=space, source=source, enqueue=enqueue)
    for i, point in enumerate(enqueue):  # each must be a config the trainer takes, as a sampled one
        try:
            config_for_params(sweep, point)
        except ConfigError as e:
            errors.append(f"enqueue[{i}]: not a valid trainer config: {e}")
    if errors:
        raise ConfigError(format_errors(f"invalid sweep ({brief_path(source)})", errors))
    return sweep


def _rung_branches(base: Config, pruner: PrunerSpec, errors: list[str]) -> Config:
    """A sweep on a constant-lr trunk (``schedule.name: wsd``): a cooldown branch at every epoch where
    the pruner compares trials and at the last, so that each reported value is a finished model's;
    the trunk itself never cools down within a trial (its horizon is the promoted run's), so that
    ``vitsweep promote`` continues it."""
    epochs, sc = base.train.epochs, base.schedule
    if sc.horizon is None or sc.horizon <= epochs:
        errors.append(f"trainer.schedule.horizon = {sc.horizon}: a {sc.name} sweep's trials are the start of the "
                      f"promoted run; set it to the epochs promotion will train (more than the trials' "
                      f"train.epochs = {epochs}), e.g. {max(epochs * 4, epochs + 1)}")
        return base
    if sc.branches:
        return base
    branches = sorted({*PRUNERS[pruner.name].rungs(pruner, epochs), epochs})
    return base.replace(**{"schedule.branches": branches})


def _check_sections(study: StudySpec | None, sampler: SamplerSpec | None, pruner: PrunerSpec | None,
                    storage: StorageSpec | None, errors: list[str]) -> None:
    """The sections' values that parse but cannot be used."""
    if study is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", study.name):
            errors.append(f"study.name = {brief(study.name)}: use letters, digits, '_', '-', '.'")
        if study.direction not in ("maximize", "minimize"):
            errors.append(f"study.direction = {brief(study.direction)}: must be maximize or minimize")
        if study.metric not in METRICS:
            errors.append(f"study.metric = {brief(study.metric)}: must be one of {', '.join(METRICS)}")
        elif study.direction != METRICS[study.metric]:
            errors.append(f"study.direction = {brief(study.direction, plain=True)}: {study.metric} should be "
                          f"{METRICS[study.metric]}d")
        if study.n_trials < 1:
            errors.append(f"study.n_trials = {study.n_trials}: must be >= 1")
        if study.timeout is not None and not (0 < study.timeout < float("inf")):
            errors.append(f"study.timeout = {study.timeout}: must be > 0 seconds or null")
        if study.patience is not None and study.patience < 1:
            errors.append(f"study.patience = {study.patience}: must be >= 1 finished trials, or null (off)")
        if not (0 <= study.min_delta < float("inf")):
            errors.append(f"study.min_delta = {study.min_delta}: must be >= 0")
    if sampler is not None:
        if sampler.n_startup_trials < 0:
            errors.append(f"sampler.n_startup_trials = {sampler.n_startup_trials}: must be >= 0")
        if sampler.group and not sampler.multivariate:
            errors.append("sampler.group = true needs sampler.multivariate = true")
    if pruner is not None:
        if pruner.min_resource < 1:
            errors.append(f"pruner.min_resource = {pruner.min_resource}: must be >= 1 epoch")
        if pruner.reduction_factor < 2:
            errors.append(f"pruner.reduction_factor = {pruner.reduction_factor}: must be >= 2")
    if storage is not None:
        check_url(storage.url, "storage.url", errors)
        if storage.heartbeat_interval < 1:
            errors.append(f"storage.heartbeat_interval = {storage.heartbeat_interval}: must be >= 1 second")
        if storage.grace_period is not None and storage.grace_period <= storage.heartbeat_interval:
            errors.append(f"storage.grace_period = {storage.grace_period}: must exceed "
                          f"storage.heartbeat_interval ({storage.heartbeat_interval})")
        if storage.max_retry < 0:
            errors.append(f"storage.max_retry = {storage.max_retry}: must be >= 0")


def _trainer_config(raw: dict[str, Any], source: str, base_dir: Path | None, errors: list[str],
                    overrides: dict[str, Any]) -> Config | None:
    # The trainer config: `base` file, then the inline `trainer` mapping over it.
    trainer_raw: dict[str, Any] = {}
    base_ref = raw.get("base")
    if base_ref is not None:
        if not isinstance(base_ref, str):
            errors.append(f"base = {brief(base_ref)}: must be a path to a trainer YAML")
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
    try:
        return build_config(trainer_raw, {**overrides, "train.test": False}, source=f"{source}: trainer")
    except ConfigError as e:
        errors.append(str(e).replace("\n", "\n  "))
        return None


# ---------------------------------------------------------------------------------------------
# Helpers


def _mapping(raw: dict[str, Any], key: str, errors: list[str]) -> dict[str, Any]:
    v = raw.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        errors.append(f"{key}: expected a mapping, got {brief(v)}")
        return {}
    return v


def _section(name: str, cls: type, given: dict[str, Any], errors: list[str]) -> Any:
    """A sweep section, or None when any of its keys is bad (listed in ``errors``)."""
    n0 = len(errors)
    notes = {"max_resource": "; max_resource is always the trials' train.epochs"} if name == "pruner" else None
    section = build_section(name, cls, given, errors, notes)
    return section if len(errors) == n0 else None


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
