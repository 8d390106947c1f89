"""Running sweeps end to end on tiny synthetic data: pruning, failures, resume, workers, SIGKILL,
and the agreement between Optuna's storage, ``vitsweep trials`` and MLflow."""

from __future__ import annotations

import copy
import io
import json
import os
import signal
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.helpers import PacedTrain, cli, mlflow_runs, sweep_dict, wait_for_first_report, wait_for_trials
from vitsweep.errors import ConfigError
from vitsweep.sweep.runner import run_sweep
from vitsweep.sweep.spec import build_sweep
from vitsweep.sweep.storage import load_study
from vitsweep.sweep.trials import trials_table
from vitsweep.tracking.tags import PARENT_ATTR, RUN_ATTR



@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One sweep of 6 trials (3 epochs each), shared by the checks below."""
    root = tmp_path_factory.mktemp("sweep")
    lines: list[str] = []
    summary = run_sweep(build_sweep(sweep_dict(root)), out=lines.append)
    return root, summary, lines


def test_sweep_prunes_and_logs_matching_states_to_mlflow(swept):
    root, summary, lines = swept
    study = load_study("s", f"sqlite:///{root}/optuna.db")
    trials = study.get_trials()
    assert len(trials) == 6
    states = [t.state for t in trials]
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    assert sum(line.startswith("trial") for line in lines) == 6 and lines[-3].startswith("done")

    runs = mlflow_runs(root, "s")
    assert set(runs) == {t.number for t in trials}
    parent = study.user_attrs[PARENT_ATTR]
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    assert client.get_run(parent).info.status == "FINISHED"
    status = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}
    for t in trials:
        run = runs[t.number]
        assert run.info.run_id == t.user_attrs[RUN_ATTR]
        assert run.info.status == status[t.state]
        tags = run.data.tags
        assert tags["vitsweep.trial_state"] == t.state.name and tags["optuna.study_name"] == "s"
        assert tags["mlflow.parentRunId"] == parent
        assert "torch.version" in tags and "hardware.device" in tags
        assert run.data.params["optimizer.lr"] == str(t.params["lr"])
        assert run.data.metrics["best_val_acc"] == pytest.approx(t.value)
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in history] == sorted(t.intermediate_values)  # step = epoch
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == \
            [t.intermediate_values[s] for s in sorted(t.intermediate_values)]
        if t.state == TrialState.PRUNED:
            assert tags["vitsweep.reason"].startswith("pruned at epoch")
            assert len(history) < 3  # stopped at its rung: never after the last epoch, which would save nothing
        if t.state == TrialState.COMPLETE:
            assert [m.step for m in history] == [1, 2, 3]
    # no checkpoints left behind by finished trials
    assert not any((root / "trials").rglob("*.pt"))


def test_trials_table_and_cli_match_storage(swept, tmp_path):
    from typer.testing import CliRunner

    from vitsweep.cli import app

    root, summary, _ = swept
    study = load_study(None, f"sqlite:///{root}/optuna.db")  # default: the latest study
    df = trials_table(study)
    assert list(df.index) == list(range(6))
    for t in study.get_trials():
        assert df.loc[t.number, "state"] == t.state.name
    csv = tmp_path / "t.csv"
    res = CliRunner().invoke(app, ["trials", "--storage", f"sqlite:///{root}/optuna.db", "--csv", str(csv)])
    assert res.exit_code == 0, res.output
    assert "PRUNED" in res.output and "COMPLETE" in res.output and csv.is_file()


def test_resume_continues_the_study(swept):
    root, first, _ = swept
    url = f"sqlite:///{root}/optuna.db"
    before = {t.number: (t.state, t.value, t.datetime_complete) for t in load_study("s", url).get_trials()}
    lines: list[str] = []
    sweep = build_sweep(sweep_dict(root))
    again = run_sweep(sweep, out=lines.append)  # same n_trials: nothing to do
    assert sum(again.counts.values()) == 6 and not any(line.startswith("trial") for line in lines)
    more = run_sweep(sweep.with_overrides(n_trials=8), out=lines.append)
    trials = load_study("s", url).get_trials()
    assert len(trials) == 8 and sum(more.counts.values()) == 8
    assert {t.number: (t.state, t.value, t.datetime_complete) for t in trials[:6]} == before
    assert more.parent_run_id == first.parent_run_id  # the same MLflow parent run


def test_failed_trials_record_reasons_and_the_sweep_goes_on(tmp_path):
    space = {"heads": {"path": "model.heads", "choices": [2, 3]},  # 3 does not divide dim 32
             "lr": {"path": "optimizer.lr", "choices": [1e-3, 1e30]}}  # 1e30 diverges
    sweep = build_sweep(sweep_dict(tmp_path, name="f", n_trials=3, space=space, pruner={"name": "none"}))
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db")
    study = optuna.create_study(study_name="f", storage=storage, direction="maximize")
    for params in ({"heads": 3, "lr": 1e-3}, {"heads": 2, "lr": 1e30}, {"heads": 2, "lr": 1e-3}):
        study.enqueue_trial(params)
    lines: list[str] = []
    run_sweep(sweep, out=lines.append)
    trials = load_study("f", f"sqlite:///{tmp_path}/optuna.db").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].user_attrs["fail_reason"].startswith("bad sampled combination")
    assert "model.heads" in trials[0].user_attrs["fail_reason"]
    assert trials[1].user_attrs["fail_reason"].startswith("diverged")
    runs = mlflow_runs(tmp_path, "f")
    for n in (0, 1):
        assert runs[n].info.status == "FAILED"
        assert runs[n].data.tags["vitsweep.reason"] == trials[n].user_attrs["fail_reason"]
    assert runs[2].info.status == "FINISHED"
    assert "diverged" in "\n".join(lines)


@pytest.mark.slow
def test_two_workers_finish_exactly_n_trials(tmp_path, spawn):
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(sweep_dict(tmp_path, name="w", n_trials=6), sort_keys=False))
    proc = spawn.cli("run", str(path), "--workers", "2", cwd=tmp_path)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    assert "database is locked" not in out and "Traceback" not in out
    trials = load_study("w", f"sqlite:///{tmp_path}/optuna.db").get_trials()
    assert len(trials) == 6 and all(t.state.is_finished() for t in trials)
    assert "[w0]" in out and "[w1]" in out
    configs = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(configs)) == len(configs)  # no duplicate configs
    assert len(mlflow_runs(tmp_path, "w")) == 6


@pytest.mark.slow
def test_sigkilled_worker_trial_is_failed_and_retried(tmp_path, spawn):
    raw = sweep_dict(tmp_path, name="k", n_trials=1, pruner={"name": "none"},
                     space={"lr": {"path": "optimizer.lr", "low": 1e-3, "high": 2e-3}})
    raw["trainer"]["train"]["epochs"] = 30  # 30 x 0.2 s: long enough that the kill lands mid-trial
    path = tmp_path / "k.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = spawn.sweep(path, tmp_path, epoch_s=0.2)
    url = f"sqlite:///{tmp_path}/optuna.db"
    wait_for_first_report("k", url, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert load_study("k", url).get_trials()[0].state == TrialState.RUNNING  # stuck without heartbeats
    lines: list[str] = []
    run_sweep(build_sweep(raw), out=lines.append, train_fn=PacedTrain(0.01))  # waits out the grace period, retries
    trials = load_study("k", url).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].system_attrs["failed_trial"] == 0 and trials[1].params == trials[0].params
    runs = mlflow_runs(tmp_path, "k")
    assert runs[0].info.status == "FAILED" and "worker died" in runs[0].data.tags["vitsweep.reason"]
    assert runs[1].info.status == "FINISHED"
    assert "worker died" in trials_table(load_study("k", url)).loc[0, "reason"]


def test_environment_names_the_stores_a_sweep_file_leaves_out(tmp_path, monkeypatch, capsys):
    raw = sweep_dict(tmp_path, n_trials=2)
    del raw["storage"]["url"], raw["tracking"]["uri"]
    (tmp_path / "env.yaml").write_text(yaml.safe_dump(raw))
    optuna_db, mlflow_db = tmp_path / "env-optuna.db", tmp_path / "env-mlflow.db"
    monkeypatch.setenv("VITSWEEP_STORAGE", f"sqlite:///{optuna_db}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{mlflow_db}")

    code, out, err = cli("run", str(tmp_path / "env.yaml"), capsys=capsys)
    assert code == 0, err
    assert len(load_study("s", f"sqlite:///{optuna_db}").get_trials()) == 2
    client = MlflowClient(f"sqlite:///{mlflow_db}")
    runs = client.search_runs([client.get_experiment_by_name("s").experiment_id],
                              filter_string="tags.`vitsweep.kind` = 'trial'")
    assert len(runs) == 2 and not Path("storage/optuna.db").exists() and not Path("storage/mlflow.db").exists()
    code, out, err = cli("trials", capsys=capsys)  # no --storage: $VITSWEEP_STORAGE
    assert code == 0 and "s" in out and out.count("COMPLETE") + out.count("PRUNED") >= 2, (out, err)


def test_the_sweep_file_wins_over_the_environment_and_a_bad_value_names_its_source(tmp_path, monkeypatch, capsys):
    raw = sweep_dict(tmp_path, n_trials=2)
    del raw["storage"]["url"], raw["tracking"]["uri"]
    (tmp_path / "env.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("VITSWEEP_STORAGE", f"sqlite:///{tmp_path}/env-optuna.db")
    raw["storage"]["url"] = f"sqlite:///{tmp_path}/file.db"
    assert build_sweep(raw).storage.url == f"sqlite:///{tmp_path}/file.db"
    monkeypatch.setenv("VITSWEEP_STORAGE", "postgres://host/db")
    code, out, err = cli("trials", capsys=capsys)
    assert code == 2 and "$VITSWEEP_STORAGE = 'postgres://host/db'" in err and "postgresql://" in err
    code, out, err = cli("run", str(tmp_path / "env.yaml"), capsys=capsys)
    assert code == 2 and "$VITSWEEP_STORAGE" in err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # `vitsweep ui` cannot serve a server
    code, out, err = cli("ui", capsys=capsys)
    assert code == 2 and "is an MLflow server already" in err


def test_trials_record_their_compute_and_the_sweep_estimates_its_duration(swept):
    root, _, lines = swept
    trials = load_study("s", f"sqlite:///{root}/optuna.db").get_trials()
    trained = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert trained and all(t.user_attrs["flops"] > 0 for t in trained)
    full = [t for t in trained if len(t.intermediate_values) == 3]
    short = [t for t in trained if len(t.intermediate_values) == 1]
    if full and short:  # FLOPs grow with the epochs a trial trained
        assert min(t.user_attrs["flops"] for t in full) > max(t.user_attrs["flops"] for t in short)
    estimates = [line for line in lines if line.startswith("estimate:")]
    assert len(estimates) == 1 and "a full trial (3 epochs) takes" in estimates[0]
    assert "5 trial(s) left" in estimates[0] and "with 1 worker(s)" in estimates[0]
    assert lines.index(estimates[0]) == 1 + next(i for i, line in enumerate(lines) if line.startswith("trial"))


@pytest.mark.parametrize("problem, expected", [
    ({"data": {"val_size": 1000}}, "data.val_size = 1000"),
    ({"data": {"root": "no/such/folder"}}, "no/such/folder"),
    ({"tracking": {"uri": "ftp://nowhere/mlflow"}}, "ftp://nowhere/mlflow"),
])
def test_a_problem_found_before_anything_is_created_and_the_fixed_rerun_works(problem, expected, tmp_path, capsys):
    """Data and stores are checked before the study or any MLflow run exists: exit 2, no storage
    file, no study, no RUNNING parent run; the same sweep fixed then runs."""
    from tests.test_data import make_imagefolder

    make_imagefolder(tmp_path / "img", per_class=(12, 4))
    raw = sweep_dict(tmp_path, n_trials=2)
    raw["trainer"]["data"] = {"source": "imagefolder", "root": str(tmp_path / "img"), "val_size": 6}
    bad = copy.deepcopy(raw)
    if "data" in problem:
        bad["trainer"]["data"].update(problem["data"])
    else:
        bad["tracking"].update(problem["tracking"])
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    code, out, err = cli("run", str(tmp_path / "bad.yaml"), capsys=capsys)
    assert code == 2 and expected in err and "Traceback" not in err, (out, err)
    assert not (tmp_path / "optuna.db").exists()  # no storage, so no empty study
    if (tmp_path / "mlflow.db").exists():  # no parent run left RUNNING
        client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
        exp = client.get_experiment_by_name("s")
        assert exp is None or not client.search_runs([exp.experiment_id])
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(raw))
    code, out, err = cli("run", str(tmp_path / "good.yaml"), capsys=capsys)
    assert code == 0, err
    assert len(load_study("s", f"sqlite:///{tmp_path}/optuna.db").get_trials()) == 2


def test_a_study_whose_trials_never_ran_takes_the_fixed_trainer_config(tmp_path, capsys):
    """A study created (by an older vitsweep, or a crash) before any trial ran does not refuse the
    corrected sweep file: nothing could be compared against."""
    raw = sweep_dict(tmp_path, n_trials=2)
    from vitsweep.sweep.storage import create_or_load_study, open_storage
    from vitsweep.sweep.study import record_sweep

    old = copy.deepcopy(raw)
    old["trainer"]["data"]["val_size"] = 7
    study = create_or_load_study("s", open_storage(raw["storage"]["url"], create=True), "maximize")
    record_sweep(study, build_sweep(old))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    code, out, err = cli("run", str(tmp_path / "s.yaml"), capsys=capsys)
    assert code == 0, err
    # ...but once a trial has run, another trainer config is refused, as before
    raw["trainer"]["data"]["val_size"] = 9
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    code, out, err = cli("run", str(tmp_path / "s.yaml"), capsys=capsys)
    assert code == 2 and "different trainer config" in err


@pytest.mark.slow
@pytest.mark.parametrize("sig, workers, code, reason", [
    (signal.SIGINT, 2, 130, "interrupted (Ctrl-C); re-queued"),   # a terminal's Ctrl-C: the whole group
    (signal.SIGTERM, 1, 143, "terminated (SIGTERM); re-queued"),  # docker stop / systemd: the main process
    (signal.SIGTERM, 2, 143, "terminated (SIGTERM); re-queued"),
])
def test_stopping_a_sweep_requeues_every_running_trial_exactly_once(sig, workers, code, reason, tmp_path, spawn):
    raw = sweep_dict(tmp_path, name="stop", n_trials=workers, pruner={"name": "none"},
                     space={"lr": {"path": "optimizer.lr", "low": 1e-3, "high": 2e-3}})
    raw["trainer"]["train"]["epochs"] = 200
    path = tmp_path / "stop.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    url = f"sqlite:///{tmp_path}/optuna.db"
    proc = spawn.sweep(path, tmp_path, epoch_s=0.1, workers=workers)
    wait_for_trials("stop", url, proc, lambda ts: sum(t.state == TrialState.RUNNING and bool(t.intermediate_values)
                                                     for t in ts) >= workers, f"{workers} trials never ran at once")
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # what a terminal does: every process of the foreground group
    else:
        os.kill(proc.pid, sig)  # what docker stop and systemd do: the main process only
    out = proc.communicate(timeout=90)[0]
    assert proc.returncode == code, out
    assert "Traceback" not in out, out
    trials = load_study("stop", url).get_trials()
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(interrupted) == workers and not [t for t in trials if t.state == TrialState.RUNNING], trials
    assert sorted(t.system_attrs["failed_trial"] for t in waiting) == sorted(t.number for t in interrupted)
    assert all(t.user_attrs["fail_reason"] == reason for t in interrupted)
    runs = mlflow_runs(tmp_path, "stop")
    assert {runs[t.number].info.status for t in interrupted} == {"FAILED"}
    assert {runs[t.number].data.tags["vitsweep.reason"] for t in interrupted} == {reason}
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("stop")
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.`vitsweep.kind` = 'sweep'")
    assert parent.info.status == "KILLED"
    # no worker is left running (the workers run in the sweep's folder)
    import time

    def left() -> list[str]:
        found = []
        for pid in [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]:
            try:
                if os.readlink(f"/proc/{pid}/cwd") == str(tmp_path):
                    found.append(f"{pid}: {open(f'/proc/{pid}/cmdline').read()}")
            except OSError:
                pass
        return found

    deadline = time.time() + 10
    while left() and time.time() < deadline:
        time.sleep(0.2)
    assert not left(), left()


def test_workers_are_capped_at_the_trials_left(tmp_path, capsys):
    """--workers 1000 on a 2-trial study starts 2 workers, not 1000 processes."""
    path = tmp_path / "cap.yaml"
    path.write_text(yaml.safe_dump(sweep_dict(tmp_path, name="cap", n_trials=2)))
    lines: list[str] = []
    from vitsweep.sweep.spec import load_sweep

    run_sweep(load_sweep(path), workers=1000, out=lines.append, train_fn=PacedTrain(0.01))
    assert "--workers 1000: 2 trial(s) left to run, so 2 worker(s)" in lines
    assert sum(line.startswith("worker ") for line in lines) == 2  # the placement plan: two workers
    assert len(load_study("cap", f"sqlite:///{tmp_path}/optuna.db").get_trials()) == 2


@pytest.mark.parametrize("args, expected", [
    (["run", "SWEEP", "--timeout", "nan"], "--timeout nan: must be a number of seconds > 0"),
    (["run", "SWEEP", "--timeout", "inf"], "--timeout inf: must be a number of seconds > 0"),
    (["train", "SWEEP", "--threads", "1000"], "--threads 1000: must be between 1 and"),
    (["train", "SWEEP", "--threads", "0"], "--threads 0: must be between 1 and"),
])
def test_nonsense_numbers_are_exit_2(args, expected, tmp_path, capsys):
    path = tmp_path / "s.yaml"
    raw = sweep_dict(tmp_path)
    path.write_text(yaml.safe_dump(raw["trainer"] if args[0] == "train" else raw))
    code, out, err = cli(*[str(path) if a == "SWEEP" else a for a in args], capsys=capsys)
    assert code == 2 and expected in err and "Traceback" not in err, (out, err)
    assert not (tmp_path / "optuna.db").exists()


@pytest.mark.slow
def test_separate_processes_started_together_sample_different_configs(tmp_path, spawn):
    """Three `vitsweep run` processes on one study (the compose --scale case): each draws its own
    sampler seed stream from the study, so no two trials share a config."""
    raw = sweep_dict(tmp_path, name="together", n_trials=6, sampler={"name": "random"}, pruner={"name": "none"},
                     space={"lr": {"path": "optimizer.lr", "low": 1e-4, "high": 1e-2, "log": True}})
    path = tmp_path / "together.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    procs = [spawn.sweep(path, tmp_path, epoch_s=0.05) for _ in range(3)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    trials = load_study("together", f"sqlite:///{tmp_path}/optuna.db").get_trials()
    lrs = [t.params["lr"] for t in trials]
    assert len(trials) == 6 and len(set(lrs)) == 6, lrs


def test_a_sweep_run_again_from_scratch_samples_the_same_configs(tmp_path):
    configs = []
    for name in ("a", "b"):
        root = tmp_path / name
        root.mkdir()
        raw = sweep_dict(root, name="again", n_trials=3, sampler={"name": "random"}, pruner={"name": "none"})
        run_sweep(build_sweep(raw), out=lambda _: None, train_fn=PacedTrain(0.01))
        configs.append([t.params for t in load_study("again", f"sqlite:///{root}/optuna.db").get_trials()])
    assert configs[0] == configs[1]


def test_trials_sorts_shows_the_top_rows_percent_and_blank_conditionals(swept, capsys):
    root, _, lines = swept
    url = f"sqlite:///{root}/optuna.db"
    study = load_study("s", url)
    assert study.metric_names == ["val_acc"]  # optuna-dashboard names the objective val_acc, not "Objective 0"
    assert any("val_acc " in line and "%" in line for line in lines if line.startswith("trial "))
    code, out, err = cli("trials", "--storage", url, "--sort", "value", "--top", "2", capsys=capsys)
    assert code == 0, err
    assert f"{len(study.get_trials())} trial(s), the 2 best shown" in out and "NaN" not in out and "nan" not in out
    best = max((t for t in study.get_trials() if t.value is not None), key=lambda t: t.value)
    rows = [line for line in out.splitlines()[1:] if line.split() and line.split()[0].isdigit()]
    assert len(rows) == 2 and rows[0].split()[0] == str(best.number) and f"{best.value:.2%}" in rows[0]
    code, _, err = cli("trials", "--storage", url, "--sort", "speed", capsys=capsys)
    assert code == 2 and "--sort speed: choose number or value" in err


def test_report_links_run_ids_to_an_mlflow_server(swept):
    from vitsweep.report.page import build_sections

    root, _, _ = swept
    study = load_study("s", f"sqlite:///{root}/optuna.db")
    run_id = study.get_trials()[0].user_attrs[RUN_ATTR]
    sections, *_ = build_sections(study, root / "promote", "http://mlflow.example:5000")
    (table,) = [s.html for s in sections if s.key == "trials"]
    assert f'<a href="http://mlflow.example:5000/#/runs/{run_id}">{run_id}</a>' in table
    sections, *_ = build_sections(study, root / "promote")
    (table,) = [s.html for s in sections if s.key == "trials"]
    assert run_id in table and "<a href" not in table


def test_run_set_overrides_the_trainer_config_and_a_bad_key_is_exit_2(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep_dict(tmp_path, name="setrun", n_trials=1)))
    code, out, err = cli("run", str(path), "--set", "model.dim=24", "--set", "train.epochs=1", capsys=capsys)
    assert code == 0, err
    from vitsweep.sweep.study import sweep_of

    study = load_study("setrun", f"sqlite:///{tmp_path}/optuna.db")
    assert sweep_of(study).base.model.dim == 24 and sweep_of(study).epochs == 1
    assert len(study.get_trials()[0].intermediate_values) == 1
    code, out, err = cli("run", str(path), "--set", "model.dimm=24", capsys=capsys)
    assert code == 2 and "model.dimm" in err


@pytest.mark.parametrize("workers", [1, 2])
def test_a_plateau_stops_the_study_for_every_worker(workers, tmp_path):
    """study.patience 3 with min_delta 0.5: no trial beats the first by 50 points, so the study
    stops after 1 + 3 finished trials (+ what other workers were running), not at n_trials 12."""
    raw = sweep_dict(tmp_path, name="flat", n_trials=12, pruner={"name": "none"},
                     study={"patience": 3, "min_delta": 0.5})
    lines: list[str] = []
    run_sweep(build_sweep(raw), workers=workers, out=lines.append, train_fn=PacedTrain(0.01))
    study = load_study("flat", f"sqlite:///{tmp_path}/optuna.db")
    finished = [t for t in study.get_trials() if t.state.is_finished()]
    assert 4 <= len(finished) <= 3 + 2 * workers < 12
    why = study.user_attrs["vitsweep_stopped"]
    assert why.startswith("plateau: ") and "study.patience 3" in why
    assert f"stopped early: {why}" in lines
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("flat")
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.`vitsweep.kind` = 'sweep'")
    assert parent.data.tags["vitsweep.stop_reason"] == why and parent.info.status == "FINISHED"
    # running it again does nothing more, and says why
    lines.clear()
    run_sweep(build_sweep(raw), workers=1, out=lines.append, train_fn=PacedTrain(0.01))
    assert len(load_study("flat", f"sqlite:///{tmp_path}/optuna.db").get_trials()) == len(study.get_trials())
    assert f"stopped early: {why}" in lines


def test_plateau_settings_are_checked():
    with pytest.raises(ConfigError, match=r"study\.patience = 0: must be >= 1 finished trials"):
        build_sweep(sweep_dict(Path("/tmp"), study={"patience": 0}))


def test_the_mlflow_ui_opens_on_training_runs_and_pruned_runs_say_so(swept):
    root, _, lines = swept
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("s")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI traces page
    runs = mlflow_runs(root, "s")
    study = load_study("s", f"sqlite:///{root}/optuna.db")
    pruned = [t.number for t in study.get_trials() if t.state == TrialState.PRUNED]
    assert pruned, "the shared sweep has pruned trials"
    for number, run in runs.items():
        assert run.info.run_name.endswith(" (pruned)") == (number in pruned), run.info.run_name
        assert run.data.tags["vitsweep.trial_state"] in ("COMPLETE", "PRUNED")
    assert any(f"runs: vitsweep ui, then http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs"
               f"?viewStateShareKey=vitsweep" in line for line in lines)


def test_the_runs_table_has_a_saved_view_with_the_metric_the_trial_state_and_the_searched_params(swept):
    """Issue 22 item 10: best first by the trial's own value (not the last epoch's val_acc), in percent,
    with state, reason and epochs; trial runs only (the promoted runs have a view of their own)."""
    root, summary, _ = swept
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("s")
    view = json.loads(exp.tags["mlflow.sharedViewState.vitsweep"])  # the UI's saved-view envelope
    assert view["name"] == "vitsweep: trials" and isinstance(view["createdAt"], int)
    state = json.loads(view["state"])
    assert state["selectedColumns"] == ["metrics.`best_val_acc_pct`", "tags.`vitsweep.trial_state`",
                                        "tags.`vitsweep.reason`", "metrics.`run/epochs_run`", "params.`optimizer.name`",
                                        "params.`optimizer.lr`", "params.`optimizer.betas`"]
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`best_val_acc_pct`", False)  # best first
    assert state["searchFilter"] == "tags.`vitsweep.kind` = 'trial'"
    promoted = json.loads(json.loads(exp.tags["mlflow.sharedViewState.vitsweep-promoted"])["state"])
    assert promoted["searchFilter"] == "tags.`vitsweep.kind` = 'promoted'"
    # The view's order is Optuna's: the runs as MLflow sorts them by the view's key, best trial first.
    runs = client.search_runs([exp.experiment_id], filter_string=state["searchFilter"],
                              order_by=["metrics.`best_val_acc_pct` DESC"])
    study = load_study("s", f"sqlite:///{root}/optuna.db")
    best = [t.number for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.value == study.best_value]
    assert int(runs[0].data.tags["optuna.trial_number"]) in best  # Optuna's best (or a trial tied with it)
    assert runs[0].data.metrics["best_val_acc_pct"] == pytest.approx(100 * study.best_value)
    for r in runs:
        t = study.trials[int(r.data.tags["optuna.trial_number"])]
        assert r.data.metrics["best_val_acc_pct"] == pytest.approx(100 * r.data.metrics["best_val_acc"])
        assert r.data.metrics["run/epochs_run"] == len(t.intermediate_values)
        # the run page charts the model's metrics first: bookkeeping is under run/
        assert {"run/lr", "run/epoch_time", "run/trainer_s"} <= set(r.data.metrics)
        assert not {"lr", "epoch_time", "images_per_sec", "trainer_s"} & set(r.data.metrics)


def test_each_trial_line_says_how_far_the_sweep_is_the_best_so_far_and_an_eta(swept):
    _, summary, lines = swept
    trial_lines = [line for line in lines if line.startswith("trial ")]
    assert [line.split(" | ")[1].split(" done")[0] for line in trial_lines] == [f"{n}/6" for n in range(1, 7)]
    assert all("best val_acc " in line and " running" in line for line in trial_lines)
    pruned = [line for line in trial_lines if line.startswith("trial ") and " PRUNED " in line.upper()]
    assert pruned and f"({len(pruned)} pruned)" in trial_lines[-1]  # the sweep's pruned count so far
    assert all("ETA ~" in line for line in trial_lines[:-1]) and "ETA" not in trial_lines[-1]
    assert f"best val_acc {summary.best_value:.2%}" in trial_lines[-1]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_on_a_terminal_a_live_line_shows_the_running_trials_epoch_and_plain_output_has_none(terminal, tmp_path,
                                                                                             monkeypatch):
    stderr = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    lines: list[str] = []
    sweep = sweep_dict(tmp_path, n_trials=2, pruner={"name": "none"}, tracking={"uri": "none"})
    run_sweep(build_sweep(sweep), out=lines.append)
    shown = [s for s in stderr.getvalue().split("\r\x1b[2K") if s.strip()]
    if not terminal:
        assert "\x1b[2K" not in stderr.getvalue()
        return
    # One status per epoch: the trial, its epoch and metric, then how far the sweep is.
    statuses = [s for s in shown if s.startswith("trial ")]
    assert [s.split(",")[0] for s in statuses] == [f"trial {t}: epoch {e}/3" for t in (0, 1) for e in (1, 2, 3)]
    assert all(" val_acc " in s and "/2 done" in s and "1 running" in s for s in statuses)
    assert "best val_acc -" in statuses[0] and "best val_acc -" not in statuses[-1]  # trial 0's value, once done
    assert stderr.getvalue().endswith("\r\x1b[2K")  # cleared when the sweep ends: the summary is not overwritten
    assert [line for line in lines if line.startswith("trial ")]  # the plain trial lines are printed as before


def test_a_pruned_trial_says_why_everywhere(swept, capsys):
    """Issue 22 item 11: the bracket, the rung, the value it needed and its rank, in the trial's user
    attrs (the dashboard), the sweep's trial line, ``vitsweep trials``, the report and MLflow, whole."""
    import re

    from vitsweep.report.page import _trials_section

    root, _, lines = swept
    url = f"sqlite:///{root}/optuna.db"
    study = load_study("s", url)
    pruned = [t for t in study.get_trials() if t.state == TrialState.PRUNED]
    assert any(t.number < 6 for t in pruned)
    runs = mlflow_runs(root, "s")
    code, out, _ = cli("trials", "--study", "s", "--storage", url, capsys=capsys)
    assert code == 0
    report = _trials_section(study).html
    for t in pruned:
        reason = t.user_attrs["fail_reason"]
        m = re.fullmatch(r"pruned at epoch (\d)/3: Hyperband bracket \d of \d, rung \d: val_acc [\d.]+% ranked "
                         r"(\d+)\S* of (\d+); needed [\d.]+% \(the top (\d+) of \3 go on: 1/2 of the trials at this "
                         r"rung\)", reason)
        assert m, reason
        assert int(m.group(2)) > int(m.group(4))  # ranked below the trials that went on
        assert runs[t.number].data.tags["vitsweep.reason"] == reason
        assert reason in runs[t.number].data.tags["mlflow.note.content"]
        assert reason in out and reason in report
        if t.number < 6:  # the fixture's own sweep printed these lines (test_resume_continues_the_study adds trials)
            assert any(line.startswith(f"trial {t.number:>3}  PRUNED") and f"({reason})" in line for line in lines)


def test_a_data_error_inside_a_trial_ends_the_parent_run_and_says_why(tmp_path, capsys):
    """Issue 22 item 2: a sampled data.root with undecodable images stops the sweep (exit 2), but
    ends its MLflow parent run FAILED with the reason and records why on the trial. A corrected
    file that changes the param's choices is refused saying so (Optuna cannot mix two choice lists
    in one study), not as "a different trainer config"."""
    from tests.test_data import make_imagefolder

    make_imagefolder(tmp_path / "good", per_class=(12, 4))
    make_imagefolder(tmp_path / "bad", per_class=(12, 4))
    (tmp_path / "bad" / "train" / "cat" / "0.png").write_bytes(b"not an image at all" * 10)
    raw = sweep_dict(tmp_path, n_trials=2, pruner={"name": "none"},
                     space={"root": {"path": "data.root", "choices": [str(tmp_path / "bad")]}})
    raw["trainer"]["data"] = {"source": "imagefolder", "root": str(tmp_path / "good"), "val_size": 6,
                              "cache_dir": str(tmp_path / "cache")}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    code, out, err = cli("run", str(tmp_path / "s.yaml"), capsys=capsys)
    assert code == 2 and "cannot decode image" in err and "Traceback" not in err, (out, err)
    study = load_study("s", f"sqlite:///{tmp_path}/optuna.db")
    (trial,) = study.get_trials()
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"].startswith("data error: cannot decode")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = client.get_run(study.user_attrs[PARENT_ATTR])
    assert parent.info.status == "FAILED" and "cannot decode image" in parent.data.tags["vitsweep.reason"]
    assert mlflow_runs(tmp_path, "s")[0].info.status == "FAILED"
    raw["space"] = {"root": {"path": "data.root", "choices": [str(tmp_path / "good")]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    code, out, err = cli("run", str(tmp_path / "s.yaml"), capsys=capsys)
    assert code == 2 and "param 'root'" in err and "new study.name" in err and "Traceback" not in err, err
    assert len(load_study("s", f"sqlite:///{tmp_path}/optuna.db").get_trials()) == 1


def test_a_study_whose_trials_all_failed_before_training_takes_the_fixed_file(tmp_path, capsys):
    """Issue 22 item 2: a data error in every trial (a sampled val_size the image folder cannot
    hold) measured nothing: the corrected sweep file is taken and runs; each run's parent ended."""
    from tests.test_data import make_imagefolder

    make_imagefolder(tmp_path / "img", per_class=(12, 4))
    raw = sweep_dict(tmp_path, n_trials=2, pruner={"name": "none"},
                     space={"val": {"path": "data.val_size", "low": 100, "high": 100}})
    raw["trainer"]["data"] = {"source": "imagefolder", "root": str(tmp_path / "img"), "val_size": 6,
                              "cache_dir": str(tmp_path / "cache")}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    code, out, err = cli("run", str(tmp_path / "s.yaml"), capsys=capsys)
    assert code == 2 and "data.val_size = 100" in err and "Traceback" not in err, (out, err)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = load_study("s", f"sqlite:///{tmp_path}/optuna.db").user_attrs[PARENT_ATTR]
    assert client.get_run(parent).info.status == "FAILED"
    raw["space"] = {"val": {"path": "data.val_size", "low": 6, "high": 9}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    code, out, err = cli("run", str(tmp_path / "s.yaml"), capsys=capsys)
    assert code == 0, err
    trials = load_study("s", f"sqlite:///{tmp_path}/optuna.db").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert client.get_run(parent).info.status == "FINISHED"


def test_a_grid_too_large_to_hold_is_refused_before_anything_exists(tmp_path, capsys):
    """Issue 22 item 4: a grid over an int 0..10^12 is counted when the file is read: exit 2 naming
    the count and the fix, not "out of memory" after the study and its parent run exist."""
    raw = sweep_dict(tmp_path, n_trials=2, sampler={"name": "grid"}, pruner={"name": "none"},
                     space={"dim": {"path": "model.depth", "low": 0, "high": 10 ** 12},
                            "optimizer": {"path": "optimizer.name", "choices": ["adan", "adamw"]}})
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(raw))
    code, out, err = cli("run", str(tmp_path / "g.yaml"), capsys=capsys)
    assert code == 2 and "2,000,000,000,002 grid points" in err and "larger step" in err, (out, err)
    assert "out of memory" not in err and not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()
    raw["space"]["dim"] = {"path": "model.depth", "low": 1, "high": 2}  # a grid that fits is run as before
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(raw))
    code, out, err = cli("run", str(tmp_path / "g.yaml"), capsys=capsys)
    assert code == 0, err


@pytest.mark.parametrize("problem", ["not a database", "a folder"])
def test_a_storage_error_creates_no_mlflow_experiment(problem, tmp_path, capsys):
    """Issue 22 item 7: the MLflow experiment is created only once both stores have answered."""
    db = tmp_path / "optuna.db"
    if problem == "a folder":
        db.mkdir()
    else:
        db.write_text("hello, I am not a database\n" * 20)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep_dict(tmp_path, n_trials=1)))
    code, out, err = cli("run", str(tmp_path / "s.yaml"), capsys=capsys)
    assert code == 2 and "Traceback" not in err, err
    if (tmp_path / "mlflow.db").exists():
        assert MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_experiment_by_name("s") is None
