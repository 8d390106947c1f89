"""What a user can get wrong on the command line ends in `error: ...` and exit 2, with nothing
created or changed: binary files, files where folders go (and back), databases that are not
Optuna storages, unwritable folders, unknown devices, out of memory (issue 13, items 6 and 11)."""

from __future__ import annotations

import os
import sqlite3

import pytest

from tests.helpers import cli, sweep_dict, trainer_dict


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
