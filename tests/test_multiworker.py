"""Sweeps beyond one machine, against the real PostgreSQL on 127.0.0.1:5432 and a real
``mlflow server`` process (PostgreSQL backend store): several `vitsweep run` processes on one
study, a SIGKILLed worker's trial resumed from its checkpoint, PostgreSQL restarted mid-sweep, and
an MLflow server that is down at start. Each test gets a database of its own (dropped after).

Skipped, with the reason, only when PostgreSQL does not answer on 127.0.0.1:5432."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.helpers import (free_port, kill_tree, needs, stop_group, sweep_dict, trainer_dict, wait_for_first_report,
                           wait_for_health, wait_for_trials)
from vitsweep.sweep.spec import build_sweep
from vitsweep.sweep.storage import load_study
from vitsweep.sweep.study import sweep_of
from vitsweep.tracking.tags import RUN_ATTR

PG = dict(host="127.0.0.1", port=5432, user="postgres")
PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/{db}"
PG_VERSION = (sorted(os.listdir("/etc/postgresql")) or ["15"])[-1] if os.path.isdir("/etc/postgresql") else "15"
FAST = trainer_dict(data={"synthetic_train": 200, "synthetic_test": 20, "val_size": 50},  # ~1 s a trial on a CPU
                    model={"dim": 16}, train={"epochs": 2})


def _pg_error() -> str | None:
    try:
        import psycopg2
    except ImportError as e:
        return str(e)
    try:
        psycopg2.connect(dbname="postgres", connect_timeout=3, **PG).close()
        return None
    except psycopg2.OperationalError as e:
        return " ".join(str(e).split())


_PG_PROBLEM = _pg_error()
pytestmark = [pytest.mark.slow,
              needs("postgres", _PG_PROBLEM is None, f"PostgreSQL is not reachable on 127.0.0.1:5432 ({_PG_PROBLEM})")]


def _admin(sql: str) -> None:
    import psycopg2

    con = psycopg2.connect(dbname="postgres", connect_timeout=10, **PG)
    con.autocommit = True
    try:
        con.cursor().execute(sql)
    finally:
        con.close()


def _pg_ready() -> bool:
    return _pg_error() is None


def _ensure_pg_running() -> None:
    """PostgreSQL must be up when a test ends, whatever happened (other tests and CI need it)."""
    deadline = time.time() + 60
    while not _pg_ready() and time.time() < deadline:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, "main", "start"],
                       capture_output=True, timeout=60)
        time.sleep(1)
    assert _pg_ready(), "PostgreSQL did not come back"


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh database for one test; its URL."""
    name = f"vs_{uuid.uuid4().hex[:12]}"
    _admin(f"CREATE DATABASE {name}")
    try:
        yield PG_URL.format(db=name)
    finally:
        _ensure_pg_running()
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


_free_port, _kill = free_port, kill_tree  # the names tests/test_storage_proxy.py imports from here


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """A real `mlflow server` on a PostgreSQL backend store; its http:// URI."""
    name = f"vs_mlflow_{uuid.uuid4().hex[:10]}"
    _admin(f"CREATE DATABASE {name}")
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", PG_URL.format(db=name),
                             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_health(port, proc, log=root / "server.log")  # fails with the end of its log
        yield f"http://127.0.0.1:{port}"
    finally:
        with_pg = _pg_ready()
        stop_group(proc, signal.SIGTERM, 20)
        log.close()
        _ensure_pg_running()
        if with_pg or _pg_ready():
            _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _sweep_file(root: Path, name: str, db_url: str, tracking: str, n_trials: int, **over: Any) -> tuple[Path, dict]:
    raw = sweep_dict(root, name=name, n_trials=n_trials, **over)
    raw["storage"]["url"] = db_url
    raw["tracking"] = {"uri": tracking}
    raw["trainer"] = copy.deepcopy(FAST)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, raw


def _trial_runs(uri: str, study: str) -> dict[int, Any]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`vitsweep.kind` = 'trial'", max_results=1000)
    return {int(r.data.tags["optuna.trial_number"]): r for r in runs}


def test_four_worker_processes_finish_exactly_n_trials(tmp_path, database, mlflow_server, spawn):
    """4 `vitsweep run` processes started together (as on 4 machines): one study, one parent run,
    exactly n_trials trials (the PostgreSQL advisory budget lock), none lost, each with its run."""
    path, raw = _sweep_file(tmp_path, "mw", database, mlflow_server, n_trials=16)
    procs = [spawn.cli("run", str(path), "--storage", database, "--tracking-uri", mlflow_server, cwd=tmp_path)
             for _ in range(4)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
        assert "Traceback" not in out, out
    study = load_study("mw", database)
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(16))  # exactly n_trials, no duplicate number, no gap
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), [t.state for t in trials]
    ran = [sum(line.startswith("trial ") for line in out.splitlines()) for out in outs]
    assert sum(ran) == 16 and sum(n > 0 for n in ran) >= 2, ran  # the work was shared, each trial once
    runs = _trial_runs(mlflow_server, "mw")
    assert set(runs) == set(numbers)
    status = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}
    for t in trials:
        assert runs[t.number].info.run_id == t.user_attrs[RUN_ATTR]
        assert runs[t.number].info.status == status[t.state]
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("mw")
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`vitsweep.kind` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # the study keeps the real pruner settings (the report draws Hyperband rungs from them)
    assert sweep_of(study).pruner == build_sweep(raw).pruner
    assert sweep_of(study).pruner.name == "hyperband" and sweep_of(study).pruner.reduction_factor == 2


def test_sigkilled_worker_trial_is_retried_and_resumed(tmp_path, database, mlflow_server, spawn):
    """A worker killed mid-trial: another `vitsweep run` fails the trial once its heartbeat is stale,
    re-queues it, and the retry continues from the dead trial's last epoch checkpoint."""
    path, raw = _sweep_file(tmp_path, "kill", database, mlflow_server, n_trials=1, pruner={"name": "none"},
                            space={"lr": {"path": "optimizer.lr", "low": 1e-3, "high": 2e-3}})
    raw["trainer"]["train"]["epochs"] = EPOCHS = 12  # 12 x 0.3 s: long enough that the kill lands mid-trial
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = spawn.sweep(path, tmp_path, epoch_s=0.3)
    wait_for_first_report("kill", database, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    dead = load_study("kill", database).get_trials()[0]
    assert dead.state == TrialState.RUNNING and len(dead.intermediate_values) < EPOCHS
    assert (Path(dead.user_attrs["run_dir"]) if Path(dead.user_attrs["run_dir"]).is_absolute()
            else tmp_path / dead.user_attrs["run_dir"]).joinpath("last.pt").is_file()

    again = spawn.sweep(path, tmp_path, epoch_s=0.01)  # waits out the grace period, then runs the retry
    out = again.communicate(timeout=180)[0]
    assert again.returncode == 0, out
    trials = load_study("kill", database).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    first, retry = trials
    resumed = retry.user_attrs["resumed_from_epoch"]
    assert resumed >= 1 and retry.user_attrs["retry_of"] == 0 and retry.params == first.params
    # every epoch reported to the retried trial (the resumed ones re-reported from the checkpoint)
    assert sorted(retry.intermediate_values) == list(range(1, EPOCHS + 1))
    for epoch in range(1, resumed + 1):
        if epoch in first.intermediate_values:
            assert retry.intermediate_values[epoch] == first.intermediate_values[epoch]
    runs = _trial_runs(mlflow_server, "kill")
    assert runs[0].info.status == "FAILED" and "worker died" in runs[0].data.tags["vitsweep.reason"]
    tags = runs[1].data.tags
    assert runs[1].info.status == "FINISHED"
    assert tags["vitsweep.retry_of"] == "0" and tags["vitsweep.retry_of_run"] == runs[0].info.run_id
    assert tags["vitsweep.resumed_from_epoch"] == str(resumed)
    history = MlflowClient(mlflow_server).get_metric_history(runs[1].info.run_id, "val_acc")
    assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
    assert not list((tmp_path / "trials").rglob("*.pt"))  # both tries' checkpoints gone once it ended


def test_database_restart_mid_sweep_loses_no_trial(tmp_path, database, mlflow_server, spawn):
    """PostgreSQL restarted while 2 workers run trials: storage operations retry until it is back;
    finished trials stay, and the sweep ends with n_trials finished trials."""
    path, _ = _sweep_file(tmp_path, "restart", database, mlflow_server, n_trials=8,
                          storage={"heartbeat_interval": 1, "grace_period": 30})
    proc = spawn.cli("run", str(path), "--workers", "2", cwd=tmp_path)
    trials = wait_for_trials("restart", database, proc, lambda ts: sum(t.state.is_finished() for t in ts) >= 2,
                             "2 trials never finished", timeout=180, every=0.3)
    before = {t.number: (t.state, t.value, dict(t.intermediate_values)) for t in trials if t.state.is_finished()}
    assert proc.poll() is None, "the sweep ended before the restart"
    try:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, "main", "restart"],
                       check=True, capture_output=True, timeout=120)
    finally:
        _ensure_pg_running()
    out = proc.communicate(timeout=240)[0]  # (PostgreSQL is up again when the test ends: see database)
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    trials = load_study("restart", database).get_trials()
    after = {t.number: (t.state, t.value, dict(t.intermediate_values)) for t in trials}
    assert {n: after[n] for n in before} == before  # nothing finished was lost or changed
    assert len(trials) == 8 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), out
    assert set(_trial_runs(mlflow_server, "restart")) == set(after)


def test_mlflow_server_down_at_start_is_a_clear_error_before_any_trial(tmp_path, database, port, spawn):
    down = f"http://127.0.0.1:{port}"  # nothing listens there
    path, _ = _sweep_file(tmp_path, "down", database, down, n_trials=2)
    proc = spawn.cli("run", str(path), "--storage", database, "--tracking-uri", down, cwd=tmp_path)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2, out
    assert f"MLflow tracking server {down} is not reachable" in out and "mlflow server" in out, out
    assert "Traceback" not in out
    storage = optuna.storages.RDBStorage(database)
    assert optuna.get_all_study_summaries(storage) == []  # no study, so no trial


def test_plain_postgresql_urls_work_for_both_stores(tmp_path, database, spawn):
    """``postgresql://USER@HOST/DB``, the form most users type, for the Optuna storage and the
    MLflow store: SQLAlchemy 2.1 maps it to psycopg 3, which vitsweep installs; the
    ``+psycopg2`` form the other tests use keeps working."""
    plain = database.replace("postgresql+psycopg2://", "postgresql://")
    db = plain.rsplit("/", 1)[1]
    _admin(f"CREATE DATABASE {db}_ml")
    try:
        tracking = f"{plain}_ml"
        path, _ = _sweep_file(tmp_path, "plain", plain, tracking, n_trials=2)
        proc = spawn.cli("run", str(path), cwd=tmp_path)
        out = proc.communicate(timeout=240)[0]
        assert proc.returncode == 0, out
        assert "Traceback" not in out and "psycopg" not in out, out
        trials = load_study("plain", plain).get_trials()
        assert len(trials) == 2 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        assert set(_trial_runs(tracking, "plain")) == {0, 1}
    finally:
        _admin(f"DROP DATABASE IF EXISTS {db}_ml WITH (FORCE)")


def test_a_database_driver_that_is_not_installed_is_a_clear_error(tmp_path, spawn):
    """mysql:// needs mysqlclient, which vitsweep does not install: exit 2 naming the driver and the
    pip command, the password masked, no traceback."""
    code = subprocess.run([sys.executable, "-c", "import MySQLdb"], capture_output=True).returncode
    if code == 0:
        pytest.skip("mysqlclient is installed here")
    proc = spawn.cli("trials", "--storage", "mysql://root:S3cretPW@127.0.0.1:3306/test", cwd=tmp_path)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 2, out
    assert "MySQLdb" in out and "pip install mysqlclient" in out and "Traceback" not in out, out
    assert "S3cretPW" not in out and "root:***@" in out, out


def test_passwords_are_masked_and_never_on_a_command_line(tmp_path, database, port, spawn):
    """A store URL's password is shown as *** by run, trials, dashboard and ui, and `vitsweep ui`
    hands it to `mlflow server` through the environment, not its command line (which ps shows)."""
    secret = database.replace("postgres@", "postgres:S3cretPW@").replace("+psycopg2", "")  # trust auth: accepted
    _admin(f"CREATE DATABASE {database.rsplit('/', 1)[1]}_ml")
    tracking = f"{secret}_ml"
    path, _ = _sweep_file(tmp_path, "pw", secret, tracking, n_trials=1)
    outs = []
    for args in (["run", str(path)], ["trials", "--storage", secret]):
        proc = spawn.cli(*args, cwd=tmp_path)
        outs.append(proc.communicate(timeout=240)[0])
        assert proc.returncode == 0, outs[-1]
    proc = spawn.cli("ui", "--tracking-uri", tracking, "--port", str(port), cwd=tmp_path)
    wait_for_health(port, proc)
    cmdlines = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdlines.append(Path(f"/proc/{pid}/cmdline").read_text())
        except OSError:
            pass
    servers = [c for c in cmdlines if "mlflow" in c and "vitsweep" not in c]  # what vitsweep started
    assert servers and not [c for c in servers if "S3cretPW" in c], servers
    os.killpg(proc.pid, signal.SIGINT)
    outs.append(proc.communicate(timeout=30)[0])
    _admin(f"DROP DATABASE IF EXISTS {database.rsplit('/', 1)[1]}_ml WITH (FORCE)")
    for out in outs:
        assert "S3cretPW" not in out and "postgres:***@" in out, out
