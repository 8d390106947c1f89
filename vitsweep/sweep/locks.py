"""Locks: the study-wide budget lock, and the one-invocation-at-a-time lock of a folder.

``budget_lock(url, study)`` is held from "is there budget left?" until the new trial is RUNNING.
PostgreSQL: a session-level advisory lock (``pg_advisory_lock``) on a connection of its own, so
workers on any number of hosts never start more than ``n_trials`` trials. SQLite: a file lock
beside the database (one machine). Both are context managers (``with budget_lock(...) as lock``
closes it) and ``lock.holding()`` holds it for a block; ``release`` may end the hold early and is
idempotent.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy
from sqlalchemy.pool import NullPool

from vitsweep.errors import VitsweepError
from vitsweep.paths import is_grpc, is_postgres, sqlite_path
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


class FileBudgetLock(_Lock):
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


class PgBudgetLock(_Lock):
    """A PostgreSQL session-level advisory lock on a connection of its own (workers on any host).
    If the database restarts while it is held, the server drops it with the connection; acquiring
    again reconnects (with retries)."""

    def __init__(self, url: str, study: str):
        self.engine = sqlalchemy.create_engine(url, poolclass=NullPool)
        self.key = advisory_key(study)
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


def budget_lock(url: str, study: str) -> FileBudgetLock | PgBudgetLock:
    """The study's budget lock for the storage at ``url``; use it as ``with budget_lock(...) as lock:``
    (closed on exit), and ``with lock.holding():`` around what must not run twice at once."""
    if is_grpc(url):  # held by the storage proxy for this worker (vitsweep.sweep.proxy)
        from vitsweep.sweep.proxy import ProxyBudgetLock

        return ProxyBudgetLock(url, study)  # type: ignore[return-value]
    return PgBudgetLock(url, study) if is_postgres(url) else FileBudgetLock(url, study)


@contextlib.contextmanager
def exclusive(path: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` for the block, or raise ``VitsweepError(busy)``
    at once when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise VitsweepError(busy) from None
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
