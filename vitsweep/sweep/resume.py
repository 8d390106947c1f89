"""Trials that run again: an interrupted trial is re-queued (same params), and a retried trial
(its worker died, or was interrupted) continues from the checkpoint of its latest earlier try."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from vitsweep.train.checkpoint import load_checkpoint
from vitsweep.errors import VitsweepError
from vitsweep.tracking.runs import Tracker
from vitsweep.tracking.tags import (ENQUEUED_SYSATTR, FAILED_TRIAL_SYSATTR, RESUMED_FROM_ATTR, RESUMED_FROM_EPOCH_ATTR, RETRY_HISTORY_SYSATTR,
                                    RETRY_OF_ATTR, RUN_ATTR, RUN_DIR_ATTR, TAG_RESUMED_FROM_EPOCH, TAG_RESUMED_FROM_TRIAL,
                                    TAG_RETRY_OF, TAG_RETRY_OF_RUN)


def _system_attrs(trial: optuna.Trial) -> dict[str, Any]:
    # optuna.Trial has no public accessor for a running trial's system attrs
    return trial.storage.get_trial_system_attrs(trial._trial_id)


def retry_history(trial: optuna.Trial) -> list[int]:
    """The numbers of a running trial's earlier tries (empty for a first try)."""
    return list(_system_attrs(trial).get(RETRY_HISTORY_SYSATTR, []))


def requeue(trial: optuna.Trial) -> None:
    """An interrupted trial runs again on the next ``vitsweep run`` (same params)."""
    sys_attrs = _system_attrs(trial)
    history = [*sys_attrs.get(RETRY_HISTORY_SYSATTR, []), trial.number]
    attrs = {FAILED_TRIAL_SYSATTR: history[0], RETRY_HISTORY_SYSATTR: history}
    if ENQUEUED_SYSATTR in sys_attrs:  # an enqueued point stays one, as in Optuna's own stale-trial retry
        attrs[ENQUEUED_SYSATTR] = sys_attrs[ENQUEUED_SYSATTR]
    trial.study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions, system_attrs=attrs))


def resume(trial: optuna.Trial, run_dir: Path, tracker: Tracker, run_id: str | None,
           predecessors: list[int]) -> list[dict[str, float]] | None:
    """A retried trial: copy the latest earlier try's checkpoint folder into this trial's
    ``run_dir`` and return the epochs it holds (None: start from scratch). Records
    ``retry_of``/``resumed_from_epoch`` in the trial's user attrs and as MLflow tags
    ``vitsweep.retry_of``, ``vitsweep.retry_of_run``, ``vitsweep.resumed_from_epoch``."""
    if not predecessors:
        return None
    by_number = {t.number: t for t in trial.study.get_trials(deepcopy=False)}
    previous = predecessors[-1]
    tags = {TAG_RETRY_OF: str(previous)}
    prev_run = by_number[previous].user_attrs.get(RUN_ATTR) if previous in by_number else None
    if prev_run:
        tags[TAG_RETRY_OF_RUN] = prev_run
    trial.set_user_attr(RETRY_OF_ATTR, previous)
    history: list[dict[str, float]] | None = None
    for n in reversed(predecessors):  # the latest try that left a checkpoint
        src, state = _checkpoint_of(by_number.get(n), run_dir.parent / str(n))
        if state is None:
            continue
        if run_dir.exists():
            shutil.rmtree(run_dir)
        shutil.copytree(src, run_dir)
        history = [dict(m) for m in state["history"]]
        trial.set_user_attr(RESUMED_FROM_EPOCH_ATTR, int(state["epoch"]))
        trial.set_user_attr(RESUMED_FROM_ATTR, str(src))
        tags[TAG_RESUMED_FROM_EPOCH] = str(int(state["epoch"]))
        tags[TAG_RESUMED_FROM_TRIAL] = str(n)
        break
    else:
        trial.set_user_attr(RESUMED_FROM_EPOCH_ATTR, 0)
        tags[TAG_RESUMED_FROM_EPOCH] = "0"
    tracker.set_tags(run_id, tags)
    return history or None


def _checkpoint_of(t: optuna.trial.FrozenTrial | None, default: Path) -> tuple[Path, dict[str, Any] | None]:
    """An earlier try's run folder and the trainer state in its ``last.pt`` (None: none usable)."""
    src = Path(t.user_attrs[RUN_DIR_ATTR]) if t is not None and RUN_DIR_ATTR in t.user_attrs else default
    if not (src / "last.pt").is_file():
        return src, None
    try:
        return src, load_checkpoint(src / "last.pt")["state"]
    except VitsweepError:
        return src, None  # damaged (killed mid-copy?): try an earlier one, or start from scratch
