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
import json
import os
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import optuna
from optuna.storages import GrpcStorageProxy
from optuna.storages._heartbeat import BaseHeartbeat

from vitsweep import __version__, signals
from vitsweep.errors import ConfigError, VitsweepError
from vitsweep.paths import grpc_address, is_grpc, redact
from vitsweep.sweep.retry import with_retries

SERVICE = "vitsweep.Proxy"
DEFAULT_PORT = 13000
# A held lock's holder that vanished without closing its connection (machine lost, network cut)
# is noticed by HTTP/2 pings: every 10 s, 10 s to answer.
KEEPALIVE = [("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 10_000),
             ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0),
             ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
             ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000)]


def _grpc() -> Any:
    try:
        import grpc
    except ModuleNotFoundError:
        raise ConfigError("a grpc:// storage needs grpcio, which is not installed: pip install 'vitsweep[grpc]' "
                          "(or pip install grpcio)") from None
    return grpc


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _loads(data: bytes) -> Any:
    return json.loads(data) if data else {}


class ProxyUnavailable(ConnectionError):
    """The proxy did not answer (down, restarting): worth retrying (``retry.is_transient``)."""


def _transient(url: str, call: Callable[[], Any]) -> Any:
    """``call()``, with a proxy that does not answer raised as :class:`ProxyUnavailable`."""
    grpc = _grpc()
    try:
        return call()
    except grpc.RpcError as e:
        # UNAVAILABLE: no proxy there (yet); CANCELLED: the proxy stopped during the call (a
        # worker never cancels a call it waits on: it releases the lock by cancelling Hold, unwaited)
        if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            raise ProxyUnavailable(f"storage proxy {url} unavailable: {e.details()}") from None
        raise


# ---------------------------------------------------------------------------------------------
# The worker's side


class _Calls:
    """vitsweep.Proxy's unary calls on a channel."""

    def __init__(self, channel: Any, url: str):
        self.channel, self.url = channel, url

    def __call__(self, method: str, request: dict[str, Any], timeout: float | None = None) -> Any:
        stub = self.channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=_dumps,
                                        response_deserializer=_loads)
        return _transient(self.url, lambda: stub(request, timeout=timeout))


def check_proxy(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """``Info`` from the proxy at ``url``: a proxy that does not answer, or one that is not
    vitsweep's, is a VitsweepError (exit 2) saying how to start one."""
    grpc = _grpc()
    host, port = grpc_address(url)
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            return _Calls(channel, url)("Info", {}, timeout=timeout_s)
        except (ProxyUnavailable, grpc.RpcError) as e:
            code = e.code() if isinstance(e, grpc.RpcError) else grpc.StatusCode.UNAVAILABLE
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise VitsweepError(f"{url} is a gRPC server without vitsweep's budget lock and heartbeats (Optuna's "
                                    f"own run_grpc_proxy_server?); serve the database with vitsweep storage-proxy "
                                    f"--storage postgresql://... --port {port} instead") from None
            raise VitsweepError(f"cannot reach the storage proxy {url} ({code.name.lower()}); start it where the "
                                f"database is reachable: vitsweep storage-proxy --storage postgresql://USER@DBHOST/DB "
                                f"--host 0.0.0.0 --port {port}, or check the host and port") from None


class ProxyStorage(GrpcStorageProxy, BaseHeartbeat):
    """Optuna's ``GrpcStorageProxy`` with heartbeats (through ``vitsweep.Proxy``) and retries."""

    def __init__(self, url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 heartbeat_stale_trial_callback: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
                 ) -> None:
        host, port = grpc_address(url)
        self.url = url
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback
        super().__init__(host=host, port=port)

    def _setup(self) -> None:
        grpc = _grpc()
        # Optuna's own channel set-up, with keepalive pings (a dead proxy is noticed mid-call)
        self._channel = grpc.insecure_channel(f"{self._host}:{self._port}",
                                              options=[("grpc.max_receive_message_length", -1), *KEEPALIVE])
        from optuna.storages._grpc.auto_generated import api_pb2_grpc
        from optuna.storages._grpc.client import GrpcClientCache

        self._stub = api_pb2_grpc.StorageServiceStub(self._channel)
        self._cache = GrpcClientCache(self._stub)
        self._vitsweep = _Calls(self._channel, self.url)

    def record_heartbeat(self, trial_id: int) -> None:
        self._vitsweep("RecordHeartbeat", {"trial_id": trial_id})

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        assert self.heartbeat_interval is not None
        grace = self.grace_period if self.grace_period is not None else 2 * self.heartbeat_interval
        return list(self._vitsweep("StaleTrials", {"study_id": study_id, "heartbeat_interval": self.heartbeat_interval,
                                                   "grace_period": grace})["trial_ids"])

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None:
        return self.heartbeat_stale_trial_callback


# Every storage operation a worker makes, retried while the proxy does not answer.
_RETRIED = ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
            "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
            "get_study_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param",
            "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
            "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials", "record_heartbeat",
            "_get_stale_trial_ids")


def _retrying(name: str) -> Callable[..., Any]:
    method = getattr(ProxyStorage, name)

    def call(self: ProxyStorage, *args: Any, **kwargs: Any) -> Any:
        return with_retries(lambda: _transient(self.url, lambda: method(self, *args, **kwargs)), name)()

    call.__name__ = name
    return call


for _name in _RETRIED:
    setattr(ProxyStorage, _name, _retrying(_name))


def _set_trial_state_values(self: ProxyStorage, trial_id: int, state: Any, values: Any = None) -> bool:
    """Retried like the others; a retry that finds the trial already in ``state`` means the first
    attempt went through before the proxy's answer was lost: that is success."""
    attempt = {"n": 0}

    def once() -> bool:
        attempt["n"] += 1
        try:
            return _transient(self.url, lambda: GrpcStorageProxy.set_trial_state_values(self, trial_id, state, values))
        except optuna.exceptions.UpdateFinishedTrialError:
            if attempt["n"] > 1 and GrpcStorageProxy.get_trial(self, trial_id).state == state:
                return True
            raise

    return with_retries(once, "set_trial_state_values")()


ProxyStorage.set_trial_state_values = _set_trial_state_values  # type: ignore[method-assign]


def proxy_storage(url: str, **kwargs: Any) -> ProxyStorage:
    """The storage behind the proxy at ``url``, once the proxy answered (``check_proxy``)."""
    from vitsweep.sweep.storage import experimental_ok

    check_proxy(url)
    with experimental_ok():  # Optuna flags its gRPC proxy experimental: we mean to use it
        return ProxyStorage(url, **kwargs)


class ProxyBudgetLock:
    """The study's budget lock, held by the proxy for this worker (``vitsweep.Proxy/Hold``): a
    call that the proxy answers once the lock is this worker's, and that holds it until the worker
    cancels it (``release``) or goes away. Used like the other budget locks: ``with lock:`` closes
    it, ``with lock.holding():`` holds it for a block, ``release`` is idempotent."""

    def __init__(self, url: str, study: str):
        grpc = _grpc()
        host, port = grpc_address(url)
        self.url, self.study = url, study
        self.channel = grpc.insecure_channel(f"{host}:{port}", options=KEEPALIVE)
        self._hold = self.channel.unary_stream(f"/{SERVICE}/Hold", request_serializer=_dumps,
                                               response_deserializer=_loads)
        self.call: Any = None
        self.held = False

    def _acquire_once(self) -> None:
        call = self._hold({"study": self.study, "holder": f"{socket.gethostname()}:{os.getpid()}"})
        try:
            _transient(self.url, lambda: next(call))
        except BaseException:  # not granted (or Ctrl-C while waiting): withdraw the request
            call.cancel()
            raise
        self.call = call

    def acquire(self) -> None:
        with_retries(self._acquire_once, "the budget lock")()
        self.held = True

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        call, self.call = self.call, None
        if call is not None:
            call.cancel()

    def close(self) -> None:
        self.release()
        self.channel.close()

    @contextlib.contextmanager
    def holding(self) -> Iterator[ProxyBudgetLock]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    def __enter__(self) -> ProxyBudgetLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# The proxy's side


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
