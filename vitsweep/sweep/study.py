"""A sweep's study: the sweep it remembers and its set-up (created once, with one MLflow parent
run, however many workers start together; a new study queues the sweep file's ``enqueue:`` points
as its first trials, once).

``record_sweep(study, sweep)`` stores the whole sweep (``SweepConfig.to_dict()``, the URLs without
their passwords): what is stored is what ``sweep_of`` parses back, so promotion and the report see
the sweep's own experiment, pruner and trainer config. A study whose trials ran with another
trainer config or space is refused (trials that failed before their first epoch ran nothing: they
do not count).
"""

from __future__ import annotations

import json
from typing import Any

import optuna

from vitsweep.errors import VitsweepError
from vitsweep.inputs import stored_json
from vitsweep.paths import redact
from vitsweep.sweep.locks import budget_lock
from vitsweep.sweep.space import config_for_params, distribution_of
from vitsweep.sweep.spec import SweepConfig, build_sweep
from vitsweep.sweep.storage import create_or_load_study, experimental_ok
from vitsweep.tracking.runs import Tracker
from vitsweep.tracking.tags import PARENT_ATTR, SWEEP_ATTR, TAG_N_TRIALS, TAG_SWEEP_FILE
from vitsweep.train.config import Config


def record_sweep(study: optuna.Study, sweep: SweepConfig) -> None:
    """Remember ``sweep`` in the study's user attrs; a study whose trials ran with another trainer
    config or space is a VitsweepError (its trials could not be compared). A study without trials
    takes the new one."""
    stored = stored_sweep(sweep)
    previous = study.user_attrs.get(SWEEP_ATTR)
    if previous is None:
        study.set_user_attr(SWEEP_ATTR, stored)
    elif {k: previous.get(k) for k in ("trainer", "space")} != {k: stored[k] for k in ("trainer", "space")}:
        trials = study.get_trials(deepcopy=False)
        if not any(_trained(t) for t in trials):
            # nothing was measured with the old one (no trial, or only trials that failed before
            # their first epoch, e.g. on a data error): the file fixed after the error takes over,
            # unless Optuna cannot sample a param of its space in this study any more
            clash = _clash(trials, sweep)
            if clash:
                raise VitsweepError(
                    f"study {sweep.study.name!r} in {redact(sweep.storage.url)}: its trials failed before their first "
                    f"epoch, so it could take the changed sweep file, but {clash}, and Optuna cannot change that "
                    f"within a study; set a new study.name (or give the param a new name)")
            study.set_user_attr(SWEEP_ATTR, stored)
            return
        raise VitsweepError(
            f"study {sweep.study.name!r} in {redact(sweep.storage.url)} was run with a different trainer config or "
            f"search space, so its trials could not be compared; set a new study.name to start a new study")
    elif previous != stored:  # same trials, other settings (n_trials, tracking, ...): the latest run's
        study.set_user_attr(SWEEP_ATTR, stored)


def _clash(trials: list[optuna.trial.FrozenTrial], sweep: SweepConfig) -> str | None:
    """What the earlier trials sampled that the new space samples incompatibly (other choices of a
    categorical param, another kind of param), in words; None when Optuna takes the new space."""
    new = {p.name: distribution_of(p) for p in sweep.space}
    for t in trials:
        for name, old in t.distributions.items():
            if name not in new:
                continue
            try:
                optuna.distributions.check_distribution_compatibility(old, new[name])
            except ValueError:
                was = (f"choices {list(old.choices)}" if isinstance(old, optuna.distributions.CategoricalDistribution)
                       else type(old).__name__)
                return f"trial {t.number} sampled param {name!r} from {was}, which the new space changes"
    return None


def _trained(t: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial measured something (or may still): anything but a failure before its first epoch."""
    return t.state != optuna.trial.TrialState.FAIL or bool(t.intermediate_values) or t.value is not None


def stored_sweep(sweep: SweepConfig) -> dict[str, Any]:
    """What a study remembers of its sweep: all of it, with no password in its URLs; refused
    (ConfigError) above vitsweep.inputs.MAX_BYTES of JSON (a study that an older version stored a
    larger one in still opens: only storing is refused)."""
    raw = sweep.to_dict()
    raw["storage"]["url"] = redact(raw["storage"]["url"])
    raw["tracking"]["uri"] = redact(raw["tracking"]["uri"])
    return json.loads(stored_json(raw, f"sweep {sweep.source}"))


def check_storable(sweep: SweepConfig) -> None:
    """Refuse (ConfigError) a sweep too large for its study to keep, before anything is created."""
    stored_sweep(sweep)


def sweep_of(study: optuna.Study) -> SweepConfig:
    """The sweep a study was run with: ``config_for_params(sweep_of(study), trial.params)``
    rebuilds any trial's trainer config. (Studies stored before the whole sweep was kept lack
    storage, tracking and trials: those come from the current environment.) Parse it once per
    command: it validates the whole trainer config."""
    raw = study.user_attrs.get(SWEEP_ATTR)
    if raw is None:
        raise VitsweepError(f"study {study.study_name!r} was not created by vitsweep run (no sweep stored)")
    return build_sweep(raw, source=f"study {study.study_name}")


def trial_config(sweep: SweepConfig, trial: optuna.trial.FrozenTrial) -> Config:
    """The exact trainer config ``trial`` ran (``train.test`` off, as in the sweep)."""
    return config_for_params(sweep, trial.params)


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
        if sweep.enqueue and not study.get_trials(deepcopy=False):  # a new study: its enqueued points first
            for point in sweep.enqueue:
                study.enqueue_trial(point)
        if study.metric_names is None:  # optuna-dashboard then says val_acc, not "Objective 0"
            with experimental_ok():
                study.set_metric_names([sweep.study.metric])
        if study.direction.name.lower() != sweep.study.direction:
            raise VitsweepError(f"study {sweep.study.name!r} exists with direction {study.direction.name.lower()}")
        parent = tracker.parent_run(sweep.study.name, study.user_attrs.get(PARENT_ATTR),
                                    {TAG_SWEEP_FILE: sweep.source, TAG_N_TRIALS: str(sweep.study.n_trials)})
        if parent and parent != study.user_attrs.get(PARENT_ATTR):
            study.set_user_attr(PARENT_ATTR, parent)
        tracker.set_runs_view(parent, sweep.study.metric, [p.key for p in sweep.space], sweep.study.direction == "maximize")
    return study, parent
