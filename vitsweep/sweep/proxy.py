"""Optuna's gRPC storage proxy, and what vitsweep's workers need through it besides storage calls.

``vitsweep storage-proxy --storage postgresql://...`` (:func:`serve`) opens the database once and
serves it on ``HOST:PORT``; workers take ``--storage grpc://HOST:PORT`` (:class:`ProxyStorage`)
and hold no database connection of their own: a thousand workers are a thousand gRPC channels to
one process, which holds a handful of PostgreSQL connections (``pg_stat_activity``).

One gRPC server on one port serves two services:

- ``optuna.StorageService``: Optuna's own servicer (``OptunaStorageProxyService``, what
  ``optuna.storages.run_grpc_proxy_server`` serves) over the database as a cached Optuna storage
  (``_CachedStorage`` over vitsweep's retrying RDB storage, as that function's docs advise).
- ``vitsweep.Proxy``: what Optuna's proxy does not carry.
  * ``Hold``, the study's **budget lock** (:class:`ProxyBudgetLock`). The proxy holds it for the
    worker: an asyncio lock per study (first come, first served; a waiting worker costs a
    coroutine, not a thread), and, while a worker holds it, the same lock every direct worker
    takes (PostgreSQL's advisory lock keyed by the study, or the file lock beside a SQLite file),
    so workers through any number of proxies and workers on the database directly never start
    more than ``n_trials`` trials together. The lock lives as long as the worker's call: a worker
    that releases it, dies or loses its machine (HTTP/2 keepalive notices within ~20 s) gives it
    back, as PostgreSQL gives back an advisory lock with its connection.
  * ``RecordHeartbeat`` and ``StaleTrials``, the **heartbeats**: ``GrpcStorageProxy`` is not an
    Optuna ``BaseHeartbeat``, so through Optuna's proxy alone a dead worker's trial would stay
    RUNNING for ever. The proxy writes the heartbeat into Optuna's own heartbeat table (the
    database's clock, as direct workers do) and answers which trials are stale for the worker's
    grace period; the worker fails and re-queues them with its own callback, as on PostgreSQL.
  * ``Info``: what a worker checks first (a plain Optuna proxy there is a clear error).

**Retries.** The proxy's database calls are retried as a direct worker's are (a database
restart costs the workers a wait, not a trial); a worker's calls to a proxy that does not answer
(restarting, not yet up) are retried the same way (0.5 s doubling to 8 s, about a minute).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import optuna

from vitsweep import __version__, signals
from vitsweep.errors import ConfigError, VitsweepError
from vitsweep.paths import is_grpc, redact

from vitsweep.sweep.proxy_client import (DEFAULT_PORT, KEEPALIVE, SERVICE, _dumps, _grpc, _loads)


class _HeartbeatView:
    """What ``RDBStorage._get_stale_trial_ids`` reads of its storage, with a worker's interval and
    grace period (workers of different sweeps share one proxy, each with its own)."""

    def __init__(self, rdb: optuna.storages.RDBStorage, heartbeat_interval: int, grace_period: int):
        self.scoped_session = rdb.scoped_session
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period


class _StudyLock:
    def __init__(self, lock: Any):
        self.local = asyncio.Lock()  # proxy clients, first come first served
        self.backend = lock  # what direct workers take too


class ProxyService:
    """``vitsweep.Proxy`` over the RDB storage ``rdb`` at ``url``."""

    def __init__(self, url: str, rdb: optuna.storages.RDBStorage):
        self.url, self.rdb = url, rdb
        self.locks: dict[str, _StudyLock] = {}
        self.lock_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vitsweep-lock")
        self.holders: dict[str, str] = {}

    def handler(self) -> Any:
        grpc = _grpc()
        unary = functools.partial(grpc.unary_unary_rpc_method_handler, request_deserializer=_loads,
                                  response_serializer=_dumps)
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Info": unary(self.info),
            "RecordHeartbeat": unary(self.record_heartbeat),
            "StaleTrials": unary(self.stale_trials),
            "Hold": grpc.unary_stream_rpc_method_handler(self.hold, request_deserializer=_loads,
                                                         response_serializer=_dumps),
        })

    def info(self, request: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"vitsweep": __version__, "storage": redact(self.url), "held": dict(self.holders)}

    def record_heartbeat(self, request: dict[str, Any], context: Any) -> dict[str, Any]:
        self.rdb.record_heartbeat(int(request["trial_id"]))
        return {}

    def stale_trials(self, request: dict[str, Any], context: Any) -> dict[str, Any]:
        view = _HeartbeatView(self.rdb, int(request["heartbeat_interval"]), int(request["grace_period"]))
        stale = type(self.rdb)._get_stale_trial_ids  # the retrying one on PostgreSQL
        return {"trial_ids": stale(view, int(request["study_id"]))}  # type: ignore[arg-type]

    def _lock_of(self, study: str) -> _StudyLock:
        if study not in self.locks:
            from vitsweep.sweep.locks import budget_lock

            self.locks[study] = _StudyLock(budget_lock(self.url, study))
        return self.locks[study]

    async def hold(self, request: dict[str, Any], context: Any) -> Any:
        """Answer once the study's lock is this caller's; hold it until the caller cancels."""
        study, holder = str(request["study"]), str(request.get("holder", "?"))
        entry = self._lock_of(study)
        loop = asyncio.get_running_loop()
        async with entry.local:
            acquiring = loop.run_in_executor(self.lock_pool, entry.backend.acquire)
            try:
                await asyncio.shield(acquiring)
            except asyncio.CancelledError:  # the caller left while a direct worker held the lock
                with contextlib.suppress(Exception):
                    await acquiring
                entry.backend.release()
                raise
            self.holders[study] = holder
            try:
                yield {"held": True}
                await asyncio.Event().wait()  # until the caller cancels the call (release) or goes away
            finally:
                self.holders.pop(study, None)
                entry.backend.release()


def serve(url: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT, threads: int = 16,
          out: Callable[[str], None] = print) -> None:
    """``vitsweep storage-proxy``: serve the storage at ``url`` on ``host:port`` until Ctrl-C or
    SIGTERM (then raised as a KeyboardInterrupt, after the server has stopped)."""
    from vitsweep.servers import check_port
    from vitsweep.sweep.storage import open_storage

    if is_grpc(url):
        raise ConfigError(f"--storage {url}: the proxy needs the database itself (postgresql://... or "
                          f"sqlite:///...), not another proxy")
    if threads < 1:
        raise ConfigError(f"--threads {threads}: must be >= 1")
    _grpc()
    check_port(host, port)
    rdb = open_storage(url, create=True)
    raise asyncio.run(_serve(url, rdb, host, port, threads, out))


async def _serve(url: str, rdb: optuna.storages.RDBStorage, host: str, port: int, threads: int,
                 out: Callable[[str], None]) -> KeyboardInterrupt:
    """Serve until Ctrl-C or SIGTERM; returns the interrupt (``serve`` raises it, once stopped)."""
    grpc = _grpc()
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    service = ProxyService(url, rdb)
    # Optuna's servicer is synchronous: its calls run in the thread pool, each on a pooled
    # database connection; vitsweep's Hold waits as a coroutine (no thread per waiting worker).
    server = grpc.aio.server(migration_thread_pool=ThreadPoolExecutor(max_workers=threads,
                                                                      thread_name_prefix="optuna-storage"),
                             options=KEEPALIVE)
    api_pb2_grpc.add_StorageServiceServicer_to_server(
        OptunaStorageProxyService(optuna.storages.get_storage(rdb)), server)
    server.add_generic_rpc_handlers((service.handler(),))
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise VitsweepError(f"cannot listen on {host}:{port}; choose another --host or --port")
    await server.start()
    stop: asyncio.Future[KeyboardInterrupt] = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()
    for sig, exc in ((signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, signals.Terminated)):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(sig, lambda exc=exc: stop.done() or stop.set_result(exc()))
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    out(f"storage proxy for {redact(url)} on grpc://{host}:{port}  (Ctrl-C to stop)\n"
        f"  workers: vitsweep run SWEEP.yaml --storage grpc://{shown}:{port}")
    sys.stdout.flush()
    try:
        return await stop
    finally:
        await server.stop(grace=5)  # held locks are cancelled with their calls, and so released
        service.lock_pool.shutdown(wait=False)
        for entry in service.locks.values():
            with contextlib.suppress(Exception):
                entry.backend.close()
