"""``vitsweep storage-proxy`` and ``--storage grpc://HOST:PORT``: workers without a database
connection of their own, through Optuna's gRPC storage proxy and vitsweep's lock and heartbeat
service beside it, against the real PostgreSQL on 127.0.0.1:5432 and a real ``mlflow server``:
4 workers run exactly ``n_trials``, workers through the proxy and workers on the database share
one budget, a SIGKILLed worker's trial is failed by its heartbeat and resumed from its checkpoint,
and a proxy restarted mid-sweep costs a wait, not a trial. Skipped without grpcio or PostgreSQL
(failed where ``$VITSWEEP_REQUIRE`` names them, as in CI)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.cluster import grpc_problem, need
from tests.helpers import cli, spawn_cli, spawn_sweep, wait_for_first_report
from tests.test_multiworker import (_PG_PROBLEM, _free_port, _kill, _sweep_file, _trial_runs, database,  # noqa: F401
                                    mlflow_server)
from vitsweep.sweep.storage import load_study

pytestmark = need("grpc", grpc_problem())
real = [pytest.mark.slow, *need("postgres", _PG_PROBLEM)]


# ---------------------------------------------------------------------------------------------
# Mistakes (no database needed)


@pytest.mark.parametrize("url, message", [
    ("grpc://user:pw@proxy:13000", "a storage proxy URL is grpc://HOST:PORT (no user, password, path"),
    ("grpc://proxy:70000", "port 70000 is not in 1..65535"),
    ("grpc://proxy:13000/optuna", "a storage proxy URL is grpc://HOST:PORT"),
])
def test_a_bad_proxy_url_is_exit_2(url, message, capsys):
    code, _, err = cli("trials", "--storage", url, capsys=capsys)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_no_proxy_listening_is_a_clear_error(capsys):
    url = f"grpc://127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    code, _, err = cli("trials", "--storage", url, capsys=capsys)
    assert code == 2 and f"cannot reach the storage proxy {url}" in err and "vitsweep storage-proxy" in err, err
    assert "Traceback" not in err and time.monotonic() - t0 < 30


def test_a_plain_optuna_proxy_is_told_apart(tmp_path, capsys):
    """Optuna's own run_grpc_proxy_server has no budget lock or heartbeats: workers refuse it."""
    from optuna.storages._grpc.server import make_server

    port = _free_port()
    server = make_server(optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db"), "127.0.0.1", port)
    server.start()
    try:
        code, _, err = cli("studies", "--storage", f"grpc://127.0.0.1:{port}", capsys=capsys)
    finally:
        server.stop(0)
    assert code == 2 and "without vitsweep's budget lock and heartbeats" in err, err


def test_the_proxy_needs_a_database_not_another_proxy(capsys):
    code, _, err = cli("storage-proxy", "--storage", "grpc://elsewhere:13000", capsys=capsys)
    assert code == 2 and "the proxy needs the database itself" in err, err


# ---------------------------------------------------------------------------------------------
# Through a real proxy on PostgreSQL


class Proxy:
    """``vitsweep storage-proxy`` on a free port, as a process."""

    def __init__(self, storage: str, cwd: Path, port: int | None = None):
        self.storage, self.cwd = storage, cwd
        self.port = port or _free_port()
        self.url = f"grpc://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Proxy:
        from vitsweep.sweep.proxy_client import check_proxy

        self.proc = spawn_cli("storage-proxy", "--storage", self.storage, "--port", str(self.port), cwd=self.cwd)
        deadline = time.time() + 120
        while True:
            try:
                check_proxy(self.url, timeout_s=2)
                return self
            except Exception:  # noqa: BLE001 - not up yet
                assert self.proc.poll() is None, self.proc.communicate()[0]
                assert time.time() < deadline, "the proxy did not start"
                time.sleep(0.3)

    def stop(self) -> str:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            out = self.proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            _kill(self.proc)
            out = self.proc.communicate()[0]
        return out


@pytest.fixture
def proxy(tmp_path, database) -> Iterator[Proxy]:
    p = Proxy(database, tmp_path).start()
    try:
        yield p
    finally:
        out = p.stop()
        assert "Traceback" not in out, out


def _connections(database: str) -> int:
    import psycopg2

    con = psycopg2.connect(dbname="postgres", host="127.0.0.1", user="postgres")
    try:
        cur = con.cursor()
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database.rsplit("/", 1)[1],))
        return int(cur.fetchone()[0])
    finally:
        con.close()


def _finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            _kill(p)
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
        assert "Traceback" not in out, out
    return outs


def _real(f):
    for mark in real:
        f = mark(f)
    return f


@_real
def test_four_workers_through_the_proxy_run_exactly_n_trials(tmp_path, database, mlflow_server, proxy):
    path, _ = _sweep_file(tmp_path, "px", proxy.url, mlflow_server, n_trials=16)
    peak = [0]
    done = threading.Event()

    def watch() -> None:  # the workers' database connections: none, only the proxy's
        while not done.is_set():
            peak[0] = max(peak[0], _connections(database))
            time.sleep(0.5)

    baseline = _connections(database)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        outs = _finish([spawn_cli("run", str(path), cwd=tmp_path) for _ in range(4)])
    finally:
        done.set()
        watcher.join(5)
    study = load_study("px", database)  # read on the database itself
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(16))  # exactly n_trials, no duplicate number
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), [t.state for t in trials]
    assert sum(sum(line.startswith("trial ") for line in out.splitlines()) for out in outs) == 16
    assert set(_trial_runs(mlflow_server, "px")) == set(range(16))
    client = MlflowClient(mlflow_server)
    parents = client.search_runs([client.get_experiment_by_name("px").experiment_id],
                                 filter_string="tags.`vitsweep.kind` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # 4 workers on the database directly hold up to 4 x (pool 8 + lock 1); through the proxy the
    # database sees the proxy's connections only, however many workers there are
    assert peak[0] - baseline <= 10, (baseline, peak)


@_real
def test_workers_through_the_proxy_and_on_the_database_share_one_budget(tmp_path, database, mlflow_server, proxy):
    """The proxy holds the same advisory lock as direct workers: 2 + 2 of them, exactly n_trials."""
    path, _ = _sweep_file(tmp_path, "mix", database, mlflow_server, n_trials=10)
    procs = [spawn_cli("run", str(path), "--storage", url, cwd=tmp_path)
             for url in (proxy.url, database, proxy.url, database)]
    _finish(procs)
    trials = load_study("mix", database).get_trials()
    assert sorted(t.number for t in trials) == list(range(10))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


@_real
def test_a_sigkilled_worker_behind_the_proxy_is_found_by_its_heartbeat_and_resumed(tmp_path, database, mlflow_server,
                                                                                   proxy):
    path, raw = _sweep_file(tmp_path, "hb", proxy.url, mlflow_server, n_trials=1, pruner={"name": "none"},
                            space={"lr": {"path": "optimizer.lr", "low": 1e-3, "high": 2e-3}})
    raw["trainer"]["train"]["epochs"] = epochs = 12
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    first = spawn_sweep(path, tmp_path, epoch_s=0.3)
    try:
        wait_for_first_report("hb", database, first)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        _kill(first)
    assert load_study("hb", database).get_trials()[0].state == TrialState.RUNNING  # nobody told the study
    again = spawn_sweep(path, tmp_path, epoch_s=0.01)  # waits out the grace period, then runs the retry
    _finish([again], timeout=180)
    trials = load_study("hb", database).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].user_attrs["resumed_from_epoch"] >= 1
    assert sorted(trials[1].intermediate_values) == list(range(1, epochs + 1))
    runs = _trial_runs(mlflow_server, "hb")
    assert runs[0].info.status == "FAILED" and "worker died" in runs[0].data.tags["vitsweep.reason"]


@_real
def test_a_proxy_restarted_mid_sweep_loses_no_trial(tmp_path, database, mlflow_server, proxy):
    path, _ = _sweep_file(tmp_path, "rs", proxy.url, mlflow_server, n_trials=8,
                          storage={"heartbeat_interval": 1, "grace_period": 30})
    procs = [spawn_sweep(path, tmp_path, epoch_s=0.3) for _ in range(2)]
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            finished = [t for t in load_study("rs", database).get_trials() if t.state.is_finished()] \
                if _study_exists(database, "rs") else []
            if len(finished) >= 2:
                break
            assert all(p.poll() is None for p in procs), [p.communicate()[0] for p in procs]
            time.sleep(0.3)
        proxy.stop()
        time.sleep(3)  # the workers' calls fail and are retried meanwhile
        proxy.start()
        outs = _finish(procs)
    finally:
        for p in procs:
            _kill(p)
    assert any("retry 1/" in out for out in outs), outs  # they did wait for it
    study = load_study("rs", database)
    trials = study.get_trials()
    assert len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 8, \
        [(t.number, t.state) for t in trials]
    assert not [t for t in trials if t.state == TrialState.RUNNING]


def _study_exists(database: str, name: str) -> bool:
    try:
        load_study(name, database)
        return True
    except Exception:  # noqa: BLE001
        return False
