"""``vitsweep promote``: selection, early stopping, resume after an interruption, MLflow records.

Studies are made directly in Optuna (``create_trial``) with the sweep stored the way ``vitsweep run``
stores it, so no sweep has to run; the promoted runs train a 1-block ViT on synthetic data.
"""

from __future__ import annotations

import csv
import copy
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from tests import helpers
from tests.helpers import cli, trainer_dict
from vitsweep.errors import VitsweepError
from vitsweep.train.config import load_config
from vitsweep.promote.retrain import promote
from vitsweep.promote.select import select_trials
from vitsweep.sweep.spec import build_sweep
from vitsweep.sweep.storage import load_study, open_storage
from vitsweep.sweep.study import record_sweep
from vitsweep.tracking.runs import Tracker
from vitsweep.tracking.tags import KIND_PARENT, KIND_RUN, RUN_ATTR, TAG_SOURCE

TRAINER = trainer_dict(data={"synthetic_train": 256, "synthetic_test": 60, "val_size": 64}, train={"epochs": 2})
SPACE = {**helpers.SPACE, "lr": {**helpers.SPACE["lr"], "low": 1e-9}}  # lr 1e-9: a trial that never learns
DISTS = {"optimizer": CategoricalDistribution(["adan", "adamw"]), "lr": FloatDistribution(1e-9, 1e-2, log=True),
         "b3": FloatDistribution(0.005, 0.03, step=0.005)}
STORAGE, TRACKING = "sqlite:///storage/optuna.db", "sqlite:///storage/mlflow.db"


def make_study(name: str, trials: list[tuple[TrialState, float | None, dict[str, Any]]]) -> optuna.Study:
    """A study as ``vitsweep run`` leaves it, with source trial runs in MLflow (in the cwd's storage/)."""
    raw = {"study": {"name": name, "n_trials": len(trials) or 1}, "trainer": copy.deepcopy(TRAINER),
           "space": copy.deepcopy(SPACE)}
    sweep = build_sweep(raw, source="tests")
    study = optuna.create_study(study_name=name, storage=open_storage(STORAGE, create=True), direction="maximize")
    record_sweep(study, sweep)
    tracker = Tracker(TRACKING, name, "storage/mlartifacts")
    for number, (state, value, params) in enumerate(trials):
        rid = tracker.client.create_run(tracker.experiment_id, run_name=f"{name}-trial-{number}", tags={
            "vitsweep.kind": "trial", "optuna.study_name": name, "optuna.trial_number": str(number)}).info.run_id
        inter = {1: value} if state == TrialState.PRUNED and value is not None else {}
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value if state == TrialState.COMPLETE else None, params=params,
            distributions={k: DISTS[k] for k in params}, user_attrs={RUN_ATTR: rid}, intermediate_values=inter))
    return study


def adamw(lr: float, **extra: Any) -> dict[str, Any]:
    return {"optimizer": "adamw", "lr": lr, **extra}


# ---------------------------------------------------------------------------------------------
# Selection


def test_selection_ties_duplicates_pruned_and_failed():
    C, P, F = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL
    make_study("sel", [
        (C, 0.5, adamw(1e-3)),               # 0
        (P, 0.9, adamw(5e-3)),               # 1 pruned (its last report was high: still skipped)
        (C, 0.7, adamw(2e-3)),               # 2 best
        (C, 0.7, adamw(2e-3)),               # 3 same config and value as 2: a duplicate
        (C, 0.5, adamw(3e-3)),               # 4 ties with 0: trial 0 ranks first
        (F, None, adamw(4e-3)),              # 5 failed
        (C, 0.6, adamw(1e-3, b3=0.01)),      # 6 b3 is inactive for adamw: same trainer config as 0
    ])
    study = load_study("sel", STORAGE)
    sel = select_trials(study, 3)
    assert [c.number for c in sel.picked] == [2, 6, 4]  # 6 (0.6) outranks 0 (0.5), its duplicate
    assert [c.rank for c in sel.picked] == [1, 2, 3]
    text = "\n".join(sel.lines)
    assert "skipped trial 1: pruned" in text and "skipped trial 5: failed" in text
    assert "skipped trial 3" in text and "same trainer config as trial 2" in text
    assert "skipped trial 0" in text and "same trainer config as trial 6" in text
    picked_4 = next(line for line in sel.lines if line.startswith("picked trial 4"))
    assert "rank 3" in picked_4

    sel2 = select_trials(study, 2)
    assert [c.number for c in sel2.picked] == [2, 6]
    assert any(line.startswith("not picked: trial 4") for line in sel2.lines)
    with pytest.raises(VitsweepError, match=r"--top 4: study sel has only 3 completed trial\(s\) with distinct"):
        select_trials(study, 4)


def test_a_long_selection_is_a_few_terminal_lines_and_whole_in_the_note():
    C, P = TrialState.COMPLETE, TrialState.PRUNED
    make_study("long", [(C, 0.2 + i / 100, adamw(1e-4 * (i + 1))) for i in range(30)]  # 0-29: 29 best
               + [(P, 0.1, adamw(5e-3 + i * 1e-4)) for i in range(10)])  # 30-39 pruned
    sel = select_trials(load_study("long", STORAGE), 2)
    term = sel.terminal_lines()
    assert term[0].startswith("selection from study long") and term[1].startswith("picked trial 29")
    assert term[2].startswith("picked trial 28")
    assert "skipped 10 pruned trial(s): 30, 31, 32, 33, 34, 35, 36, 37, 38, 39" in term
    assert [line.split(" (")[0] for line in term if line.startswith("not picked: trial")] == \
        ["not picked: trial 27", "not picked: trial 26", "not picked: trial 25"]
    assert term[-1] == "not picked: 25 more trial(s) ranked lower (all listed in the promotion run's MLflow note)"
    assert len(term) == 8
    assert sum(line.startswith("not picked: trial") for line in sel.lines) == 28  # the note has every trial


def test_ties_broken_by_trial_number():
    C = TrialState.COMPLETE
    make_study("ties", [(C, 0.5, adamw(3e-3)), (C, 0.5, adamw(1e-3)), (C, 0.5, adamw(2e-3))])
    sel = select_trials(load_study("ties", STORAGE), 2)
    assert [c.number for c in sel.picked] == [0, 1]
    assert "tied with trial(s) 1, 2" in sel.lines[1]


def promote_cli(capsys, *args: str) -> tuple[int, str, str]:
    return cli("promote", *args, "--storage", STORAGE, capsys=capsys)


@pytest.fixture
def nothing_left_behind():
    yield
    assert not Path("storage/promote").exists()  # bad input leaves nothing behind


def test_missing_storage_exits_2(capsys, nothing_left_behind):
    code, _, err = promote_cli(capsys, "--top", "1", "--epochs", "2")
    assert code == 2 and "no sweep storage" in err


def test_no_completed_trials_exits_2(capsys, nothing_left_behind):
    make_study("only_pruned", [(TrialState.PRUNED, 0.3, adamw(1e-3))])
    code, _, err = promote_cli(capsys, "--study", "only_pruned", "--top", "1", "--epochs", "2")
    assert code == 2 and "no completed trials (1 pruned)" in err


@pytest.mark.parametrize("args, expected", [
    (("--study", "two", "--top", "3", "--epochs", "2", "--tracking-uri", "none"),
     ["--top 3: study two has only 2 completed", "use --top 2"]),
    (("--study", "nope", "--top", "1", "--epochs", "2"), ["no study named 'nope'", "two"]),
    (("--study", "two", "--top", "1", "--epochs", "0"), ["--epochs 0"]),
])
def test_bad_options_exit_2(args, expected, capsys, nothing_left_behind):
    make_study("two", [(TrialState.COMPLETE, 0.3, adamw(1e-3)), (TrialState.COMPLETE, 0.4, adamw(2e-3))])
    code, _, err = promote_cli(capsys, *args)
    assert code == 2 and all(e in err for e in expected), err


def test_without_study_the_latest_is_used_or_asked_for(capsys, nothing_left_behind):
    C = TrialState.COMPLETE
    make_study("only_pruned", [(TrialState.PRUNED, 0.3, adamw(1e-3))])
    make_study("two", [(C, 0.3, adamw(1e-3)), (C, 0.4, adamw(2e-3))])
    # Without --study: the newest study ("two") has trials started last, so it is the latest...
    code, out, err = promote_cli(capsys, "--top", "3", "--epochs", "2")
    assert code == 2 and "study two (the latest" in out
    # ...until a newer study with no trials appears: then no study is clearly the latest.
    optuna.create_study(study_name="empty", storage=STORAGE)
    code, _, err = promote_cli(capsys, "--top", "1", "--epochs", "2")
    assert code == 2 and "none is clearly the latest; choose one with --study" in err


# ---------------------------------------------------------------------------------------------
# Training


def test_early_stopping_ends_runs_before_the_limit():
    # lr so small that no epoch gains min_delta (50 points) over the first: patience 2 stops at epoch 3.
    make_study("es", [(TrialState.COMPLETE, 0.2, adamw(1e-9))])
    lines: list[str] = []
    r = promote(top=1, epochs=20, patience=2, min_delta=0.5, study="es", storage=STORAGE, tracking_uri="none",
                out=lines.append)
    (run,) = r.runs
    assert run.stop_reason == "early_stopped" and run.epochs_run == 3 < 20
    assert run.test_acc is not None and len(run.confusion) == 10 and sum(map(sum, run.confusion)) == 60
    assert r.leaderboard.iloc[0]["stop_reason"] == "early_stopped" and r.leaderboard.iloc[0]["epochs_run"] == "3"
    run_dir = Path("storage/promote/es/trial0-seed0")
    for name in ("best.pt", "last.pt", "result.json", "confusion_matrix.csv"):
        assert (run_dir / name).is_file(), name
    assert any("early_stopped after 3/20 epochs" in line for line in lines)
    assert r.parent_run_id is None  # --tracking-uri none: no MLflow at all


def test_seeds_repeat_each_config():
    make_study("seeds", [(TrialState.COMPLETE, 0.2, adamw(3e-3))])
    r = promote(top=1, epochs=1, seeds=2, study="seeds", storage=STORAGE, tracking_uri="none", out=lambda s: None)
    assert [(x.trial, x.seed) for x in r.runs] == [(0, 0), (0, 1)]
    assert Path("storage/promote/seeds/trial0-seed1/result.json").is_file()
    row = r.leaderboard.iloc[0]
    accs = [x.test_acc for x in r.runs]
    assert row["seeds"] == 2 and row["test_acc_mean"] == pytest.approx(sum(accs) / 2)
    assert row["test_acc_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)


def test_resume_after_interrupt_and_mlflow_records(capsys):
    C = TrialState.COMPLETE
    make_study("res", [(C, 0.3, adamw(3e-3)), (C, 0.4, adamw(2e-3)), (TrialState.PRUNED, 0.5, adamw(1e-3))])
    source = {t.number: t.user_attrs[RUN_ATTR] for t in load_study("res", STORAGE).trials}

    def kill_second(name: str, epoch: int, m: dict[str, float]) -> None:
        if name == "trial0-seed0" and epoch == 2:  # trial 1 (rank 1) already finished
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        promote(top=2, epochs=3, study="res", storage=STORAGE, tracking_uri=TRACKING, on_epoch=kill_second,
                out=lambda s: None)
    first = Path("storage/promote/res/trial1-seed0/result.json")
    before = first.read_text()
    client = MlflowClient(TRACKING)
    exp = client.get_experiment_by_name("res")

    def runs(kind: str) -> list:
        return client.search_runs([exp.experiment_id], filter_string=f"tags.`vitsweep.kind` = '{kind}'")

    (killed_parent,) = runs(KIND_PARENT)
    assert killed_parent.info.status == "KILLED"
    status = {r.data.tags["optuna.trial_number"]: r.info.status for r in runs(KIND_RUN)}
    assert status == {"1": "FINISHED", "0": "KILLED"}  # never left RUNNING

    # The same command again (through the CLI): trial 1 is not redone, trial 0 continues at epoch 3.
    capsys.readouterr()
    code, out, err = cli("promote", "--study", "res", "--top", "2", "--epochs", "3", "--storage", STORAGE,
                         "--tracking-uri", TRACKING, capsys=capsys)
    assert code == 0, err
    assert "already finished" in out and "not retrained" in out and "resuming" in out
    assert "Created version" not in err and "already exists" not in err  # MLflow's registry chatter: not shown
    assert "registered model vitsweep-res: version" in out  # vitsweep says it once, itself
    assert "epoch 3/3" in out and "epoch 1/3" not in out  # only the missing epoch was trained
    assert first.read_text() == before
    assert "1 run(s) trained, 1 already finished" in out

    parents = sorted(runs(KIND_PARENT), key=lambda r: r.info.start_time)
    assert [p.info.status for p in parents] == ["KILLED", "FINISHED"]
    parent = parents[-1]
    nested = {int(r.data.tags["optuna.trial_number"]): r for r in runs(KIND_RUN)}
    assert set(nested) == {0, 1}  # reused, no new runs
    board = list(csv.DictReader(Path("storage/promote/res/runs.csv").open()))
    lb = list(csv.DictReader(Path("storage/promote/res/leaderboard.csv").open()))
    assert len(board) == 2 and len(lb) == 2
    for number, run in nested.items():
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags[TAG_SOURCE] == source[number] and tags["optuna.study_name"] == "res"
        assert tags["vitsweep.seed"] == "0" and tags["vitsweep.stop_reason"] == "completed"
        assert run.data.params["train.epochs"] == "3" and run.data.params["train.test"] == "True"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == [1, 2, 3]  # per-epoch, no epoch twice after the resume
        arts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
        arts |= {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
        assert {"checkpoint/best.pt", "evaluation/confusion_matrix.csv", "evaluation/confusion_matrix.png"} <= arts
        (row,) = [b for b in board if int(b["trial"]) == number]
        assert row["mlflow_run_id"] == run.info.run_id
        # the CSV files: accuracies in percent, in columns that say so (MLflow: fractions, and *_pct)
        assert float(row["test_acc_pct"]) == pytest.approx(100 * run.data.metrics["test_acc"], abs=1e-4)
        assert float(row["best_val_acc_pct"]) == pytest.approx(100 * run.data.metrics["best_val_acc"], abs=1e-4)
        assert int(row["epochs_run"]) == run.data.metrics["epochs_run"] == 3
        (lrow,) = [b for b in lb if int(b["trial"]) == number]
        assert float(lrow["test_acc_mean_pct"]) == pytest.approx(run.data.metrics["test_acc_pct"], abs=1e-4)
        assert lrow["mlflow_run_ids"] == run.info.run_id
        versions = client.search_model_versions(f"run_id = '{run.info.run_id}'")
        assert len(versions) == 1 and versions[0].name == "vitsweep-res"
    champion = client.get_model_version_by_alias("vitsweep-res", "champion")
    assert champion.run_id == lb[0]["mlflow_run_ids"]
    assert Path("storage/promote/res/val_curves.html").read_text().count("<script") >= 1

    # A promoted run works with `vitsweep evaluate RUN_ID`.
    from vitsweep.trained.inference import resolve_checkpoint

    assert resolve_checkpoint(nested[0].info.run_id, TRACKING, Path("dl")).is_file()

    # Once more: nothing to train, still no new nested run.
    code, out, _ = cli("promote", "--study", "res", "--top", "2", "--epochs", "3", "--storage", STORAGE,
                       "--tracking-uri", TRACKING, capsys=capsys)
    assert code == 0 and "0 run(s) trained, 2 already finished" in out
    assert len(runs(KIND_RUN)) == 2 and len(runs(KIND_PARENT)) == 3
    # Another length would need new runs: the folders refuse it instead of mixing configs.
    code, _, err = cli("promote", "--study", "res", "--top", "2", "--epochs", "5", "--storage", STORAGE,
                       "--tracking-uri", TRACKING, capsys=capsys)
    assert code == 2 and "train.epochs: 3 -> 5" in err


def test_set_overrides_every_promoted_run_and_a_bad_key_exits_2_before_anything(capsys):
    make_study("sub", [(TrialState.COMPLETE, 0.2, adamw(3e-3))])
    r = promote(top=1, epochs=1, study="sub", storage=STORAGE, tracking_uri="none", out=lambda s: None,
                overrides={"data.val_size": 32, "train.batch_size": 32})
    (run,) = r.runs
    cfg = load_config(Path(run.run_dir) / "config.yaml")
    assert cfg.data.val_size == 32 and cfg.train.batch_size == 32 and cfg.train.epochs == 1
    code, _, err = cli("promote", "--top", "1", "--epochs", "1", "--study", "sub", "--tracking-uri", "none",
                       "--out", "elsewhere", "--set", "data.trian_limit=5", capsys=capsys)
    assert code == 2 and "unknown key 'data.trian_limit'" in err and "did you mean 'data.train_limit'" in err
    assert not Path("elsewhere").exists()


def test_validation_ranks_and_crowns_the_test_set_never_chooses():
    """The honest protocol: a config whose test accuracy is higher but whose validation accuracy is
    lower is ranked second, and the champion alias goes to the seed with the best validation accuracy."""
    from types import SimpleNamespace

    from vitsweep.promote.results import RunRecord, format_leaderboard, leaderboard
    from vitsweep.promote.retrain import _crown

    def rec(trial: int, seed: int, val: float, test: float) -> RunRecord:
        return RunRecord(study="s", trial=trial, seed=seed, config_desc=f"cfg{trial}", sweep_value=0.5,
                         stop_reason="completed", epochs_run=3, best_epoch=3, best_val_acc=val, test_acc=test,
                         test_loss=1.0, per_class_acc=[], confusion=[], classes=[], history=[], train_time_s=1.0,
                         key="k", mlflow_run_id=f"run-{trial}-{seed}")

    picked = [SimpleNamespace(number=n, rank=n + 1, describe=f"cfg{n}", value=0.5) for n in (0, 1)]
    records = [rec(0, 0, 0.60, 0.55), rec(0, 1, 0.64, 0.52),  # better on validation, worse on test
               rec(1, 0, 0.58, 0.70), rec(1, 1, 0.57, 0.71)]
    board = leaderboard(records, picked, "val_acc")
    assert list(board["trial"]) == [0, 1]
    assert board.iloc[0]["best_val_acc_mean"] == pytest.approx(0.62)
    text = format_leaderboard(board, "s", "val_acc")
    assert "val acc" in text and "62.00% ± 2.83%" in text and "53.50% ± 2.12%" in text

    crowned: list[str] = []
    plan = SimpleNamespace(ml=SimpleNamespace(crown=lambda rid: crowned.append(rid) or 1, model_name="m"),
                           out=lambda s: None)
    _crown(plan, board, records)
    assert crowned == ["run-0-1"]  # the seed with the best validation accuracy, not the best test


def test_a_tracking_server_that_is_down_is_exit_2_at_once_for_promote_and_a_warning_for_report(capsys, port):
    import time

    make_study("down", [(TrialState.COMPLETE, 0.3, adamw(3e-3))])
    down = f"http://127.0.0.1:{port}"  # nothing listens there
    t0 = time.perf_counter()
    code, out, err = cli("promote", "--study", "down", "--top", "1", "--epochs", "1", "--storage", STORAGE, "--tracking-uri", down,
                         capsys=capsys)
    assert code == 2 and f"MLflow tracking server {down} is not reachable" in err, (out, err)
    assert time.perf_counter() - t0 < 30 and not Path("storage/promote/down").exists()
    code, out, err = cli("report", "--study", "down", "--storage", STORAGE, "--tracking-uri", down,
                         "--out", "r.html", capsys=capsys)
    assert code == 0 and Path("r.html").is_file() and "report not logged to MLflow" in err, (out, err)


def test_the_promotion_chart_draws_each_run_in_one_colour_in_both_panels():
    from vitsweep.promote.results import RunRecord, val_curves_figure

    recs = [RunRecord(study="s", trial=n, seed=0, config_desc="c", sweep_value=0.5, stop_reason="completed",
                      epochs_run=2, best_epoch=2, best_val_acc=0.5, test_acc=0.5, test_loss=1.0, per_class_acc=[],
                      confusion=[], classes=[], history=[{"epoch": 1, "val_acc": 0.4, "val_loss": 1.2},
                                                          {"epoch": 2, "val_acc": 0.5, "val_loss": 1.1}],
                      train_time_s=1.0, key="k") for n in range(12)]
    fig = val_curves_figure(recs, "t")
    colours: dict[str, set[str]] = {}
    for tr in fig.data:
        colours.setdefault(tr.name, set()).add(tr.line.color)
    assert len(colours) == 12 and all(len(c) == 1 for c in colours.values())  # one colour per run, both panels
    assert sum(tr.showlegend for tr in fig.data) == 12  # one legend entry per run


def test_the_promotion_files_show_accuracy_in_percent_and_say_so(tmp_path):
    """leaderboard.csv and runs.csv: every accuracy column in percent, named *_pct; val_curves.html
    plots percent; the report's reader gets the fractions back."""
    from types import SimpleNamespace

    from vitsweep.promote.results import RunRecord, leaderboard, read_promotion, write_leaderboard

    hist = [{"epoch": 1, "val_acc": 0.4, "val_loss": 1.2}, {"epoch": 2, "val_acc": 0.5, "val_loss": 1.1}]
    recs = [RunRecord(study="s", trial=3, seed=seed, config_desc="c", sweep_value=0.45, stop_reason="completed",
                      epochs_run=2, best_epoch=2, best_val_acc=0.5 + seed / 100, test_acc=0.6125, test_loss=1.0,
                      per_class_acc=[], confusion=[], classes=[], history=hist, train_time_s=1.0, key="k")
            for seed in (0, 1)]
    board = leaderboard(recs, [SimpleNamespace(number=3, rank=1, describe="c", value=0.45)], "val_acc")
    (tmp_path / "s").mkdir()
    files = write_leaderboard(board, recs, tmp_path / "s", "s", "val_acc")
    (lrow,) = list(csv.DictReader(files["leaderboard"].open()))
    assert {"sweep_val_acc_pct", "test_acc_mean_pct", "best_val_acc_mean_pct", "best_val_acc_std_pct"} <= set(lrow)
    assert not {"test_acc_mean", "best_val_acc_mean", "sweep_val_acc"} & set(lrow)
    assert float(lrow["test_acc_mean_pct"]) == 61.25 and float(lrow["best_val_acc_mean_pct"]) == 50.5
    assert float(lrow["sweep_val_acc_pct"]) == 45.0 and float(lrow["test_loss_mean"]) == 1.0  # a loss as it is
    runs = list(csv.DictReader(files["runs"].open()))
    assert [float(r["best_val_acc_pct"]) for r in runs] == [50.0, 51.0] and runs[0]["test_acc_pct"] == "61.25"
    back = read_promotion(tmp_path, "s").leaderboard  # the report reads fractions again
    assert back.iloc[0]["test_acc_mean"] == pytest.approx(0.6125) and back.iloc[0]["sweep_val_acc"] == pytest.approx(0.45)
    ((data, layout),) = helpers.plotly_figures(files["chart"].read_text()).values()
    acc = [tr for tr in data if tr.get("xaxis", "x") == "x"]
    assert acc and all(tr["y"] == [40.0, 50.0] for tr in acc)  # val_acc in percent
    assert layout["yaxis"]["ticksuffix"] == "%" and layout["yaxis"]["title"]["text"] == "val_acc (%)"
    assert "ticksuffix" not in layout["yaxis2"]  # the loss as it is


def test_each_epochs_accuracy_is_in_mlflow_in_percent_too():
    """MLflow keeps val_acc a fraction (the value Optuna ranks by) and logs each accuracy of an epoch
    in percent as <name>_pct, so the run page's charts a person reads say percent."""
    tracker = Tracker(TRACKING, "pct", "storage/mlartifacts")
    rid = tracker.client.create_run(tracker.experiment_id).info.run_id
    for epoch, acc in ((1, 0.2213), (2, 0.3)):
        tracker.log_epoch(rid, epoch, {"epoch": epoch, "val_acc": acc, "train_acc": acc / 2, "val_loss": 1.5, "lr": 0.1})
    history = {k: [(m.step, m.value) for m in tracker.client.get_metric_history(rid, k)]
               for k in ("val_acc", "val_acc_pct", "train_acc_pct", "val_loss", "val_loss_pct", "run/lr_pct")}
    assert history["val_acc"] == [(1, 0.2213), (2, 0.3)]
    assert [(s, round(v, 6)) for s, v in history["val_acc_pct"]] == [(1, 22.13), (2, 30.0)]
    assert [round(v, 6) for _, v in history["train_acc_pct"]] == [11.065, 15.0]
    assert history["val_loss"] and not history["val_loss_pct"] and not history["run/lr_pct"]


def test_epochs_equal_to_the_trials_own_are_refused_with_a_hint(capsys):
    make_study("same", [(TrialState.COMPLETE, 0.3, adamw(3e-3))])
    code, out, err = promote_cli(capsys, "--study", "same", "--top", "1", "--epochs", "2")  # the trials ran 2
    assert code == 2 and "--epochs 2 is the trials' own length" in err and "--set data.train_limit=null" in err
    assert not Path("storage/promote/same").exists()
    # with --set the runs differ from the trials: allowed
    r = promote(top=1, epochs=2, study="same", storage=STORAGE, tracking_uri="none", out=lambda s: None,
                overrides={"data.train_limit": 100})
    assert r.runs[0].epochs_run == 2


def test_ctrl_c_of_promote_says_how_to_continue(capsys, monkeypatch):
    import vitsweep.promote.retrain as retrain

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(retrain, "promote", interrupted)
    code, out, err = promote_cli(capsys, "--top", "1", "--epochs", "5")
    assert code == 130 and "interrupted (Ctrl-C): run the same vitsweep promote command again to continue" in err


def test_a_long_promoted_run_prints_about_twenty_epoch_lines_with_best_and_time_left(capsys):
    from vitsweep import console

    show = console.epoch_line(200, "[1/3] ", every=max(1, 200 // 20))
    for e in range(1, 201):
        show(e, {"train_loss": 1.0, "val_loss": 1.0, "val_acc": min(0.5, e / 100), "lr": 1e-3,
                 "images_per_sec": 100.0, "epoch_time": 6.0})
    lines = capsys.readouterr().out.splitlines()
    assert 20 <= len(lines) <= 22
    assert lines[0].startswith("[1/3] epoch   1/200") and lines[-1].startswith("[1/3] epoch 200/200")
    assert "best 50.00% (epoch 50)" in lines[-1] and "min left" in lines[1] and "left" not in lines[-1]


def test_on_a_terminal_the_epochs_between_printed_lines_show_on_a_live_line(capsys):
    import io

    from vitsweep import console

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    live = console.LiveLine(Terminal())
    show = console.epoch_line(40, "[1/3] ", every=2, live=live)
    for e in range(1, 6):
        show(e, {"train_loss": 1.0, "val_loss": 1.0, "val_acc": e / 100, "lr": 1e-3, "images_per_sec": 100.0,
                 "epoch_time": 6.0})
    printed = capsys.readouterr().out.splitlines()
    assert [line.split("/40")[0] for line in printed] == ["[1/3] epoch  1", "[1/3] epoch  2", "[1/3] epoch  4"]
    shown = [s for s in live.stream.getvalue().split("\r\x1b[2K") if s]
    assert [s.split("/40")[0] for s in shown] == ["[1/3] epoch 3", "[1/3] epoch 5"]
    assert "val_acc 5.00%" in shown[-1] and "best 5.00% (epoch 5)" in shown[-1] and "min left" in shown[-1]
    live.clear()
    assert live.stream.getvalue().endswith("\r\x1b[2K") and console.LiveLine.active is None
