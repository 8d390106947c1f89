"""The worker's side of the storage proxy (``--storage grpc://HOST:PORT``): Optuna's
``GrpcStorageProxy`` with heartbeats and retries (:class:`ProxyStorage`), the budget lock the proxy
holds for this worker (:class:`ProxyBudgetLock`), and the first check of a proxy address. The
proxy itself, and why these exist: ``vitsweep.sweep.proxy``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from typing import Any, Callable, Iterator

import optuna
from optuna.storages import GrpcStorageProxy
from optuna.storages._heartbeat import BaseHeartbeat

from vitsweep.errors import ConfigError, VitsweepError
from vitsweep.paths import grpc_address
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


