"""``vitsweep submit slurm``: the job script it writes (no Slurm needed: --dry-run, and a stand-in
``sbatch`` that records what it was given), and, on a real one-node Slurm cluster (``.ci/slurm
up``, PostgreSQL on 127.0.0.1:5432, a real ``mlflow server``), a 3-task array that runs a sweep
to exactly ``n_trials``, an array cancelled mid-trial whose trials finish on a second submit, and
a preempted (requeued) task whose trial resumes from its checkpoint.

The real-cluster tests skip without Slurm or PostgreSQL, and fail instead where
``$VITSWEEP_REQUIRE`` names them (CI)."""

from __future__ import annotations

import copy
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.cluster import need, slurm_problem, squeue, wait_for_array
from tests.helpers import cli, spawn_cli, sweep_dict
from tests.test_multiworker import _PG_PROBLEM, FAST, _trial_runs, database, mlflow_server  # noqa: F401 (fixtures)
from vitsweep.sweep.storage import load_study
from vitsweep.sweep.trials import REASON_ATTR, budget


def _sweep_file(root: Path, name: str, storage: str | None = None, tracking: str | None = None, **over) -> Path:
    raw = sweep_dict(root, name=name, **over)
    if "trainer" not in over:
        raw["trainer"] = copy.deepcopy(FAST)
    if storage is None:
        del raw["storage"]["url"]
    else:
        raw["storage"]["url"] = storage
    raw["tracking"] = {"uri": tracking} if tracking else {}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


PG = "postgresql+psycopg2://postgres@db.example:5432/optuna"
HTTP = "http://mlflow.example:5000"


# ---------------------------------------------------------------------------------------------
# The script (no Slurm needed)


def test_dry_run_prints_the_array_script_and_writes_nothing(tmp_path, capsys):
    path = _sweep_file(tmp_path, "arr", PG, HTTP)
    code, out, err = cli("submit", "slurm", str(path), "--workers", "3", "--gpus-per-worker", "1", "--partition",
                         "gpu", "--time", "04:00:00", "--requeue", "--cpus-per-worker", "4",
                         "--sbatch=--account=proj", "--dry-run", capsys=capsys)
    assert code == 0, err
    directives = re.findall(r"^#SBATCH (.*)$", out, re.M)
    for d in ("--array=0-2", "--gres=gpu:1", "--partition=gpu", "--time=04:00:00", "--requeue",
              "--cpus-per-task=4", "--signal=B:TERM@120", f"--output={tmp_path}/storage/slurm/arr/%A_%a.out",
              f"--chdir={tmp_path}", "--account=proj", "--open-mode=append"):
        assert d in directives, (d, directives)
    run = [line for line in out.splitlines() if line.startswith("exec ")]
    assert run == [f"exec {sys.executable} -m vitsweep run {path} --workers 1 --storage {PG} --tracking-uri {HTTP}"]
    assert "nothing written or submitted" in err
    assert not (tmp_path / "storage").exists()


def test_a_sqlite_store_is_refused_unless_allowed(tmp_path, capsys):
    path = _sweep_file(tmp_path, "lite")  # no URLs: the SQLite defaults under storage/
    code, out, err = cli("submit", "slurm", str(path), "--workers", "2", "--dry-run", capsys=capsys)
    assert code == 2 and out == ""
    assert "sqlite:///storage/optuna.db, a SQLite file on this machine" in err and "--allow-sqlite" in err, err
    assert "Traceback" not in err
    code, _, err = cli("submit", "slurm", str(path), "--workers", "2", "--storage", PG, "--dry-run", capsys=capsys)
    assert code == 2 and "MLflow tracking store is sqlite:///storage/mlflow.db" in err, err
    code, out, err = cli("submit", "slurm", str(path), "--workers", "2", "--allow-sqlite", "--dry-run", capsys=capsys)
    assert code == 0, err
    assert f"--storage sqlite:///{tmp_path}/storage/optuna.db" in out  # absolute: the same file from any node


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers 0: must be >= 1"),
    (["--workers", "2", "--time", "4 hours"], "--time '4 hours': use Slurm's time format"),
    (["--workers", "2", "--partition", "a b"], "--partition 'a b': not a partition name"),
    (["--workers", "2", "--sbatch", "account=x"], "--sbatch 'account=x': give one sbatch option"),
    (["--workers", "2", "--storage", "grpc://u:pw@proxy:13000"], "a storage proxy URL is grpc://HOST:PORT"),
])
def test_bad_options_are_exit_2_before_anything(tmp_path, capsys, args, message):
    path = _sweep_file(tmp_path, "bad", PG, HTTP)
    code, out, err = cli("submit", "slurm", str(path), *args, "--dry-run", capsys=capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "storage").exists()


def _fake_sbatch(tmp_path: Path, monkeypatch, answer: str = 'echo "4242;cluster"', code: int = 0) -> Path:
    """An ``sbatch`` on PATH that records its arguments, the script and its environment's stores."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "sbatch-record"
    fake = bin_dir / "sbatch"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {record}.args\ncat \"$2\" > {record}.script\n"
                    f"echo \"${{VITSWEEP_STORAGE:-}}|${{MLFLOW_TRACKING_URI:-}}\" > {record}.env\n{answer}\nexit {code}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


def test_submit_writes_the_script_under_storage_slurm_and_prints_the_job(tmp_path, capsys, monkeypatch):
    record = _fake_sbatch(tmp_path, monkeypatch)
    path = _sweep_file(tmp_path, "sub", PG, HTTP)
    code, out, err = cli("submit", "slurm", str(path), "--workers", "4", capsys=capsys)
    assert code == 0, err
    scripts = list((tmp_path / "storage" / "slurm" / "sub").glob("job-*.sh"))
    assert len(scripts) == 1
    assert Path(f"{record}.args").read_text().split() == ["--parsable", str(scripts[0])]
    assert Path(f"{record}.script").read_text() == scripts[0].read_text()
    assert "submitted job array 4242 (4 task(s)" in out and "storage/slurm/sub/4242_<task>.out" in out
    assert "scancel 4242" in out


def test_a_password_reaches_the_tasks_through_the_environment_only(tmp_path, capsys, monkeypatch):
    record = _fake_sbatch(tmp_path, monkeypatch)
    secret = "postgresql://user:S3cretPW@db.example/optuna"
    path = _sweep_file(tmp_path, "pw", tracking=HTTP)  # the file names no storage: --storage does
    code, out, err = cli("submit", "slurm", str(path), "--workers", "2", "--storage", secret, capsys=capsys)
    assert code == 0, err
    script = Path(f"{record}.script").read_text()
    assert "S3cretPW" not in script and "S3cretPW" not in out + err
    assert "--storage" not in script.split("exec ", 1)[1]  # the task reads $VITSWEEP_STORAGE
    assert "$VITSWEEP_STORAGE" in script
    assert Path(f"{record}.env").read_text().strip() == f"{secret}|"
    # the sweep file naming its own storage: a password on --storage cannot reach the tasks safely
    other = _sweep_file(tmp_path, "pw2", PG, HTTP)
    code, _, err = cli("submit", "slurm", str(other), "--workers", "2", "--storage", secret, capsys=capsys)
    assert code == 2 and "carries a password and the sweep file sets its own" in err and "S3cretPW" not in err


def test_sbatch_refusing_the_job_is_exit_2_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    _fake_sbatch(tmp_path, monkeypatch, answer='echo "sbatch: error: invalid partition specified: gpu" >&2', code=1)
    path = _sweep_file(tmp_path, "no", PG, HTTP)
    code, out, err = cli("submit", "slurm", str(path), "--workers", "2", "--partition", "gpu", capsys=capsys)
    assert code == 2 and "sbatch refused the job: sbatch: error: invalid partition specified: gpu" in err, err
    assert not (tmp_path / "storage").exists()


def test_no_sbatch_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on it
    path = _sweep_file(tmp_path, "none", PG, HTTP)
    code, _, err = cli("submit", "slurm", str(path), "--workers", "2", capsys=capsys)
    assert code == 2 and "sbatch not found" in err and "--dry-run" in err, err


# ---------------------------------------------------------------------------------------------
# A real one-node Slurm cluster


def _real(f):
    for mark in (pytest.mark.slow, *need("postgres", _PG_PROBLEM), *need("slurm", slurm_problem())):
        f = mark(f)
    return f


def _submit(path: Path, cwd: Path, *args: str) -> str:
    proc = spawn_cli("submit", "slurm", str(path), *args, cwd=cwd)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    m = re.search(r"submitted job array (\d+)", out)
    assert m, out
    return m.group(1)


def _logs(cwd: Path, study: str, job_id: str) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((cwd / "storage" / "slurm" / study).glob(f"{job_id}_*.out"))}


def _parents(tracking: str, study: str) -> list:
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name(study)
    return client.search_runs([exp.experiment_id], filter_string="tags.`vitsweep.kind` = 'sweep'")


@_real
def test_a_3_task_array_runs_exactly_n_trials(tmp_path, database, mlflow_server):
    path = _sweep_file(tmp_path, "arr3", database, mlflow_server, n_trials=6)
    job = _submit(path, tmp_path, "--workers", "3")
    wait_for_array(job)
    logs = _logs(tmp_path, "arr3", job)
    assert sorted(logs) == [f"{job}_{i}.out" for i in range(3)], logs  # a log per task
    for log in logs.values():
        assert "vitsweep worker: task" in log and "Traceback" not in log and "error:" not in log, log
    trials = load_study("arr3", database).get_trials()
    assert sorted(t.number for t in trials) == list(range(6))  # exactly n_trials, no duplicates
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), [t.state for t in trials]
    assert set(_trial_runs(mlflow_server, "arr3")) == set(range(6))
    parents = _parents(mlflow_server, "arr3")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


def _wait_mid_trial(study: str, url: str, job: str, timeout: float = 300) -> int:
    """The number of a RUNNING trial that has reported an epoch (its checkpoint exists)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            for t in load_study(study, url).get_trials():
                if t.state == TrialState.RUNNING and t.intermediate_values:
                    return t.number
        except Exception:  # noqa: BLE001 - not created yet
            pass
        assert squeue(job), "the array ended before a trial was mid-way"
        time.sleep(0.3)
    pytest.fail("no trial reported an epoch")


LONG = {"epochs": 30}  # ~10 s a trial: a cancel lands mid-trial


@_real
def test_a_cancelled_array_requeues_its_trials_and_a_second_submit_finishes_them(tmp_path, database, mlflow_server):
    path = _sweep_file(tmp_path, "cancel", database, mlflow_server, n_trials=3, pruner={"name": "none"},
                       trainer={**copy.deepcopy(FAST), "train": {**FAST["train"], **LONG}})
    job = _submit(path, tmp_path, "--workers", "3")
    victim = _wait_mid_trial("cancel", database, job)
    subprocess.run(["scancel", job], check=True, timeout=60)
    wait_for_array(job)
    trials = load_study("cancel", database).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING], [t.state for t in trials]
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert victim in [t.number for t in interrupted]
    for t in interrupted:
        assert t.user_attrs[REASON_ATTR] == "terminated (SIGTERM); re-queued"
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.system_attrs["retry_history"][-1] for t in waiting) == sorted(t.number for t in interrupted)
    assert any("terminated (SIGTERM)" in log for log in _logs(tmp_path, "cancel", job).values())

    again = _submit(path, tmp_path, "--workers", "3")
    wait_for_array(again)
    study = load_study("cancel", database)
    trials = study.get_trials()
    assert budget(study) == (3, 0, 0)  # n_trials finished, nothing running or waiting
    retry = next(t for t in trials if t.system_attrs.get("retry_history", [None])[-1] == victim)
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_epoch"] >= 1  # from its checkpoint
    assert sorted(retry.intermediate_values) == list(range(1, LONG["epochs"] + 1))
    assert len(_parents(mlflow_server, "cancel")) == 1


@_real
def test_a_preempted_task_is_requeued_by_slurm_and_resumes_its_trial(tmp_path, database, mlflow_server):
    """--requeue: `scontrol requeue` (what preemption with PreemptMode=REQUEUE does) SIGTERMs the
    task, whose trial is re-queued; Slurm starts the task again and it resumes the trial."""
    path = _sweep_file(tmp_path, "pre", database, mlflow_server, n_trials=1, pruner={"name": "none"},
                       trainer={**copy.deepcopy(FAST), "train": {**FAST["train"], **LONG}})
    job = _submit(path, tmp_path, "--workers", "1", "--requeue")
    victim = _wait_mid_trial("pre", database, job)
    subprocess.run(["scontrol", "requeue", f"{job}_0"], check=True, timeout=60)
    deadline = time.time() + 120  # Slurm holds a requeued job ~2 minutes (BeginTime): start it now
    while time.time() < deadline:
        if any(line.endswith("PENDING") for line in squeue(job)):
            subprocess.run(["scontrol", "update", f"JobId={job}_0", "StartTime=now"], check=True, timeout=60)
            break
        time.sleep(0.5)
    wait_for_array(job)
    study = load_study("pre", database)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE], [t.state for t in trials]
    assert trials[0].number == victim and trials[1].user_attrs["resumed_from_epoch"] >= 1
    log = _logs(tmp_path, "pre", job)[f"{job}_0.out"]
    assert "terminated (SIGTERM)" in log and "start 2" in log, log  # one log, appended by the second start
