"""Issue 22, items 10-15: what a first user looks for after a sweep (the best config as a file, the
champion by name, the next step, managing studies, percent and addresses where a person reads them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from tests.helpers import cli
from tests.test_promote import STORAGE, TRACKING, adamw, make_study


@pytest.fixture
def promoted(capsys):
    """A study of 3 trials, trial 1 the best, promoted (top 1, 3 epochs) with MLflow: its champion registered."""
    C = TrialState.COMPLETE
    make_study("champ", [(C, 0.3, adamw(3e-3)), (C, 0.4, adamw(2e-3)), (TrialState.PRUNED, 0.1, adamw(1e-3))])
    code, out, err = cli("promote", "--study", "champ", "--top", "1", "--epochs", "3", "--storage", STORAGE,
                         "--tracking-uri", TRACKING, capsys=capsys)
    assert code == 0, err
    return out, err


def test_best_writes_the_best_trials_config_that_train_runs(capsys):
    C = TrialState.COMPLETE
    make_study("b", [(C, 0.3, adamw(3e-3)), (C, 0.4, adamw(2e-3)), (TrialState.PRUNED, 0.9, adamw(1e-3))])
    code, out, err = cli("best", "--study", "b", "--storage", STORAGE, "-o", "best.yaml", capsys=capsys)
    assert code == 0, err
    assert "wrote best.yaml: the best trial 1 of study b, val_acc 40.00%" in err
    assert err.strip().splitlines()[-1] == "next: vitsweep train best.yaml"
    cfg = yaml.safe_load(Path("best.yaml").read_text())
    assert cfg["optimizer"]["name"] == "adamw" and cfg["optimizer"]["lr"] == pytest.approx(2e-3)
    assert cfg["train"]["epochs"] == 2 and cfg["data"]["source"] == "synthetic"  # the whole trainer config
    code, out, err = cli("best", "--study", "b", "--storage", STORAGE, capsys=capsys)  # no -o: printed
    assert code == 0 and yaml.safe_load(out) == cfg
    code, out, err = cli("train", "best.yaml", "--run-dir", "again", capsys=capsys)
    assert code == 0, err
    assert Path("again/best.pt").is_file() and "next: vitsweep evaluate again/best.pt" in err
    # mistakes: exit 2, nothing written
    make_study("none", [(TrialState.PRUNED, 0.2, adamw(3e-3))])
    code, _, err = cli("best", "--study", "none", "--storage", STORAGE, "-o", "n.yaml", capsys=capsys)
    assert code == 2 and "no completed trial" in err and not Path("n.yaml").exists()
    code, _, err = cli("best", "--study", "b", "--storage", STORAGE, "-o", "best.txt", capsys=capsys)
    assert code == 2 and ".yaml" in err and not Path("best.txt").exists()


def test_the_champion_by_name_for_evaluate_bench_and_export(promoted, capsys):
    out, err = promoted
    line = next(line for line in out.splitlines() if line.startswith("champion: MLflow run "))
    run_id = line.split()[3].rstrip(",")
    checkpoint = Path(line.split("checkpoint ")[1].split(";")[0])
    assert checkpoint.is_file() and checkpoint.name == "best.pt"
    assert "models:/vitsweep-champ@champion" in line
    assert err.strip().splitlines()[-1].startswith("next: vitsweep report --study champ")

    code, out, err = cli("evaluate", "models:/vitsweep-champ@champion", "--tracking-uri", TRACKING, capsys=capsys)
    assert code == 0, err
    assert "next: vitsweep bench models:/vitsweep-champ@champion" in err.strip().splitlines()[-1]
    assert Path("storage/eval/champ-trial1-seed0").is_dir()  # named after the run, not its id
    code, out, err = cli("bench", "--champion", "--study", "champ", "--batch-sizes", "1", "--min-time", "0.01",
                         "--tracking-uri", TRACKING, capsys=capsys)
    assert code == 0, err
    assert Path("storage/bench/champ-trial1-seed0/bench.json").is_file()
    code, out, err = cli("export", "--champion", "--format", "torchscript", "--tracking-uri", TRACKING, capsys=capsys)
    assert code == 0, err
    assert Path("storage/export/champ-trial1-seed0").is_dir() and err.strip().splitlines()[-1].startswith("next: ")
    from vitsweep.trained.inference import resolve_checkpoint

    assert resolve_checkpoint("models:/vitsweep-champ/1", TRACKING).parent.name == run_id
    # mistakes: exit 2 with what to do
    for args, expected in [(("evaluate", "models:/vitsweep-nope@champion"), "registered models: vitsweep-champ"),
                           (("evaluate", "models:/vitsweep-champ"), "models:/NAME@ALIAS"),
                           (("evaluate",), "--champion"),
                           (("evaluate", "x.pt", "--champion"), "not both")]:
        code, _, err = cli(*args, "--tracking-uri", TRACKING, capsys=capsys)
        assert code == 2 and expected in err and "Traceback" not in err, (args, err)


def test_every_command_ends_with_the_next_step(capsys):
    C = TrialState.COMPLETE
    make_study("nx", [(C, 0.3, adamw(3e-3))])
    for args, expected in [(("trials", "--study", "nx"), "next: vitsweep report --study nx"),
                           (("studies",), "next: vitsweep trials --study nx --sort value"),
                           (("report", "--study", "nx", "--tracking-uri", TRACKING),
                            "next: vitsweep promote --study nx --top 3 --epochs 30")]:
        code, out, err = cli(*args, "--storage", STORAGE, capsys=capsys)
        assert code == 0, err
        assert err.strip().splitlines()[-1].startswith(expected), (args, err)


def test_stop_sets_the_flag_every_worker_obeys(tmp_path, capsys):
    from tests.helpers import PacedTrain, sweep_dict
    from vitsweep.sweep.runner import run_sweep
    from vitsweep.sweep.spec import build_sweep
    from vitsweep.sweep.storage import load_study

    raw = sweep_dict(tmp_path, name="halt", n_trials=1, pruner={"name": "none"}, tracking={"uri": "none"})
    run_sweep(build_sweep(raw), out=lambda _: None, train_fn=PacedTrain(0.0))
    url = raw["storage"]["url"]
    code, out, err = cli("stop", "halt", "--storage", url, capsys=capsys)
    assert code == 0 and "every worker stops after its current trial" in out, err
    lines: list[str] = []
    raw["study"]["n_trials"] = 4
    run_sweep(build_sweep(raw), out=lines.append, train_fn=PacedTrain(0.0))
    assert len(load_study("halt", url).trials) == 1  # no new trial
    assert any("stopped by hand (vitsweep stop" in line for line in lines), lines
    code, out, _ = cli("stop", "halt", "--storage", url, capsys=capsys)
    assert code == 0 and "already stopped" in out
    code, _, err = cli("stop", "nope", "--storage", url, capsys=capsys)
    assert code == 2 and "no study named 'nope'" in err


def test_a_finished_study_says_so_and_more_runs_exactly_n_more(tmp_path, capsys):
    from tests.helpers import PacedTrain, sweep_dict
    from vitsweep.sweep.runner import run_sweep
    from vitsweep.sweep.spec import build_sweep
    from vitsweep.sweep.storage import load_study

    raw = sweep_dict(tmp_path, name="fin", n_trials=2, pruner={"name": "none"}, tracking={"uri": "none"})
    run_sweep(build_sweep(raw), out=lambda _: None, train_fn=PacedTrain(0.0))
    Path("fin.yaml").write_text(yaml.safe_dump(raw))
    code, out, err = cli("run", "fin.yaml", capsys=capsys)
    assert code == 0, err
    assert "study fin is finished: 2/2 trials done, none to run. For more: vitsweep run fin.yaml --more N" in out
    assert "worker 0" not in out and len(load_study("fin", raw["storage"]["url"]).trials) == 2  # nothing started
    lines: list[str] = []
    run_sweep(build_sweep(raw), out=lines.append, train_fn=PacedTrain(0.0), more=3)
    assert len(load_study("fin", raw["storage"]["url"]).trials) == 5
    assert any("2/5 trials done" in line for line in lines), lines
    for args, message in [(("--more", "0"), "--more 0: must be >= 1"),
                          (("--more", "2", "--n-trials", "9"), "--more and --n-trials: give one")]:
        code, _, err = cli("run", "fin.yaml", *args, capsys=capsys)
        assert code == 2 and message in err, err


def test_studies_delete_shows_what_goes_asks_then_removes_it_all(promoted, capsys):
    from mlflow import MlflowClient

    from vitsweep.errors import VitsweepError
    from vitsweep.sweep.storage import load_study

    assert Path("storage/promote/champ").is_dir()
    code, _, err = cli("studies", "--storage", "sqlite:///elsewhere.db", "delete", "champ", "--yes", capsys=capsys)
    assert code == 2 and "elsewhere.db" in err, err  # the group's --storage is the one delete reads
    code, _, err = cli("studies", "delete", "champ", "--storage", STORAGE, "--mlflow", "--tracking-uri", TRACKING,
                       capsys=capsys)  # not on a terminal, no --yes: nothing deleted
    assert code == 2 and "nothing was deleted; add --yes" in err, err
    assert "study champ in sqlite:///storage/optuna.db: 3 trial(s)" in err and "storage/promote/champ" in err
    assert load_study("champ", STORAGE) and Path("storage/promote/champ").is_dir()
    client = MlflowClient(TRACKING)
    ids = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(ids, "tags.`optuna.study_name` = 'champ'")

    code, _, err = cli("studies", "delete", "champ", "--storage", STORAGE, "--mlflow", "--tracking-uri", TRACKING,
                       "--yes", capsys=capsys)
    assert code == 0 and "deleted study champ" in err, err
    with pytest.raises(VitsweepError, match="no study named 'champ'"):
        load_study("champ", STORAGE)
    assert not Path("storage/promote/champ").exists()
    assert not client.search_runs(ids, "tags.`optuna.study_name` = 'champ'")  # in MLflow's trash
    assert not client.search_registered_models("name = 'vitsweep-champ'")
    code, _, err = cli("studies", "delete", "champ", "--storage", STORAGE, "--yes", capsys=capsys)
    assert code == 2 and "no study named 'champ'" in err
