"""`vitsweep dashboard` and `vitsweep ui` start the real servers on 127.0.0.1 with the sweep's data."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import chromium, needs_chromium, sweep_dict, wait_for_health
from vitsweep.sweep.runner import run_sweep
from vitsweep.sweep.spec import build_sweep


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("servers")
    run_sweep(build_sweep(sweep_dict(root, name="srv", n_trials=2, pruner={"name": "none"})), out=lambda _: None)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(args: list[str], url: str, data: bytes | None = None, timeout: float = 120) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", "vitsweep", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"server exited {proc.returncode}: {proc.stdout.read()}")
            try:
                req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    return json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"no answer from {url}")
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # our own process group (the server and its children)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_dashboard_serves_the_study(stores):
    port = _free_port()
    body = _serve(["dashboard", "--storage", f"sqlite:///{stores}/optuna.db", "--port", str(port)],
                  f"http://127.0.0.1:{port}/api/studies")
    studies = body["study_summaries"]
    assert [s["study_name"] for s in studies] == ["srv"]


def test_ui_serves_the_experiment_and_trial_runs(stores):
    port = _free_port()
    body = _serve(["ui", "--tracking-uri", f"sqlite:///{stores}/mlflow.db", "--port", str(port)],
                  f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search",
                  data=json.dumps({"experiment_ids": ["1"], "max_results": 100}).encode())
    runs = body["runs"]
    kinds = sorted(next(t["value"] for t in r["data"]["tags"] if t["key"] == "vitsweep.kind") for r in runs)
    assert kinds == ["sweep", "trial", "trial"]


@needs_chromium
def test_ui_opens_the_runs_table_on_the_metric_the_trial_state_and_the_searched_params(stores, tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vitsweep", "ui", "--tracking-uri", f"sqlite:///{stores}/mlflow.db",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        printed = [proc.stdout.readline() for _ in range(2)]  # the header, then the experiment's runs page
        wait_for_health(port, proc)
        url = printed[1].split(": ", 1)[1].strip()
        assert printed[1].startswith("  runs of srv: ") and url.endswith("/runs?viewStateShareKey=vitsweep"), printed
        in_view = chromium(url, tmp_path / "a", "--window-size=4000,1200", "--dump-dom", budget_ms=30000)
        default = chromium(url.split("?")[0], tmp_path / "b", "--window-size=4000,1200", "--dump-dom", budget_ms=30000)
    finally:
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


def test_ui_under_sigterm_stops_the_mlflow_server_and_its_workers(stores):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vitsweep", "ui", "--tracking-uri", f"sqlite:///{stores}/mlflow.db",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        wait_for_health(port, proc)
        os.kill(proc.pid, signal.SIGTERM)  # the main process only, as docker stop and systemd do
        out = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143 and "terminated (SIGTERM)" in out and "Traceback" not in out, out
    deadline = time.time() + 10
    while time.time() < deadline:  # nothing listens there any more
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                break
        time.sleep(0.2)
    else:
        pytest.fail(f"something still listens on {port} after SIGTERM")
