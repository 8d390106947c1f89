"""Where things are kept: every ``storage/...`` default, the store URLs (options, environment,
defaults), the embedded SQLite stores, and the one way files are written atomically.

Stores: the Optuna storage of commands that take ``--storage`` is ``--storage``, else
``$VITSWEEP_STORAGE``, else ``sqlite:///storage/optuna.db``; the MLflow store is ``--tracking-uri``,
else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///storage/mlflow.db``. A sweep file's
``storage.url`` / ``tracking.uri`` come before the environment (``vitsweep.sweep.spec``).

Embedded SQLite stores (Optuna's and MLflow's) are shared by several processes on one machine: WAL
journaling lets readers run beside the one writer, and a busy timeout makes a writer wait for the
lock instead of failing with "database is locked".
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path
from typing import Callable

from vitsweep.errors import ConfigError

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
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///storage/mlflow.db``."""
    return given or os.environ.get(TRACKING_ENV) or DEFAULT_TRACKING


def check_url(url: str, where: str, errors: list[str] | None = None) -> None:
    """Append the problem to ``errors``, or raise it when there is no list to collect it in."""
    if is_grpc(url):
        msg = grpc_problem(url, where)
    elif not re.match(r"^(sqlite|postgresql(\+\w+)?|mysql(\+\w+)?)://", url):
        msg = (f"{where} = {url!r}: must be a database URL: sqlite:///path.db, postgresql://..., mysql://..., "
               f"or grpc://HOST:PORT (a vitsweep storage-proxy)")
    else:
        msg = None
    if msg is not None:
        if errors is None:
            raise ConfigError(msg)
        errors.append(msg)


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, for everything vitsweep shows (a URL's
    password reaches child processes through the environment, never a command line)."""
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", url)


def missing_driver(url: str, err: ModuleNotFoundError) -> ConfigError:
    """The error for a database URL whose driver is not installed: which one, and how to get it."""
    scheme = url.split("://", 1)[0]
    package = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'", "MySQLdb": "mysqlclient",
               "pymysql": "pymysql"}.get(err.name or "", err.name)
    return ConfigError(f"{redact(url)}: the database driver for {scheme}:// ({err.name}) is not installed; "
                       f"install it (pip install {package}) or use a plain postgresql://USER:PASSWORD@HOST/DB "
                       f"URL (psycopg 3, installed with vitsweep)")


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgresql+", "postgres://"))


_GRPC = re.compile(r"grpc://(\[[0-9a-fA-F:.]+\]|[^\[\]/:@?#\s]+)(?::(\d+))?/?", re.IGNORECASE)


def is_grpc(url: str) -> bool:
    """``grpc://HOST:PORT``: a ``vitsweep storage-proxy`` in front of the database."""
    return url.lower().startswith("grpc://")


def grpc_address(url: str) -> tuple[str, int]:
    """(host, port) of ``grpc://HOST[:PORT]`` (port 13000 when left out; IPv6 as ``[::1]:13000``);
    a URL that is not one is a ConfigError."""
    problem = grpc_problem(url, "storage URL")
    if problem:
        raise ConfigError(problem)
    m = _GRPC.fullmatch(url)
    assert m is not None
    return m.group(1).strip("[]"), int(m.group(2) or 13000)


def grpc_problem(url: str, where: str) -> str | None:
    m = _GRPC.fullmatch(url)
    if m is None:
        return (f"{where} = {url!r}: a storage proxy URL is grpc://HOST:PORT (no user, password, path or "
                f"query: the proxy holds the database URL), e.g. grpc://dbhost:13000")
    if m.group(2) is not None and not 1 <= int(m.group(2)) <= 65535:
        return f"{where} = {url!r}: port {m.group(2)} is not in 1..65535"
    return None


def is_http(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


def tracking_off(uri: str) -> bool:
    """``--tracking-uri none`` turns MLflow off."""
    return uri.lower() == "none"


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
            raise ConfigError(f"{url}: {path} cannot be written ({why}); make {path.parent} writable or use "
                              f"another location") from None
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
        raise ConfigError(f"{url}: {path} is not a SQLite database ({e})") from None


# ---------------------------------------------------------------------------------------------
# Files


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` to a temporary file in the same folder, then rename it to ``path``: a reader
    never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


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
