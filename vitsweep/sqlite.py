"""Embedded SQLite stores (Optuna's and MLflow's) shared by several processes on one machine.

WAL journaling lets readers run beside the one writer, and a busy timeout makes a writer wait for
the lock instead of failing with "database is locked".
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

BUSY_TIMEOUT_S = 60.0


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///relative.db`` or ``sqlite:////abs.db`` URL; None for other URLs."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///")
    if not path or path == ":memory:":
        return None
    return Path(path)


def prepare_sqlite(url: str) -> None:
    """Create the parent folder and switch the database to WAL (persistent in the file)."""
    path = sqlite_path(url)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()
