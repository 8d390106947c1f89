"""Dead workers (like Optuna's ``storages/_heartbeat.py``): a running trial records a heartbeat;
one whose heartbeat is older than the grace period is failed and re-queued with the same params."""

from __future__ import annotations

import contextlib

import optuna

from vitsweep.sweep.storage import experimental_ok
from vitsweep.tracking.runs import Tracker
from vitsweep.tracking.tags import RUN_ATTR


class StaleTrial:
    """Heartbeat-stale trial (its worker died): end its MLflow run as FAILED, then re-queue it."""

    def __init__(self, max_retry: int, tracker: Tracker | None = None):
        with experimental_ok():
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.tracker = tracker  # may be set later: the storage is opened before the MLflow store

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.tracker is not None:
            with contextlib.suppress(Exception):
                self.tracker.end_trial(trial.user_attrs.get(RUN_ATTR), "FAIL",
                                       "worker died (no heartbeat within the grace period); trial re-queued")
        self.retry(study, trial)


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and so re-queue, see :class:`StaleTrial`) the trials whose workers died."""
    with experimental_ok():
        optuna.storages.fail_stale_trials(study)
