"""`vitsweep dashboard` and `vitsweep ui` start the real servers on 127.0.0.1 with the sweep's data."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (Spawned, chromium, needs_chromium, stop_group, sweep_dict, wait_for_health, wait_for_url,
                           wait_until)
from vitsweep.sweep.runner import run_sweep
from vitsweep.sweep.spec import build_sweep

pytestmark = pytest.mark.slow  # server processes


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("servers")
    run_sweep(build_sweep(sweep_dict(root, name="srv", n_trials=2, pruner={"name": "none"})), out=lambda _: None)
    return root


def _serve(spawn: Spawned, args: list[str], url: str, data: bytes | None = None) -> dict:
    proc = spawn.cli(*args)
    try:
        return json.loads(wait_for_url(url, proc, data))
    finally:
        stop_group(proc, signal.SIGINT, 20)  # our own process group (the server and its children)


def test_dashboard_serves_the_study(stores, port, spawn):
    body = _serve(spawn, ["dashboard", "--storage", f"sqlite:///{stores}/optuna.db", "--port", str(port)],
                  f"http://127.0.0.1:{port}/api/studies")
    studies = body["study_summaries"]
    assert [s["study_name"] for s in studies] == ["srv"]


def test_ui_serves_the_experiment_and_trial_runs(stores, port, spawn):
    body = _serve(spawn, ["ui", "--tracking-uri", f"sqlite:///{stores}/mlflow.db", "--port", str(port)],
                  f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search",
                  data=json.dumps({"experiment_ids": ["1"], "max_results": 100}).encode())
    runs = body["runs"]
    kinds = sorted(next(t["value"] for t in r["data"]["tags"] if t["key"] == "vitsweep.kind") for r in runs)
    assert kinds == ["sweep", "trial", "trial"]


@needs_chromium
def test_ui_opens_the_runs_table_on_the_metric_the_trial_state_and_the_searched_params(stores, tmp_path, port, spawn):
    proc = spawn.cli("ui", "--tracking-uri", f"sqlite:///{stores}/mlflow.db", "--port", str(port))
    printed = [proc.stdout.readline() for _ in range(2)]  # the header, then the experiment's runs page
    wait_for_health(port, proc)
    url = printed[1].split(": ", 1)[1].strip()
    assert printed[1].startswith("  runs of srv: ") and url.endswith("/runs?viewStateShareKey=vitsweep"), printed
    in_view = chromium(url, tmp_path / "a", "--window-size=4000,1200", "--dump-dom", budget_ms=30000)
    default = chromium(url.split("?")[0], tmp_path / "b", "--window-size=4000,1200", "--dump-dom", budget_ms=30000)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(30)
    for column in ("best_val_acc_pct", "vitsweep.trial_state", "vitsweep.reason", "optimizer.lr"):  # column headers
        assert column in in_view, column
        assert column not in default, column  # MLflow's own default columns: Source, Models, Dataset
    assert "srv-trial-0" in in_view and "COMPLETE" in in_view  # the trials, listed flat
    # best first (Optuna's best trial), its value in percent (22.5, not 0.225)
    from vitsweep.sweep.storage import load_study

    best = load_study("srv", f"sqlite:///{stores}/optuna.db").best_trial
    other = 1 - best.number
    assert in_view.index(f"srv-trial-{best.number}") < in_view.index(f"srv-trial-{other}")
    assert f"{100 * best.value:.2f}"[:4] in in_view


@pytest.mark.parametrize("command, store", [("ui", "--tracking-uri"), ("dashboard", "--storage")])
def test_a_busy_port_or_a_bad_one_is_exit_2_naming_the_holder(command, store, stores):
    db = f"sqlite:///{stores}/{'mlflow' if command == 'ui' else 'optuna'}.db"
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "vitsweep", command, store, db, "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"port {port} on 127.0.0.1 is not free" in proc.stderr and f"process {os.getpid()}" in proc.stderr
    assert "Traceback" not in proc.stderr and "Listening" not in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "vitsweep", command, store, db, "--port", "99999"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--port 99999: must be a port number" in proc.stderr


def _nothing_listens(port: int) -> bool | None:
    with socket.socket() as s:
        return True if s.connect_ex(("127.0.0.1", port)) != 0 else None


def test_ui_under_sigterm_stops_the_mlflow_server_and_its_workers(stores, port, spawn):
    proc = spawn.cli("ui", "--tracking-uri", f"sqlite:///{stores}/mlflow.db", "--port", str(port))
    wait_for_health(port, proc)
    os.kill(proc.pid, signal.SIGTERM)  # the main process only, as docker stop and systemd do
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 143 and "terminated (SIGTERM)" in out and "Traceback" not in out, out
    wait_until(lambda: _nothing_listens(port), f"something still listens on {port} after SIGTERM", timeout=10,
               every=0.2)


def test_run_prints_the_runs_page_of_the_ui_that_is_up(tmp_path, port, spawn):
    from tests.helpers import PacedTrain

    raw = sweep_dict(tmp_path, name="addr", n_trials=1, pruner={"name": "none"})
    lines: list[str] = []
    run_sweep(build_sweep(raw), out=lines.append, train_fn=PacedTrain(0.0))
    assert any(line.startswith("MLflow runs: vitsweep ui, then http://127.0.0.1:5000/#/experiments/") for line in lines)
    proc = spawn.cli("ui", "--tracking-uri", raw["tracking"]["uri"], "--port", str(port))
    wait_for_health(port, proc)
    raw["study"]["n_trials"] = 2
    lines.clear()
    run_sweep(build_sweep(raw), out=lines.append, train_fn=PacedTrain(0.0))
    page = next(line for line in lines if line.startswith("MLflow runs: "))  # at the start, before any trial
    assert page.startswith(f"MLflow runs: http://127.0.0.1:{port}/#/experiments/"), lines
    assert lines.index(page) < next(i for i, line in enumerate(lines) if line.startswith("trial "))
    stop_group(proc, signal.SIGINT, 20)
    assert not list(Path("storage/ui").glob("*.json"))  # a stopped ui is forgotten
