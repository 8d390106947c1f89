"""A sweep on a constant-lr trunk (wsd): each rung reports a cooled-down value, complete trials keep
their trunk, promotion continues it (and can be killed and resumed), the champion is a runnable
file, and promotion and the report say whether the sweep's order held. Also: the stored sweep is
the sweep (round trip), so promoted runs land in the trials' own experiment."""

from __future__ import annotations

import copy
import glob
from html import unescape
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from tests.helpers import REPO, TRAINER, cli, sweep_dict
from vitsweep.errors import ConfigError
from vitsweep.promote.retrain import promote
from vitsweep.report.page import write_report
from vitsweep.stats import kendall, order_verdict, spearman
from vitsweep.sweep.runner import run_sweep
from vitsweep.sweep.spec import build_sweep, load_sweep
from vitsweep.sweep.storage import load_study
from vitsweep.sweep.study import SWEEP_ATTR, sweep_of
from vitsweep.tracking.tags import RUN_DIR_ATTR
from vitsweep.train.config import load_config
from vitsweep.train.loop import train

WSD_TRAINER = copy.deepcopy(TRAINER)
WSD_TRAINER["schedule"] = {"name": "wsd", "warmup_epochs": 0.5, "horizon": 6}
WSD_TRAINER["train"] = {**WSD_TRAINER["train"], "epochs": 2}


def wsd_sweep(root: Path, **over) -> dict:
    raw = sweep_dict(root, name="w", n_trials=4, **over)
    raw["trainer"] = copy.deepcopy(WSD_TRAINER)
    raw["trials"] = {"dir": str(root / "trials")}
    return raw


@pytest.fixture(scope="module")
def wsd_swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("wsd")
    run_sweep(build_sweep(wsd_sweep(root)), out=lambda _: None)
    return root


def test_a_wsd_sweep_branches_at_every_rung_and_the_end_and_needs_a_horizon(tmp_path):
    sweep = build_sweep(wsd_sweep(tmp_path, pruner={"name": "hyperband", "min_resource": 1, "reduction_factor": 2}))
    assert sweep.base.schedule.branches == (1, 2)  # Hyperband's rung at epoch 1, and the last epoch
    raw = wsd_sweep(tmp_path)
    del raw["trainer"]["schedule"]["horizon"]
    with pytest.raises(ConfigError, match="trainer.schedule.horizon = None: a wsd sweep's trials are the start"):
        build_sweep(raw)


def test_trials_report_the_cooled_down_value_and_complete_ones_keep_their_trunk(wsd_swept):
    study = load_study("w", f"sqlite:///{wsd_swept}/optuna.db")
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete
    for t in complete:
        folder = Path(t.user_attrs[RUN_DIR_ATTR])
        assert (folder / "last.pt").is_file() and not (folder / "best.pt").exists()  # the trunk, nothing more
    for t in trials:
        if t.state != optuna.trial.TrialState.COMPLETE:
            assert not (Path(wsd_swept) / "trials" / "w" / str(t.number)).exists()
    # the reported value is the branch's: replay the best trial's trunk and compare
    best = max(complete, key=lambda t: t.value)
    from vitsweep.sweep.study import trial_config

    replay = train(trial_config(sweep_of(study), best))
    assert best.intermediate_values == {h["epoch"]: h["cooldown_val_acc"] for h in replay.history}
    assert best.value == max(h["cooldown_val_acc"] for h in replay.history)


def test_promote_continues_the_trunk_records_it_and_resumes_after_a_kill(wsd_swept, monkeypatch):
    monkeypatch.chdir(wsd_swept)
    storage, tracking = f"sqlite:///{wsd_swept}/optuna.db", f"sqlite:///{wsd_swept}/mlflow.db"
    best = load_study("w", storage).best_trial
    lines: list[str] = []

    def killed_at_4(name: str, epoch: int, m: dict) -> None:
        if epoch == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        promote(top=1, epochs=6, study="w", storage=storage, tracking_uri=tracking, out=lines.append,
                on_epoch=killed_at_4)
    assert any(f"continuing trial {best.number}'s trunk from epoch 2" in line for line in lines)
    r = promote(top=1, epochs=6, study="w", storage=storage, tracking_uri=tracking, out=lines.append)
    (run,) = r.runs
    assert run.continued_from == 2 and run.epochs_run == 6 and [h["epoch"] for h in run.history] == [1, 2, 3, 4, 5, 6]
    assert r.leaderboard.iloc[0]["continued_from"] == "2"
    # continuing the trunk is training the promoted config in one go
    from vitsweep.train.config import build_config

    whole = train(build_config(run.config, {"train.test": False}))
    assert [h["val_acc"] for h in run.history] == [h["val_acc"] for h in whole.history]
    scratch = promote(top=1, epochs=6, study="w", storage=storage, tracking_uri=tracking, out=lines.append,
                      from_scratch=True, out_dir="storage/scratch")
    assert scratch.runs[0].continued_from == 0


def test_the_champion_is_a_trainer_config_file_that_trains(wsd_swept, monkeypatch, capsys):
    monkeypatch.chdir(wsd_swept)
    r = promote(top=1, epochs=6, study="w", storage=f"sqlite:///{wsd_swept}/optuna.db", tracking_uri="none",
                out=lambda _: None, out_dir="storage/champ")
    path = r.files["champion"]
    assert path == Path("storage/champ/w/champion.yaml")
    assert load_config(path).to_dict() == r.runs[0].config  # what ran is what the file says
    assert "vitsweep train storage/champ/w/champion.yaml" in path.read_text()
    code, out, err = cli("train", str(path), "--set", "train.epochs=1", "--run-dir", "storage/again", capsys=capsys)
    assert code == 0, err


def test_promotion_and_report_say_whether_the_sweeps_order_held(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = sweep_dict(tmp_path, name="o", n_trials=3, pruner={"name": "none"})
    run_sweep(build_sweep(raw), out=lambda _: None)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    lines: list[str] = []
    promote(top=2, epochs=4, study="o", storage=storage, tracking_uri="none", out=lines.append)
    verdict = [line for line in lines if line.startswith("the sweep's order")]
    assert len(verdict) == 1 and "over 2 configs" in verdict[0]  # held, changed, or all equal on tiny data
    page = write_report(study="o", storage=storage, tracking_uri="none")
    html = unescape(Path(page.path).read_text())
    assert verdict[0].split(" (")[0] in html and "id='fidelity'" in html.replace('"', "'")  # the scatter's section


def test_rank_agreement():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert kendall([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert order_verdict([0.3, 0.2, 0.1], [0.9, 0.8, 0.7]).startswith("the sweep's order held: Spearman 1.00 over 3")
    assert order_verdict([0.3, 0.2, 0.1], [0.7, 0.8, 0.9]).startswith("the sweep's order changed")
    assert "minimize" not in order_verdict([0.1, 0.2], [0.9, 0.8], maximize=False)
    assert order_verdict([0.1, 0.2], [0.9, 0.8], maximize=False).startswith("the sweep's order held")


@pytest.mark.parametrize("path", sorted(glob.glob(str(REPO / "sweeps" / "*.yaml"))))
def test_every_shipped_sweep_file_round_trips_through_what_a_study_stores(path):
    try:
        sweep = load_sweep(path)
    except ConfigError as e:
        assert "unknown key 'data'" in str(e)  # a trainer config (cpu_recipe.yaml, train_smoke.yaml), not a sweep
        return
    assert build_sweep(sweep.to_dict(), source=sweep.source) == sweep


def test_the_stored_sweep_keeps_the_experiment_and_promoted_runs_land_beside_the_trials(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = sweep_dict(tmp_path, name="e", n_trials=2, tracking={"experiment": "shared-exp"},
                     storage={"url": f"sqlite:///{tmp_path}/optuna.db"})
    raw["tracking"]["uri"] = f"sqlite:///{tmp_path}/mlflow.db"
    run_sweep(build_sweep(raw), out=lambda _: None)
    study = load_study("e", f"sqlite:///{tmp_path}/optuna.db")
    assert study.user_attrs[SWEEP_ATTR]["tracking"]["experiment"] == "shared-exp"
    assert sweep_of(study).tracking.experiment == "shared-exp"
    promote(top=1, epochs=4, study="e", storage=f"sqlite:///{tmp_path}/optuna.db",
            tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", out=lambda _: None)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_experiment_by_name("e") is None  # nothing went to an experiment named after the study
    exp = client.get_experiment_by_name("shared-exp")
    kinds = {r.data.tags.get("vitsweep.kind") for r in client.search_runs([exp.experiment_id])}
    assert {"trial", "promoted"} <= kinds


def test_a_password_in_a_store_url_is_not_stored_with_the_study(tmp_path):
    from vitsweep.sweep.study import stored_sweep

    raw = sweep_dict(tmp_path, name="p", storage={"url": "postgresql://u:secret@127.0.0.1:1/db"})
    raw["tracking"]["uri"] = "postgresql://u:hush@127.0.0.1:1/ml"
    stored = str(stored_sweep(build_sweep(raw)))
    assert "secret" not in stored and "hush" not in stored
