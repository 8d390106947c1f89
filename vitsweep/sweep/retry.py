"""A PostgreSQL storage that survives a database restart.

``RetryingRDBStorage``: Optuna's RDB storage whose storage operations are retried with exponential
backoff when the error is transient (``is_transient``: connection refused, server closed the
connection, the database restarting...). Non-transient errors are raised at once.
"""

from __future__ import annotations

import functools
import os
import random
import time
from typing import Any, Callable, TypeVar

import optuna
import sqlalchemy.exc as sa_exc

from vitsweep.errors import one_line
from vitsweep.paths import redact

T = TypeVar("T")

# Retries on transient database errors: 0.5 s, 1 s, 2 s, 4 s, then 8 s until about a minute in all.
RETRY_ATTEMPTS = int(os.environ.get("VITSWEEP_DB_RETRIES", "11"))
RETRY_BASE_S, RETRY_MAX_S = 0.5, 8.0
POOL = {"pool_pre_ping": True, "pool_size": 4, "max_overflow": 4, "pool_recycle": 1800}

_TRANSIENT_TEXT = ("connection refused", "server closed the connection", "terminating connection",
                   "could not connect", "connection reset", "connection timed out", "connection is closed",
                   "the database system is starting up", "the database system is shutting down",
                   "the database system is in recovery mode", "ssl syscall error", "broken pipe",
                   "connection already closed", "no connection to the server", "could not receive data",
                   "could not send data", "cannot connect now")


def is_transient(exc: BaseException) -> bool:
    """A database error worth retrying: the connection, not the statement, was the problem."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError,
                          optuna.exceptions.StorageInternalError, ConnectionError)) or \
                type(e).__name__ in ("OperationalError", "InterfaceError", "AdminShutdown"):
            text = str(e).lower()
            if isinstance(e, (sa_exc.DisconnectionError, ConnectionError)) or \
                    any(s in text for s in _TRANSIENT_TEXT):
                return True
        e = e.__cause__ or e.__context__
    return False


def with_retries(fn: Callable[..., T], what: str) -> Callable[..., T]:
    """``fn`` retried with exponential backoff (and jitter) while it fails with a transient error;
    each retry prints a warning naming ``what`` was being done."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> T:
        for attempt in range(RETRY_ATTEMPTS + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001
                if attempt >= RETRY_ATTEMPTS or not is_transient(e):
                    raise
                delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** attempt) * random.uniform(0.8, 1.2)
                first = redact(one_line(e))[:160]  # the password masked before the cut: no piece of it left
                print(f"warning: database unavailable during {what} ({first}); retry {attempt + 1}/"
                      f"{RETRY_ATTEMPTS} in {delay:.1f}s", flush=True)
                time.sleep(delay)
        raise AssertionError("unreachable")

    return wrapped


# The storage operations Optuna's cached storage and the heartbeat code call on the RDB storage
# (leaves only: wrapping both a method and the one it calls would multiply the retries).
_RETRIED = ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
            "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
            "get_study_user_attrs", "get_study_system_attrs", "get_all_studies", "_create_new_trial",
            "_set_trial_param", "get_trial_id_from_study_id_trial_number", "_get_best_trial_id",
            "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
            "get_trial", "_get_trials", "record_heartbeat", "_get_stale_trial_ids",
            "get_trial_user_attrs", "get_trial_system_attrs", "get_trial_param")


class RetryingRDBStorage(optuna.storages.RDBStorage):
    """``RDBStorage`` whose operations wait out a database restart instead of failing the trial."""


def _retrying(name: str) -> Callable[..., Any]:
    method = getattr(optuna.storages.RDBStorage, name)

    def call(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return with_retries(functools.partial(method, self), name)(*args, **kwargs)

    call.__name__ = name
    return call


for _name in _RETRIED:
    setattr(RetryingRDBStorage, _name, _retrying(_name))


def _set_trial_state_values(self: RetryingRDBStorage, trial_id: int, state: Any,
                            values: Any = None) -> bool:
    """Retried like the others; when a retry finds the trial already in ``state``, the first
    attempt's commit went through before its connection broke: that is success."""
    method = optuna.storages.RDBStorage.set_trial_state_values
    attempt = {"n": 0}

    def once() -> bool:
        attempt["n"] += 1
        try:
            return method(self, trial_id, state, values)
        except optuna.exceptions.UpdateFinishedTrialError:
            if attempt["n"] > 1 and optuna.storages.RDBStorage.get_trial(self, trial_id).state == state:
                return True
            raise

    return with_retries(once, "set_trial_state_values")()


RetryingRDBStorage.set_trial_state_values = _set_trial_state_values  # type: ignore[method-assign]
