"""A sweep's study: the sweep it remembers, its sampler and pruner, and its set-up (created once,
with one MLflow parent run, however many workers start together).

``record_sweep(study, sweep)`` stores what a study must remember of its sweep (the trainer config
and the space, enough to rebuild every trial's config: ``trial_config``) and refuses a study that
was run with another one.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import optuna

from vitsweep.paths import redact
from vitsweep.train.config import Config
from vitsweep.errors import VitsweepError
from vitsweep.inputs import stored_json
from vitsweep.sweep.locks import budget_lock
from vitsweep.sweep.space import config_for_params, grid
from vitsweep.sweep.spec import SweepConfig, build_sweep
from vitsweep.sweep.storage import create_or_load_study, experimental_ok
from vitsweep.tracking.runs import Tracker
from vitsweep.tracking.tags import PARENT_ATTR

SWEEP_ATTR = "vitsweep_sweep"  # the study's sweep (trainer config + space), to rebuild trial configs


def record_sweep(study: optuna.Study, sweep: SweepConfig) -> None:
    """Remember ``sweep`` in the study's user attrs; a study whose trials ran with another trainer
    config or space is a VitsweepError (its trials could not be compared). A study without trials
    takes the new one."""
    stored = _as_stored(sweep)
    previous = study.user_attrs.get(SWEEP_ATTR)
    if previous is None:
        study.set_user_attr(SWEEP_ATTR, stored)
    elif {k: previous[k] for k in ("trainer", "space")} != {k: stored[k] for k in ("trainer", "space")}:
        if not study.get_trials(deepcopy=False):  # nothing ran with the old one (e.g. fixed after an error)
            study.set_user_attr(SWEEP_ATTR, stored)
            return
        raise VitsweepError(
            f"study {sweep.study.name!r} in {redact(sweep.storage.url)} was run with a different trainer config or "
            f"search space, so its trials could not be compared; set a new study.name to start a new study")


def _as_stored(sweep: SweepConfig) -> dict[str, Any]:
    """What a study remembers of its sweep: enough to rebuild every trial's config."""
    raw = {"study": {"name": sweep.study.name, "direction": sweep.study.direction, "metric": sweep.study.metric,
                     "n_trials": sweep.study.n_trials},
           "sampler": {"name": sweep.sampler.name}, "pruner": dataclasses.asdict(sweep.pruner),
           "trainer": sweep.base.to_dict(), "space": {}}
    for p in sweep.space:
        spec: dict[str, Any] = {"path": p.path, "type": p.kind}
        if p.kind == "categorical":
            spec["choices"] = list(p.choices)
        else:
            spec.update(low=p.low, high=p.high, log=p.log)
            if p.step is not None:
                spec["step"] = p.step
        if p.when:
            spec["when"] = {name: list(vals) for name, vals in p.when}
        raw["space"][p.name] = spec
    return json.loads(stored_json(raw, f"sweep {sweep.source}"))


def check_storable(sweep: SweepConfig) -> None:
    """Refuse (ConfigError) a sweep too large for its study to keep, before anything is created."""
    _as_stored(sweep)


def sweep_of(study: optuna.Study) -> SweepConfig:
    """The sweep a study was run with (as stored at its first run): ``config_for_params(sweep_of(study),
    trial.params)`` rebuilds any trial's trainer config."""
    raw = study.user_attrs.get(SWEEP_ATTR)
    if raw is None:
        raise VitsweepError(f"study {study.study_name!r} was not created by vitsweep run (no sweep stored)")
    return build_sweep(raw, source=f"study {study.study_name}")


def trial_config(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> Config:
    """The exact trainer config ``trial`` ran (``train.test`` off, as in the sweep)."""
    return config_for_params(sweep_of(study), trial.params)


def build_sampler(sweep: SweepConfig, seed: int | None) -> optuna.samplers.BaseSampler:
    s = sweep.sampler
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.name == "grid":
        return optuna.samplers.GridSampler(grid(sweep.space), seed=seed)
    with experimental_ok():
        return optuna.samplers.TPESampler(n_startup_trials=s.n_startup_trials, multivariate=s.multivariate,
                                          group=s.group, constant_liar=s.constant_liar, seed=seed)


def build_pruner(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    p = sweep.pruner
    if p.name == "hyperband":  # never "auto": with auto nothing is pruned until a trial completes
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, max_resource=sweep.epochs,
                                              reduction_factor=p.reduction_factor, bootstrap_count=p.bootstrap_count)
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    return optuna.pruners.NopPruner()


def sweep_tracker(sweep: SweepConfig, background: bool = False) -> Tracker:
    """The sweep's MLflow tracker; workers write trial params and metrics in the background."""
    return Tracker(sweep.tracking.uri, sweep.tracking.experiment or sweep.study.name, sweep.tracking.artifacts,
                   background=background)


def set_up(sweep: SweepConfig, storage: optuna.storages.BaseStorage, tracker: Tracker) -> tuple[optuna.Study, str | None]:
    """Create or continue the study and its MLflow parent run: (study, parent run id). Under the
    budget lock, so that workers starting together (on any host, with PostgreSQL) create one study
    and one parent run."""
    with budget_lock(sweep.storage.url, sweep.study.name) as lock, lock.holding():
        study = create_or_load_study(sweep.study.name, storage, sweep.study.direction)
        record_sweep(study, sweep)
        if study.metric_names is None:  # optuna-dashboard then says val_acc, not "Objective 0"
            with experimental_ok():
                study.set_metric_names([sweep.study.metric])
        if study.direction.name.lower() != sweep.study.direction:
            raise VitsweepError(f"study {sweep.study.name!r} exists with direction {study.direction.name.lower()}")
        parent = tracker.parent_run(sweep.study.name, study.user_attrs.get(PARENT_ATTR),
                                    {"vitsweep.sweep_file": sweep.source,
                                     "vitsweep.n_trials": str(sweep.study.n_trials)})
        if parent and parent != study.user_attrs.get(PARENT_ATTR):
            study.set_user_attr(PARENT_ATTR, parent)
        tracker.set_runs_view(parent, sweep.study.metric, [p.key for p in sweep.space])
    return study, parent
