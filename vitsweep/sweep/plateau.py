"""Stopping a study on a plateau: ``study.patience`` finished trials in a row without improving
the best value by more than ``study.min_delta`` end the sweep, for every worker on every machine.

The decision is the study's, not a process's: it is computed from the trials in the storage and,
once made, stored in the study's user attrs (``vitsweep_stopped``), so every worker stops and a
later ``vitsweep run`` of the same study says why it has nothing to do. (Optuna's terminator, the
library's own answer, is deprecated; Optuna #4292 asks for this.)
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from vitsweep.tracking.tags import STOPPED_ATTR
from vitsweep.units import fmt_metric


def plateau_reason(study: optuna.Study, patience: int, min_delta: float, metric: str) -> str | None:
    """Why the study has reached a plateau, or None. Finished trials (complete or pruned) are taken
    in the order they finished; the best value so far must improve by more than ``min_delta``
    (a first complete trial always counts as an improvement)."""
    finished = [t for t in study.get_trials(deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.datetime_complete is not None]
    finished.sort(key=lambda t: (t.datetime_complete, t.number))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    best, best_trial, since = None, None, 0
    for t in finished:
        v = t.value if t.state == TrialState.COMPLETE else None
        better = v is not None and (best is None or (v - best > min_delta if maximize else best - v > min_delta))
        if better:
            best, best_trial, since = v, t.number, 0
        else:
            since += 1
    if best is None or since < patience:
        return None
    return (f"plateau: {since} finished trials without improving the best {metric} "
            f"({fmt_metric(best, metric)}, trial {best_trial}) by more than {min_delta:g} (study.patience {patience})")


def stopped(study: optuna.Study) -> str | None:
    """The reason the study was stopped on a plateau, if it was."""
    return study.user_attrs.get(STOPPED_ATTR)


def check(study: optuna.Study, patience: int | None, min_delta: float, metric: str) -> str | None:
    """The stored reason, or (with ``patience``) a new plateau decision, stored now. Call it under
    the study's budget lock, so that one worker decides."""
    reason = stopped(study)
    if reason or patience is None:
        return reason
    reason = plateau_reason(study, patience, min_delta, metric)
    if reason:
        study.set_user_attr(STOPPED_ATTR, reason)
    return reason


def stop_by_hand(study: optuna.Study) -> tuple[str, bool]:
    """``vitsweep stop``: the plateau flag set by hand, so every worker (on any machine) stops after
    its current trial and a later ``vitsweep run`` says why. (reason, whether it was set now)."""
    import time

    reason = stopped(study)
    if reason:
        return reason, False
    reason = f"stopped by hand (vitsweep stop, {time.strftime('%Y-%m-%d %H:%M')})"
    study.set_user_attr(STOPPED_ATTR, reason)
    return reason, True
