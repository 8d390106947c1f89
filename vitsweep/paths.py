"""Where things are kept: every ``storage/...`` default, the store URLs (options, environment,
defaults; their checks and masking are :mod:`vitsweep.urls`'s), the embedded SQLite stores, and
the one way files are written atomically.

Stores: the Optuna storage of commands that take ``--storage`` is ``--storage``, else
``$VITSWEEP_STORAGE``, else ``sqlite:///storage/optuna.db``; the MLflow store is ``--tracking-uri``,
else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///storage/mlflow.db``. A sweep file's
``storage.url`` / ``tracking.uri`` come before the environment (``vitsweep.sweep.spec``).

Embedded SQLite stores (Optuna's and MLflow's) are shared by several processes on one machine: WAL
journaling lets readers run beside the one writer, and a busy timeout makes a writer wait for the
lock instead of failing with "database is locked".
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Callable

from vitsweep.errors import ConfigError
# The store URLs' checks, kinds and masking live in vitsweep.urls; imported from here as well
from vitsweep.urls import (check_reachable, check_tracking_uri, check_url, grpc_address, grpc_problem,  # noqa: F401
                           is_database_server, is_grpc, is_http, is_postgres, missing_driver, redact, tracking_off)

# Everything vitsweep writes by default lives under storage/ (ignored by git).
STORAGE = Path("storage")
DEFAULT_STORAGE = "sqlite:///storage/optuna.db"
DEFAULT_TRACKING = "sqlite:///storage/mlflow.db"
DEFAULT_ARTIFACTS = "storage/mlartifacts"
DEFAULT_TRIALS_DIR = "storage/trials"
DATA_ROOT = "storage/data/cifar10"
CACHE_DIR = "storage/cache"
RUNS_DIR = STORAGE / "runs"
PROMOTE_DIR = STORAGE / "promote"
REPORTS_DIR = STORAGE / "reports"
EVAL_DIR = STORAGE / "eval"
BENCH_DIR = STORAGE / "bench"
UI_DIR = STORAGE / "ui"  # a running `vitsweep ui` says here which store it serves on which port
EXPORT_DIR = STORAGE / "export"
MLFLOW_CACHE_DIR = STORAGE / "cache" / "mlflow"

STORAGE_ENV = "VITSWEEP_STORAGE"  # like MLflow's MLFLOW_TRACKING_URI, for the Optuna storage
TRACKING_ENV = "MLFLOW_TRACKING_URI"
BUSY_TIMEOUT_S = 60.0


# ---------------------------------------------------------------------------------------------
# Store URLs


def storage_url(given: str | None = None) -> str:
    """The Optuna storage of commands that take ``--storage``: ``--storage``, else
    ``$VITSWEEP_STORAGE``, else ``sqlite:///storage/optuna.db``. A bad URL is a ConfigError."""
    if given is not None:
        check_url(given, "--storage")
        return given
    env = os.environ.get(STORAGE_ENV)
    if env:
        check_url(env, f"${STORAGE_ENV}")
        return env
    return DEFAULT_STORAGE


def tracking_uri(given: str | None = None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///storage/mlflow.db``. A URI
    that cannot work (:func:`check_tracking_uri`) is a ConfigError naming where it came from."""
    if given:
        check_tracking_uri(given, "--tracking-uri")
        return given
    env = os.environ.get(TRACKING_ENV)
    if env:
        check_tracking_uri(env, f"${TRACKING_ENV}")
        return env
    return DEFAULT_TRACKING


# ---------------------------------------------------------------------------------------------
# Embedded SQLite stores


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///relative.db`` or ``sqlite:////abs.db`` URL; None for other URLs."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///")
    if not path or path == ":memory:":
        return None
    return Path(path)


def prepare_sqlite(url: str) -> None:
    """Create the parent folder and switch the database to WAL (persistent in the file). A file
    that is not a database, or a folder vitsweep cannot write, is a ConfigError saying which."""
    path = sqlite_path(url)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{url}: cannot create the folder {path.parent} ({e.strerror})") from None
    if path.is_dir():
        raise ConfigError(f"{url}: {path} is a folder; give a database file name (e.g. {path / 'optuna.db'})")
    try:
        con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA schema_version").fetchone()  # reads the header: a non-database fails here
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        why = str(e)
        if "not a database" in why:
            raise ConfigError(f"{url}: {path} is not a SQLite database; give another file (vitsweep creates it)") from None
        if "readonly" in why or "unable to open" in why:
            fix = (f"make {path} writable" if path.is_file() and not os.access(path, os.W_OK) else
                   f"make {path.parent} writable")
            raise ConfigError(f"{url}: {path} cannot be written ({why}); {fix} or use another location") from None
        raise ConfigError(f"{url}: {path}: {why}") from None


def sqlite_tables(url: str) -> set[str] | None:
    """The tables of the SQLite database at ``url`` (None: not SQLite), read without changing it.
    A file that is not a database is a ConfigError."""
    path = sqlite_path(url)
    if path is None:
        return None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
        try:
            return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        why = str(e)
        if "not a database" in why or "encrypted" in why:
            raise ConfigError(f"{url}: {path} is not a SQLite database ({why})") from None
        if "readonly" in why or "unable to open" in why:  # a valid database that this user cannot open
            raise ConfigError(
                f"{url}: {path} cannot be opened for reading ({why}): "
                + ("it is not readable by this user; make it readable" if path.is_file() and not os.access(path, os.R_OK)
                   else f"it is a WAL database in a folder this user cannot write ({path.parent}), and SQLite must "
                        f"create {path.name}-shm and {path.name}-wal beside it even to read it; make {path.parent} "
                        f"writable, or copy the database (with any -wal file) to a folder that is")) from None
        raise ConfigError(f"{url}: {path}: {why}") from None


# ---------------------------------------------------------------------------------------------
# Files


def writable_folder(path: str | Path, what: str, fix: str) -> Path:
    """Create the folder ``path`` if missing and make sure files can be written in it; otherwise a
    ConfigError naming ``what`` (e.g. ``--run-dir storage/runs/x``), why, and ``fix``. Checked by
    writing (and removing) a probe file: permission bits alone do not say (root, ACLs, read-only mounts)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{what}: cannot create the folder {e.filename or path} ({e.strerror}); {fix}") from None
    probe = path / f".vitsweep-probe-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{what}: cannot write in {path} ({e.strerror}); {fix}") from None
    return path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` to a temporary file in the same folder, then rename it to ``path``: a reader
    never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:  # a full disk, Ctrl-C: no half-written temporary file left behind
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


class FileLock:
    """An exclusive lock on a file (``fcntl.flock``), the one file lock vitsweep takes: a sweep's
    budget lock on SQLite, a new store's schema creation, one promotion per study folder.
    ``with FileLock(path):`` holds it for the block; ``acquire``/``release`` hold it across calls."""

    def __init__(self, path: str | Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.held = path, False
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (waiting for it, or not: then False when another process holds it)."""
        import fcntl

        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        self.held = True
        return True

    def release(self) -> None:
        import fcntl

        if self.held:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            self.held = False

    def close(self) -> None:
        self.release()
        os.close(self.fd)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
