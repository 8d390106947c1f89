"""Optuna storage: opening it, the study a command means, and creating a study once.

Storage: an Optuna RDB storage (SQLite under ``storage/`` by default, WAL + busy timeout) with
heartbeats; PostgreSQL with a pre-pinged connection pool and retried operations
(:mod:`vitsweep.sweep.retry`).

"The latest study" (what ``trials``, ``report`` and ``promote`` use without ``--study``) has one
rule, :func:`latest_study`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import warnings
from typing import Any, Callable, Iterator

import optuna
import sqlalchemy
import sqlalchemy.exc as sa_exc
from optuna.exceptions import ExperimentalWarning

from vitsweep.errors import VitsweepError
from vitsweep.paths import (BUSY_TIMEOUT_S, check_reachable, is_database_server, is_grpc, is_postgres, missing_driver,
                            prepare_sqlite, redact, sqlite_path, sqlite_tables, storage_url)
from vitsweep.sweep.locks import store_lock
from vitsweep.sweep.retry import POOL, RetryingRDBStorage, with_retries

optuna.logging.set_verbosity(optuna.logging.WARNING)


class _NoTrialFailedNoise(logging.Filter):
    """Optuna's "Trial N failed ... Traceback" warning: vitsweep's own trial line already says why a
    trial failed or was interrupted (and the reason is in the trial's user attrs and MLflow run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not re.match(r"Trial \d+ failed", str(record.msg))


for _handler in logging.getLogger("optuna").handlers:
    _handler.addFilter(_NoTrialFailedNoise())


@contextlib.contextmanager
def experimental_ok() -> Iterator[None]:
    """Optuna flags heartbeats, grouped TPE and the retry callback as experimental: we mean to use them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def open_storage(url: str | None = None, *, create: bool = False, heartbeat_interval: int | None = None,
                 grace_period: int | None = None,
                 stale_callback: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
                 ) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url`` (default: :func:`vitsweep.paths.storage_url`). Without
    ``create``, a missing SQLite file is an error (reading commands must not create empty databases)."""
    url = storage_url(url)
    path = sqlite_path(url)
    if path is not None and not create:
        if not path.is_file():
            raise VitsweepError(f"no sweep storage at {redact(url)} ({path} does not exist); "
                                f"run a sweep first: vitsweep run sweeps/smoke.yaml")
        if "studies" not in (sqlite_tables(url) or set()):  # reading never adds tables to a file
            raise VitsweepError(f"{url}: {path} holds no Optuna studies (it is not a sweep storage); "
                                f"give the storage a sweep wrote (vitsweep run)")
    if create:
        prepare_sqlite(url)
    with experimental_ok():
        return make_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                            heartbeat_stale_trial_callback=stale_callback)


def latest_study(storage: optuna.storages.BaseStorage, where: str) -> str:
    """The study a command means without ``--study``: the only one, or the newest created when it
    is also the one whose trials started last. Otherwise no study is clearly the latest and the
    user is asked for ``--study`` (a VitsweepError, like an empty storage). ``where`` names the
    storage in messages. Creation order is Optuna's own order of study summaries."""
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    if not summaries:
        raise VitsweepError(f"{where} holds no study yet; run one first: vitsweep run sweeps/smoke.yaml")
    newest = max(summaries)  # StudySummary orders by creation (study id)
    if len(summaries) > 1:
        started = [s for s in summaries if s.datetime_start is not None]
        last_start = max((s.datetime_start for s in started), default=None)
        latest = [s for s in started if s.datetime_start == last_start]
        if len(latest) != 1 or latest[0].study_name != newest.study_name:
            listing = ", ".join(f"{s.study_name} ({s.n_trials} trials, started {s.datetime_start:%Y-%m-%d %H:%M})"
                                if s.datetime_start else f"{s.study_name} (no trials)" for s in sorted(summaries))
            raise VitsweepError(f"{where} holds {len(summaries)} studies and none is clearly the latest; "
                                f"choose one with --study NAME (studies: {listing})")
    return newest.study_name


def load_study(name: str | None = None, storage: str | None = None, **kwargs: Any) -> optuna.Study:
    """An existing study by name (default: :func:`latest_study`) for reading."""
    url = storage_url(storage)
    st = open_storage(url)
    name = name or latest_study(st, redact(url))
    try:
        return optuna.load_study(study_name=name, storage=st, **kwargs)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(st, include_best_trial=False)]
        raise VitsweepError(f"no study named {name!r} in {redact(url)} (studies: {', '.join(names) or 'none'})") from None


def make_storage(url: str, **kwargs: Any) -> optuna.storages.RDBStorage:
    """The RDB storage for ``url``: PostgreSQL with a pre-pinged connection pool and retries,
    SQLite with a busy timeout (one machine). A driver that is not installed is a ConfigError."""
    try:
        return _make_storage(url, **kwargs)
    except ImportError as e:  # Optuna re-raises the driver's ModuleNotFoundError as an ImportError
        cause = e if isinstance(e, ModuleNotFoundError) else e.__cause__ or e.__context__
        if isinstance(cause, ModuleNotFoundError):
            raise missing_driver(url, cause) from None
        raise


SCHEMA_LOCK = "__optuna_schema__"  # workers creating a new store's tables take turns under it


def _make_storage(url: str, **kwargs: Any) -> optuna.storages.RDBStorage:
    if is_grpc(url):  # a vitsweep storage-proxy: no database connection here
        from vitsweep.sweep.proxy_client import proxy_storage

        return proxy_storage(url, **kwargs)  # type: ignore[return-value]
    if is_database_server(url):
        check_reachable(url)
    if is_postgres(url):
        # Optuna creates its tables on first use: workers starting together on a new database would
        # race (CREATE TYPE ... duplicate key), so they take turns under an advisory lock.
        with store_lock(url, SCHEMA_LOCK) as lock, lock.holding():
            return with_retries(RetryingRDBStorage, "connect")(url, engine_kwargs=dict(POOL), **kwargs)
    if not url.startswith("sqlite"):
        return optuna.storages.RDBStorage(url, **kwargs)
    # The same race on a new SQLite file ("table ... already exists"): processes take turns under a
    # file lock beside it.
    with store_lock(url, SCHEMA_LOCK) as lock, lock.holding():
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": BUSY_TIMEOUT_S}},
                                             **kwargs)
    # WAL (set on the file by prepare_sqlite) with synchronous=NORMAL: a commit no longer waits for
    # an fsync (a report per epoch gets ~3x cheaper); a crashed process loses nothing, a power cut
    # may lose the last commits.
    sqlalchemy.event.listen(storage.engine, "connect",
                            lambda con, _record: con.execute("PRAGMA synchronous=NORMAL"))
    storage.engine.dispose()  # connections opened before the listener get it when reopened
    return storage


def create_or_load_study(name: str, storage: optuna.storages.BaseStorage, direction: str) -> optuna.Study:
    """The study, created once however many workers start together (``load_if_exists`` alone can
    race: two workers both miss the study, one INSERT wins, the other gets an IntegrityError)."""
    for _ in range(5):
        try:
            return optuna.create_study(study_name=name, storage=storage, direction=direction, load_if_exists=True)
        except (optuna.exceptions.DuplicatedStudyError, sa_exc.IntegrityError):
            with contextlib.suppress(KeyError):
                return optuna.load_study(study_name=name, storage=storage)
        time.sleep(0.2)
    return optuna.load_study(study_name=name, storage=storage)
