"""What a user can get wrong on the command line ends in `error: ...` and exit 2, with nothing
created or changed: binary files, files where folders go (and back), databases that are not
Optuna storages, unwritable folders, unknown devices, out of memory (issue 13, items 6 and 11)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import cli, free_port, sweep_dict, trainer_dict


def test_a_binary_config_or_sweep_file_is_exit_2(tmp_path, capsys):
    f = tmp_path / "x.yaml"
    f.write_bytes(bytes(range(256)) * 4)
    for args in (["train", str(f)], ["run", str(f)]):
        code, out, err = cli(*args, capsys=capsys)
        assert code == 2 and "not a text file" in err and "Traceback" not in err, (args, err)


def test_reading_an_empty_or_foreign_sqlite_file_changes_nothing(tmp_path, capsys):
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE notes (x)")
    con.commit()
    con.close()
    before = other.read_bytes()
    for db in (empty, other):
        code, out, err = cli("trials", "--storage", f"sqlite:///{db}", capsys=capsys)
        assert code == 2 and "holds no Optuna studies" in err, err
    assert empty.read_bytes() == b"" and other.read_bytes() == before  # no tables were added


def test_a_file_that_is_not_a_database_is_exit_2(tmp_path, capsys):
    junk = tmp_path / "junk.db"
    junk.write_text("hello, I am a text file, not a database\n" * 20)
    code, _, err = cli("trials", "--storage", f"sqlite:///{junk}", capsys=capsys)
    assert code == 2 and "is not a SQLite database" in err and "Traceback" not in err, err
    raw = sweep_dict(tmp_path, n_trials=1)
    raw["storage"]["url"] = f"sqlite:///{junk}"
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    code, _, err = cli("run", str(tmp_path / "s.yaml"), capsys=capsys)
    assert code == 2 and "is not a SQLite database" in err and "Traceback" not in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only folders anyway")
def test_a_read_only_storage_folder_is_exit_2(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import yaml

        raw = sweep_dict(tmp_path, n_trials=1)
        raw["storage"]["url"] = f"sqlite:///{ro}/optuna.db"
        (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
        code, _, err = cli("run", str(tmp_path / "s.yaml"), capsys=capsys)
        assert code == 2 and "cannot be written" in err and "Traceback" not in err, err
    finally:
        ro.chmod(0o700)


def test_files_where_folders_go_are_exit_2(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("x")
    import yaml

    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump(trainer_dict()))
    for args, option in ((["train", str(cfg), "--run-dir", str(f)], "--run-dir"),
                         (["evaluate", "x.pt", "--out", str(f)], "--out"),
                         (["bench", "x.pt", "--out", str(f)], "--out"),
                         (["export", "x.pt", "--out", str(f)], "--out"),
                         (["promote", "--top", "1", "--epochs", "1", "--out", str(f)], "--out")):
        code, _, err = cli(*args, capsys=capsys)
        assert code == 2 and f"{option} {f}: is a file, not a folder" in err, (args, err)
    assert f.read_text() == "x"
    code, _, err = cli("trials", "--csv", str(tmp_path), capsys=capsys)
    assert code == 2 and "is a folder" in err


def test_an_unknown_device_is_exit_2(tmp_path, capsys):
    import yaml

    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump(trainer_dict()))
    code, _, err = cli("train", str(cfg), "--set", "train.device=xyz", capsys=capsys)
    assert code == 2 and "xyz" in err and "Traceback" not in err, err
    code, _, err = cli("bench", "x.pt", "--device", "xyz", capsys=capsys)
    assert code == 2 and "Traceback" not in err, err


def test_out_of_memory_says_what_to_reduce(tmp_path, capsys, monkeypatch):
    import yaml

    import vitsweep.train.loop as loop

    def oom(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 123456789012 bytes")

    monkeypatch.setattr(loop, "train", oom)
    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump(trainer_dict()))
    code, _, err = cli("train", str(cfg), "--run-dir", str(tmp_path / "r"), capsys=capsys)
    assert code == 2 and "out of memory" in err and "train.batch_size" in err and "Traceback" not in err, err


def test_postgresql_with_nothing_listening_is_exit_2_in_seconds(tmp_path, capsys, port):
    import time

    t0 = time.perf_counter()
    code, out, err = cli("trials", "--storage", f"postgresql://postgres@127.0.0.1:{port}/optuna", capsys=capsys)
    assert code == 2 and "cannot connect to the database" in err and "Traceback" not in err, err
    assert "budget lock" not in err and time.perf_counter() - t0 < 20


def test_help_lists_commands_in_workflow_order_with_an_example_each(capsys):
    code, out, _ = cli("--help", capsys=capsys)
    assert code == 0 and "The workflow, in order" in out and "--install-completion" in out
    listed = [line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == ["run", "submit", "storage-proxy", "trials", "studies", "dashboard", "ui", "report", "best", "stop",
                      "promote", "train", "evaluate", "bench", "export"]
    for command in listed:
        code, out, _ = cli(command, "--help", capsys=capsys)
        assert code == 0 and "Example: vitsweep " + command in " ".join(out.split()), command
    code, out, _ = cli("trials", "--help", capsys=capsys)
    assert "sweep file" not in out  # a reading command has no sweep file
    code, out, _ = cli("ui", "--help", capsys=capsys)
    assert "--host" in out and "every interface" in out and "must be free" in out
    code, out, _ = cli("--version", capsys=capsys)
    assert code == 0 and out.startswith("vitsweep ")


def test_studies_lists_every_study_with_states_best_and_last_activity(tmp_path, capsys):
    import optuna

    url = f"sqlite:///{tmp_path}/optuna.db"
    from vitsweep.sweep.storage import open_storage

    storage = open_storage(url, create=True)
    a = optuna.create_study(study_name="a", storage=storage, direction="maximize")
    a.set_metric_names(["val_acc"])
    a.add_trial(optuna.trial.create_trial(value=0.4567, params={}, distributions={}))
    a.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={}, distributions={}))
    optuna.create_study(study_name="b", storage=storage)
    code, out, err = cli("studies", "--storage", url, capsys=capsys)
    assert code == 0, err
    assert "2 studies" in out and "1 complete, 1 pruned" in out and "45.67%" in out
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert set(rows) == {"a", "b"} and rows["b"].split()[1] == "0"


# ---------------------------------------------------------------------------------------------
# Issue 22: nothing lost, nothing left RUNNING, no traceback, no password, a prompt exit


def _unprivileged(*cmd: str) -> list[str]:
    """``cmd`` run so that file permissions hold: as root, without the capabilities that override
    them (setpriv); as anyone else, as it is."""
    if os.geteuid() != 0:
        return list(cmd)
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: read-only folders cannot be tested")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--", *cmd]


def _finished(spawn, argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:  # noqa: ANN001
    """``argv`` run to its end through the ``spawn`` fixture (torn down whatever happens): its exit
    code, stdout and stderr."""
    proc = spawn(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _vitsweep(spawn, *args: str, cwd: Path, unprivileged: bool = False,  # noqa: ANN001
              timeout: float = 300) -> subprocess.CompletedProcess:
    """``vitsweep ARGS`` as a process (optionally without root's file capabilities), run to its end."""
    cmd = [sys.executable, "-m", "vitsweep", *args]
    return _finished(spawn, _unprivileged(*cmd) if unprivileged else cmd, cwd, timeout)


def _read_only(folder: Path) -> None:
    """Make ``folder`` read-only, and check that it really is for the processes the tests start."""
    folder.chmod(0o555)
    probe = subprocess.run(_unprivileged("touch", str(folder / "probe")), capture_output=True)
    assert probe.returncode != 0, "setpriv did not make the read-only folder unwritable"


def test_train_refuses_a_run_dir_that_holds_a_run(tmp_path, capsys):
    """Item 1: `train --run-dir DIR` over an earlier run would overwrite its checkpoints: exit 2,
    nothing touched, and the message says how to continue it instead."""
    import yaml

    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump(trainer_dict(train={"epochs": 1})))
    run = tmp_path / "run"
    run.mkdir()
    for name in ("best.pt", "last.pt", "config.yaml"):
        (run / name).write_bytes(b"an earlier run's " + name.encode())
    code, out, err = cli("train", str(cfg), "--run-dir", str(run), capsys=capsys)
    assert code == 2 and "already holds a run" in err and f"--resume {run}" in err and "Traceback" not in err, err
    for name in ("best.pt", "last.pt", "config.yaml"):
        assert (run / name).read_bytes() == b"an earlier run's " + name.encode()
    # an empty folder, or a new one, is fine
    code, out, err = cli("train", str(cfg), "--run-dir", str(tmp_path / "new"), capsys=capsys)
    assert code == 0 and (tmp_path / "new" / "best.pt").is_file(), err


@pytest.mark.slow
def test_a_database_server_that_is_down_is_exit_2_for_every_store_and_command(tmp_path, capsys, port, spawn):
    """Item 3: an MLflow store on a PostgreSQL that does not answer is exit 2 (no traceback, no
    minutes of MLflow's retries), in `run` (nothing created) and in `ui`."""
    import yaml

    down = f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep_dict(tmp_path, n_trials=1)))
    code, out, err = cli("run", str(tmp_path / "s.yaml"), "--tracking-uri", down, capsys=capsys)
    assert code == 2 and "cannot connect to the database" in err and "Traceback" not in err, err
    assert not (tmp_path / "optuna.db").exists()
    proc = _vitsweep(spawn, "ui", "--tracking-uri", down, "--port", str(free_port()), cwd=tmp_path, timeout=240)
    assert proc.returncode == 2 and "cannot connect to the database" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_a_password_with_an_at_sign_is_never_shown(tmp_path, capsys, port):
    """Item 5: `user:Hunter2@Secret@host`: masked up to the last @, in vitsweep's messages and in the
    driver's (which takes `Secret@host` for the host name)."""
    import yaml

    from vitsweep.paths import redact

    url = f"postgresql://postgres:Hunter2@Secret@127.0.0.1:{port}/optuna"
    assert redact(url).startswith("postgresql://postgres:***@127.0.0.1:")
    assert redact('host "Secret@127.0.0.1" unknown', url) == 'host "***@127.0.0.1" unknown'
    code, out, err = cli("trials", "--storage", url, capsys=capsys)
    assert code == 2 and "postgres:***@127.0.0.1" in err, err
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep_dict(tmp_path, n_trials=1)))
    code2, out2, err2 = cli("run", str(tmp_path / "s.yaml"), "--tracking-uri", url.replace("optuna", "mlflow"),
                            capsys=capsys)
    code3, out3, err3 = cli("trials", "--storage", url.replace("postgresql://", "postgres://"), capsys=capsys)
    assert code2 == 2 and code3 == 2, (err2, err3)
    for shown in (out + err, out2 + err2, out3 + err3):
        assert "Hunter2" not in shown and "Secret" not in shown, shown


@pytest.mark.parametrize("args, expected", [
    (["trials", "--storage", "postgresql://postgres@127.0.0.1:54x2/optuna"], "the port '54x2' of 127.0.0.1"),
    (["studies", "--storage", "sqlite://storage/x.db"], "sqlite:///storage/x.db"),
    (["run", "SWEEP", "--storage", "sqlite://storage/x.db"], "sqlite:///storage/x.db"),
    (["run", "SWEEP", "--tracking-uri", "sqlite://storage/x.db"], "sqlite:///storage/x.db"),
    (["run", "SWEEP", "--tracking-uri", "postgresql://postgres@127.0.0.1:54x2/mlflow"], "the port '54x2'"),
    (["ui", "--tracking-uri", "sqlite://storage/x.db"], "sqlite:///storage/x.db"),
    (["report", "--tracking-uri", "sqlite://storage/x.db"], "sqlite:///storage/x.db"),
])
def test_malformed_store_urls_are_exit_2_naming_the_value_and_the_fix(args, expected, tmp_path, capsys):
    """Item 6: a non-numeric port, two slashes after sqlite: exit 2 with the right form, no traceback."""
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep_dict(tmp_path, n_trials=1)))
    code, out, err = cli(*[str(tmp_path / "s.yaml") if a == "SWEEP" else a for a in args], capsys=capsys)
    assert code == 2 and expected in err and "Traceback" not in err, (out, err)
    assert not (tmp_path / "optuna.db").exists() and not Path("storage/x.db").exists()


@pytest.mark.slow
def test_a_read_only_storage_folder_is_exit_2_in_run_and_train(tmp_path, spawn):
    """Item 6: a read-only storage/ (the default home of the data cache, the stores and the runs):
    `run` and `train` say which setting cannot be written and how to fix it, with no traceback."""
    import yaml

    from tests.test_data import make_imagefolder

    make_imagefolder(tmp_path / "img", per_class=(12, 4))
    trainer = trainer_dict(data={"source": "imagefolder", "root": str(tmp_path / "img"), "val_size": 6})
    raw = sweep_dict(tmp_path, n_trials=1)
    raw["trainer"] = trainer
    del raw["storage"]["url"], raw["tracking"]["uri"]  # the defaults under storage/
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({**trainer, "data": {**trainer["data"], "source": "synthetic"}}))
    (tmp_path / "storage").mkdir()
    _read_only(tmp_path / "storage")
    try:
        run = _vitsweep(spawn, "run", "s.yaml", cwd=tmp_path, unprivileged=True)  # the MLflow store is checked first
        assert run.returncode == 2 and "storage/mlflow.db cannot be written" in run.stderr, run.stderr
        cache = _vitsweep(spawn, "run", "s.yaml", "--tracking-uri", "none", "--storage", f"sqlite:///{tmp_path}/optuna.db",
                          cwd=tmp_path, unprivileged=True)  # the data cache is written before the Optuna storage
        assert cache.returncode == 2 and "data.cache_dir = storage/cache" in cache.stderr, cache.stderr
        assert "--set data.cache_dir=" in cache.stderr and not (tmp_path / "optuna.db").exists()
        train = _vitsweep(spawn, "train", "t.yaml", cwd=tmp_path, unprivileged=True)
        assert train.returncode == 2 and "storage/runs" in train.stderr and "--run-dir" in train.stderr, train.stderr
        for proc in (run, cache, train):
            assert "Traceback" not in proc.stderr + proc.stdout
    finally:
        (tmp_path / "storage").chmod(0o755)
    assert not any((tmp_path / "storage").iterdir())


@pytest.mark.slow
def test_a_valid_read_only_sqlite_database_is_not_called_something_else(tmp_path, spawn):
    """Item 7: a sweep storage in a folder this user cannot write is a valid database: the message
    says what stops SQLite from reading it (and how to fix that), not "not a SQLite database"."""
    import optuna

    from vitsweep.sweep.storage import open_storage

    ro = tmp_path / "ro"
    ro.mkdir()
    storage = open_storage(f"sqlite:///{ro}/optuna.db", create=True)
    optuna.create_study(study_name="a", storage=storage).add_trial(
        optuna.trial.create_trial(value=0.5, params={}, distributions={}))
    storage.engine.dispose()
    assert not (ro / "optuna.db-wal").exists() and not (ro / "optuna.db-shm").exists()
    _read_only(ro)
    try:
        proc = _vitsweep(spawn, "trials", "--storage", f"sqlite:///{ro}/optuna.db", cwd=tmp_path, unprivileged=True)
    finally:
        ro.chmod(0o755)
    assert proc.returncode == 2 and "not a SQLite database" not in proc.stderr, proc.stderr
    assert "cannot be opened for reading" in proc.stderr and f"make {ro} writable" in proc.stderr, proc.stderr


def test_a_promoted_run_stopped_by_sigterm_says_sigterm(tmp_path):
    """Item 7: the MLflow reason of a promoted run stopped by SIGTERM is SIGTERM's, not Ctrl-C's."""
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    from tests.test_promote import STORAGE, TRACKING, adamw, make_study
    from vitsweep import signals
    from vitsweep.promote.retrain import promote
    from vitsweep.tracking.tags import KIND_RUN

    make_study("term", [(TrialState.COMPLETE, 0.3, adamw(3e-3))])

    def terminated(name, epoch, metrics):
        raise signals.Terminated

    with pytest.raises(signals.Terminated):
        promote(top=1, epochs=3, study="term", storage=STORAGE, tracking_uri=TRACKING, out=lambda s: None,
                on_epoch=terminated)
    client = MlflowClient(TRACKING)
    exp = client.get_experiment_by_name("term")
    (run,) = client.search_runs([exp.experiment_id], filter_string=f"tags.`vitsweep.kind` = '{KIND_RUN}'")
    assert run.info.status == "KILLED"
    assert run.data.tags["vitsweep.reason"].startswith("terminated (SIGTERM)"), run.data.tags["vitsweep.reason"]


def _modules_after(spawn, args: list[str], cwd: Path, probe: str) -> str:  # noqa: ANN001
    """Run ``vitsweep ARGS`` in a process whose last exit handler prints ``probe`` (an expression)."""
    code = ("import atexit, gc, sys\n"
            f"atexit.register(lambda: print('PROBE', {probe}, file=sys.stderr))\n"
            "from vitsweep.cli import main\n"
            f"sys.argv = ['vitsweep', *{args!r}]\n"
            "main()\n")
    proc = _finished(spawn, [sys.executable, "-c", code], cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.split("PROBE ", 1)[1].strip()


@pytest.mark.slow
def test_trials_and_studies_import_neither_torch_nor_mlflow(tmp_path, spawn):
    """Item 9: the read-only tables load neither torch, torchvision, MLflow nor pandas (seconds of
    imports to print a table)."""
    import optuna

    from vitsweep.sweep.storage import open_storage

    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="a", storage=open_storage(url, create=True), direction="maximize")
    study.set_metric_names(["val_acc"])
    study.add_trial(optuna.trial.create_trial(value=0.25, params={"lr": 1e-3},
                                              distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1)}))
    heavy = "sorted(m for m in ('torch', 'torchvision', 'mlflow', 'pandas') if m in sys.modules)"
    for args in (["trials", "--storage", url, "--csv", str(tmp_path / "t.csv")], ["studies", "--storage", url]):
        assert _modules_after(spawn, args, tmp_path, heavy) == "[]", args
    assert (tmp_path / "t.csv").read_text().splitlines()[0] == "number,state,value,epochs,duration_s,lr,reason,mlflow_run_id"


@pytest.mark.slow
def test_a_finished_command_leaves_no_heap_for_the_shutdown_to_walk(tmp_path, spawn):
    """Item 8: after its last line, a command that loaded torch and MLflow used to spend seconds (a
    minute under load) in the interpreter's shutdown, garbage-collecting some 650,000 objects
    several times. Now the heap is frozen once every exit handler has run: the collections at
    shutdown have (almost) nothing left to walk."""
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep_dict(tmp_path, n_trials=1, pruner={"name": "none"})))
    left = _modules_after(spawn, ["run", str(tmp_path / "s.yaml")], tmp_path, "len(gc.get_objects()), gc.get_freeze_count()")
    walked, frozen = (int(n) for n in left.split())
    assert frozen > 100_000 and walked < 10_000, (walked, frozen)
