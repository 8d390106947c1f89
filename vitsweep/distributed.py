"""Sweeps beyond one machine: PostgreSQL storage that survives a database restart, a study-wide
budget lock that works across hosts, and a reachability check for an MLflow tracking server.

- ``RetryingRDBStorage``: Optuna's RDB storage whose storage operations are retried with
  exponential backoff when the error is transient (connection refused, server closed the
  connection, the database restarting...). Non-transient errors are raised at once.
- ``budget_lock(url, study)``: held from "is there budget left?" until the new trial is RUNNING.
  PostgreSQL: a session-level advisory lock (``pg_advisory_lock``) on a connection of its own, so
  workers on any number of hosts never start more than ``n_trials`` trials. SQLite: a file lock
  beside the database (one machine).
- ``check_tracking_server(uri)``: an ``http(s)://`` tracking URI must answer ``GET /health``
  before any trial is created.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import random
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, TypeVar

import optuna

from vitsweep.errors import VitsweepError
from vitsweep.sqlite import sqlite_path

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


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgresql+", "postgres://"))


def is_transient(exc: BaseException) -> bool:
    """A database error worth retrying: the connection, not the statement, was the problem."""
    import sqlalchemy.exc as sa_exc

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
                first = " ".join(str(e).split())[:160]
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


def make_storage(url: str, **kwargs: Any) -> optuna.storages.RDBStorage:
    """The RDB storage for ``url``: PostgreSQL with a pre-pinged connection pool and retries,
    SQLite with a busy timeout (one machine)."""
    if is_postgres(url):
        # Optuna creates its tables on first use: workers starting together on a new database would
        # race (CREATE TYPE ... duplicate key), so they take turns under an advisory lock.
        lock = PgBudgetLock(url, "__optuna_schema__")
        try:
            lock.acquire()
            return with_retries(RetryingRDBStorage, "connect")(
                url, engine_kwargs=dict(POOL), **kwargs)
        finally:
            lock.close()
    from vitsweep.sqlite import BUSY_TIMEOUT_S

    if not url.startswith("sqlite"):
        return optuna.storages.RDBStorage(url, **kwargs)
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": BUSY_TIMEOUT_S}}, **kwargs)
    # WAL (set on the file by prepare_sqlite) with synchronous=NORMAL: a commit no longer waits for
    # an fsync (a report per epoch gets ~3x cheaper); a crashed process loses nothing, a power cut
    # may lose the last commits.
    import sqlalchemy

    sqlalchemy.event.listen(storage.engine, "connect",
                            lambda con, _record: con.execute("PRAGMA synchronous=NORMAL"))
    storage.engine.dispose()  # connections opened before the listener get it when reopened
    return storage


def create_or_load_study(name: str, storage: optuna.storages.BaseStorage, direction: str) -> optuna.Study:
    """The study, created once however many workers start together (``load_if_exists`` alone can
    race: two workers both miss the study, one INSERT wins, the other gets an IntegrityError)."""
    import sqlalchemy.exc as sa_exc

    for _ in range(5):
        try:
            return optuna.create_study(study_name=name, storage=storage, direction=direction, load_if_exists=True)
        except (optuna.exceptions.DuplicatedStudyError, sa_exc.IntegrityError):
            with contextlib.suppress(KeyError):
                return optuna.load_study(study_name=name, storage=storage)
        time.sleep(0.2)
    return optuna.load_study(study_name=name, storage=storage)


# ---------------------------------------------------------------------------------------------
# The budget lock


class FileBudgetLock:
    """A file lock (workers on one machine, SQLite)."""

    def __init__(self, url: str, study: str):
        db = sqlite_path(url)
        if db is not None:
            path = db.with_name(f"{db.name}.{study}.lock")
        else:
            digest = hashlib.sha1(f"{url}|{study}".encode()).hexdigest()[:16]
            path = Path(tempfile.gettempdir()) / f"vitsweep-{digest}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self.held = False

    def acquire(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.held = True

    def release(self) -> None:
        if self.held:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            self.held = False

    def close(self) -> None:
        self.release()
        os.close(self.fd)


def advisory_key(study: str) -> int:
    """A signed 64-bit key for ``pg_advisory_lock``, the same on every host for a study name."""
    return int.from_bytes(hashlib.sha1(f"vitsweep:{study}".encode()).digest()[:8], "big", signed=True)


class PgBudgetLock:
    """A PostgreSQL session-level advisory lock on a connection of its own (workers on any host).
    If the database restarts while it is held, the server drops it with the connection; acquiring
    again reconnects (with retries)."""

    def __init__(self, url: str, study: str):
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        self.engine = sqlalchemy.create_engine(url, poolclass=NullPool)
        self.key = advisory_key(study)
        self.conn: Any = None
        self.held = False

    def _lock(self) -> None:
        import sqlalchemy

        if self.conn is None:
            self.conn = self.engine.connect()
        try:
            self.conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            self.conn.commit()
        except Exception:
            with contextlib.suppress(Exception):
                self.conn.invalidate()
                self.conn.close()
            self.conn = None
            raise

    def acquire(self) -> None:
        with_retries(self._lock, "the budget lock")()
        self.held = True

    def release(self) -> None:
        import sqlalchemy

        if not self.held:
            return
        self.held = False
        try:
            self.conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            self.conn.commit()
        except Exception:  # noqa: BLE001 - the connection died: the server released the lock with it
            with contextlib.suppress(Exception):
                self.conn.invalidate()
                self.conn.close()
            self.conn = None

    def close(self) -> None:
        self.release()
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None
        self.engine.dispose()


def budget_lock(url: str, study: str) -> FileBudgetLock | PgBudgetLock:
    return PgBudgetLock(url, study) if is_postgres(url) else FileBudgetLock(url, study)


# ---------------------------------------------------------------------------------------------
# MLflow tracking server


def is_http(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Raise a :class:`VitsweepError` (exit 2) when an ``http(s)://`` tracking server does not
    answer ``GET <uri>/health``; other URIs (sqlite, file, none) need no server."""
    if not is_http(uri):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http(s) only
            if resp.status == 200:
                return
            problem = f"HTTP {resp.status}"
    except urllib.error.HTTPError as e:
        problem = f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        problem = str(getattr(e, "reason", e))
    raise VitsweepError(
        f"MLflow tracking server {uri} is not reachable (GET {url}: {problem}); no trial was started. "
        f"Start it (docker compose up -d mlflow, or: mlflow server --backend-store-uri "
        f"postgresql+psycopg2://USER:PASSWORD@HOST:5432/mlflow --artifacts-destination DIR "
        f"--host 0.0.0.0 --port 5000), or pass another --tracking-uri (sqlite:///storage/mlflow.db, "
        f"or none to turn tracking off)")
