"""Stopping: SIGTERM (``docker stop``, systemd, ``kill``) is handled like Ctrl-C everywhere, and
clean-up code can shield itself from a second signal.

``install()`` (the CLI and every worker process) makes SIGTERM raise :class:`Terminated`, a
``KeyboardInterrupt``, so every ``except KeyboardInterrupt`` clean-up (re-queue the trial, end the
MLflow runs KILLED, stop child processes) runs for both. ``shielded()`` ignores SIGINT and SIGTERM
for a block: the re-queue after an interrupt must not be cut short by the next one.

``exit_promptly()`` (the CLI and every worker process) makes a finished process exit at once:
after its last line, the interpreter's shutdown used to run the garbage collector over the whole
heap several times (torch, MLflow, SQLAlchemy: some 650,000 objects), which took 3 to 5 s on an
idle 2-core machine and far longer under load, and a sweep's parent waited for that in each worker.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import signal
import threading
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def install() -> None:
    """SIGTERM raises :class:`Terminated` in the main thread (elsewhere nothing changes)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """SIGINT and SIGTERM ignored inside the block (main thread only), restored after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def exit_code(e: KeyboardInterrupt) -> int:
    """130 for Ctrl-C, 143 for SIGTERM: what a shell reports for a process killed by either."""
    return 143 if isinstance(e, Terminated) else 130


def describe(e: KeyboardInterrupt) -> str:
    return "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted (Ctrl-C)"


_prompt_exit = False


def exit_promptly() -> None:
    """Freeze the heap (``gc.freeze``) as the very last exit handler, once every other one (MLflow's,
    logging's, multiprocessing's) has run: the shutdown's garbage collections then skip the objects
    that live until the end anyway, and the process exits as soon as its work is done. Threads are
    still joined, exit handlers and file flushes run as before; only cycles of objects are no
    longer collected at exit (their memory goes back with the process). Idempotent; exit handlers
    run last-registered first, so call it early."""
    global _prompt_exit
    if not _prompt_exit:
        _prompt_exit = True
        atexit.register(gc.freeze)
