"""Locks on a store: ``store_lock(url, name)`` is a PostgreSQL session-level advisory lock
(``pg_advisory_lock``, on a connection of its own: workers on any number of hosts) or, for SQLite,
a file lock beside the database (one machine; ``vitsweep.paths.FileLock``, the one file lock).

``budget_lock(url, study)`` is the study-wide one, held from "is there budget left?" until the new
trial is RUNNING (so workers never start more than ``n_trials``); the stores' schema creation
takes ``store_lock(url, "__optuna_schema__")``. Both are context managers (``with budget_lock(...) as lock``
closes it) and ``lock.holding()`` holds it for a block; ``release`` may end the hold early and is
idempotent.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy
from sqlalchemy.pool import NullPool

from vitsweep.errors import VitsweepError
from vitsweep.paths import FileLock, is_grpc, is_postgres, sqlite_path
from vitsweep.sweep.retry import with_retries


class _Lock:
    """What both budget locks share: ``with lock:`` closes it, ``with lock.holding():`` holds it."""

    def acquire(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def holding(self) -> Iterator[_Lock]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    def __enter__(self) -> _Lock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class FileStoreLock(_Lock):
    """A file lock beside a SQLite database (workers on one machine)."""

    def __init__(self, url: str, name: str):
        db = sqlite_path(url)
        if db is not None:
            path = db.with_name(f"{db.name}.{name}.lock")
        else:
            digest = hashlib.sha1(f"{url}|{name}".encode()).hexdigest()[:16]
            path = Path(tempfile.gettempdir()) / f"vitsweep-{digest}.lock"
        self.file = FileLock(path)

    def acquire(self) -> None:
        self.file.acquire()

    def release(self) -> None:
        self.file.release()

    def close(self) -> None:
        self.file.close()


def advisory_key(study: str) -> int:
    """A signed 64-bit key for ``pg_advisory_lock``, the same on every host for a study name."""
    return int.from_bytes(hashlib.sha1(f"vitsweep:{study}".encode()).digest()[:8], "big", signed=True)


class PgStoreLock(_Lock):
    """A PostgreSQL session-level advisory lock on a connection of its own (workers on any host).
    If the database restarts while it is held, the server drops it with the connection; acquiring
    again reconnects (with retries)."""

    def __init__(self, url: str, name: str):
        self.engine = sqlalchemy.create_engine(url, poolclass=NullPool)
        self.key = advisory_key(name)
        self.conn: Any = None
        self.held = False

    def _lock(self) -> None:
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


def store_lock(url: str, name: str) -> FileStoreLock | PgStoreLock:
    """The lock ``name`` on the store at ``url``; use it as ``with store_lock(...) as lock:`` (closed
    on exit), and ``with lock.holding():`` around what must not run twice at once. Through a storage
    proxy (``grpc://``) the proxy holds it for this worker (vitsweep.sweep.proxy)."""
    if is_grpc(url):
        from vitsweep.sweep.proxy_client import ProxyBudgetLock

        return ProxyBudgetLock(url, name)  # type: ignore[return-value]
    return PgStoreLock(url, name) if is_postgres(url) else FileStoreLock(url, name)


def budget_lock(url: str, study: str) -> FileStoreLock | PgStoreLock:
    """The study's budget lock (see the module doc)."""
    return store_lock(url, study)


@contextlib.contextmanager
def exclusive(path: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` for the block, or raise ``VitsweepError(busy)``
    at once when another process holds it."""
    lock = FileLock(path)
    if not lock.acquire(blocking=False):
        lock.close()
        raise VitsweepError(busy)
    try:
        yield
    finally:
        lock.close()
