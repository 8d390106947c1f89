"""``vitsweep report`` on a study built directly with Optuna's API (known pruned trials, so the
compute numbers are known), with MLflow logging, the promotion section, errors, and rendering in
headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from typer.testing import CliRunner

from tests.helpers import chromium, needs_chromium, sweep_dict
from vitsweep.cli import app
from vitsweep.promote.results import RunRecord
from vitsweep.report.compute import compute_spent
from vitsweep.report.page import write_report
from vitsweep.sweep.spec import build_sweep
from vitsweep.sweep.storage import open_storage
from vitsweep.sweep.study import record_sweep
from vitsweep.tracking.runs import Tracker
from vitsweep.tracking.tags import PARENT_ATTR

FIGURES = ["history", "intermediate", "compute", "importances", "parallel", "slice"]
DIST = {"optimizer": CategoricalDistribution(["adan", "adamw"]), "lr": FloatDistribution(3e-4, 1e-2, log=True)}
# (state, params, val_acc per epoch): trial epochs are 3 (TRAINER), 2 of the 6 trials pruned
TRIALS = [
    (TrialState.COMPLETE, {"optimizer": "adamw", "lr": 1e-3}, [0.30, 0.40, 0.45]),
    (TrialState.COMPLETE, {"optimizer": "adan", "lr": 3e-3}, [0.32, 0.44, 0.50]),
    (TrialState.PRUNED, {"optimizer": "adamw", "lr": 9e-3}, [0.15]),
    (TrialState.COMPLETE, {"optimizer": "adan", "lr": 5e-4}, [0.28, 0.38, 0.41]),
    (TrialState.PRUNED, {"optimizer": "adan", "lr": 8e-3}, [0.25, 0.30]),
    (TrialState.FAIL, {"optimizer": "adamw", "lr": 2e-3}, [0.20]),
]


def make_study(root: Path, name: str = "rep", trials=TRIALS, parent: bool = True) -> tuple[str, str]:
    """A study as ``vitsweep run`` leaves it (stored sweep, MLflow parent run), trials added directly."""
    raw = sweep_dict(root, name=name, n_trials=len(trials))
    sweep = build_sweep(raw)
    url, uri = raw["storage"]["url"], raw["tracking"]["uri"]
    study = optuna.create_study(study_name=name, storage=open_storage(url, create=True), direction="maximize")
    record_sweep(study, sweep)
    if parent:
        tracker = Tracker(uri, name, raw["tracking"]["artifacts"])
        study.set_user_attr(PARENT_ATTR, tracker.parent_run(name, None, {}))
    for state, params, values in trials:
        study.add_trial(create_trial(
            state=state, params=params, distributions={k: DIST[k] for k in params},
            value=max(values) if state == TrialState.COMPLETE else None,
            intermediate_values=dict(enumerate(values, 1)),
            user_attrs={"fail_reason": "out of memory: test"} if state == TrialState.FAIL else {}))
    return url, uri


def figure_chunks(page: str) -> dict[str, str]:
    """Section key -> its html, for the sections holding a figure."""
    return {m.group(1): m.group(2) for m in re.finditer(
        r"<div class='figure' data-section='(\w+)'>(.*?)(?=<div class='figure' data-section=|</body>)", page, re.S)}


@pytest.fixture
def report(tmp_path):
    url, uri = make_study(tmp_path)
    lines: list[str] = []
    res = write_report("rep", url, uri, tmp_path / "out" / "rep.html", promote_dir=tmp_path / "promote",
                       echo=lines.append, warn=lines.append)
    return tmp_path, url, uri, res, lines


def test_compute_spent_counts_pruned_epochs(tmp_path):
    url, _ = make_study(tmp_path, parent=False)
    cs = compute_spent(optuna.load_study(study_name="rep", storage=url), 3)
    # trained trials: 3 complete x 3 epochs + pruned after 1 and 2 epochs; the failed one apart
    assert (cs.trials, cs.complete, cs.pruned) == (5, 3, 2)
    assert (cs.epochs_run, cs.epochs_full, cs.epochs_saved) == (12, 15, 3)
    assert cs.saving == pytest.approx(0.2)
    assert (cs.pruned_epochs_run, cs.failed, cs.failed_epochs) == (3, 1, 1)


def test_report_is_self_contained_with_every_section(report):
    root, _, uri, res, lines = report
    page = res.path.read_text()
    assert res.path == root / "out" / "rep.html" and res.size_bytes > 3_000_000  # plotly.js inlined
    assert not re.search(r"<script[^>]+src=", page) and not re.search(r"<link[^>]+href=", page)
    assert page.count("plotly.js v") >= 1 and page.count("function(){") > 0
    assert len(re.findall(r"<script type='text/javascript'>", page)) == 1  # one plotly.js copy
    chunks = figure_chunks(page)
    assert sorted(chunks) == sorted(FIGURES) == sorted(res.sections)
    for key, chunk in chunks.items():
        assert f'id="fig-{key}"' in chunk and "Plotly.newPlot" in chunk, key
    # pruned trials marked in the intermediate values plot, at the epoch they stopped
    inter = chunks["intermediate"]
    assert "pruned here" in inter and "trial 2 pruned after epoch 1" in inter and "trial 4 pruned after epoch 2" in inter
    # compute numbers, trials table, no promotion (none ran)
    assert "<b>12</b> of <b>15</b> epochs run" in page and "<b>20.0%</b>" in page
    assert "compute: 12 of 15 epochs run" in lines[0] and "(20.0%)" in lines[0]
    assert "out of memory: test" in page and page.count("<tr") >= 7
    assert "id='promotion'" not in page and not res.promotion
    # logged to the sweep's MLflow parent run
    client = MlflowClient(uri)
    parent = res.mlflow_run_id
    assert parent and [a.path for a in client.list_artifacts(parent, "report")] == ["report/rep.html"]
    assert not res.warnings


def test_tiny_study_skips_importances_with_a_note_and_unreachable_tracking_warns(tmp_path):
    url, _ = make_study(tmp_path, trials=TRIALS[:1] + TRIALS[2:3])  # 1 complete, 1 pruned
    lines: list[str] = []
    warns: list[str] = []
    res = write_report(None, url, f"sqlite:///{tmp_path}/nowhere/mlflow.db", None, echo=lines.append,
                       warn=warns.append)
    assert res.path == Path("storage/reports/rep.html") and res.path.is_file()
    assert "importances" not in res.sections and "at least 2 completed trials" in res.notes["importances"]
    assert "at least 2 completed trials" in res.path.read_text()
    assert res.mlflow_run_id is None and len(warns) == 1 and "report not logged" in warns[0]
    assert (res.compute.epochs_run, res.compute.epochs_full) == (4, 6)


def test_promotion_section_from_promote_files(tmp_path):
    url, uri = make_study(tmp_path)
    folder = tmp_path / "promote" / "rep"
    (folder / "trial1-seed0").mkdir(parents=True)
    (folder / "leaderboard.csv").write_text("place,trial,sweep_rank,config,test_acc_mean\n1,1,1,adan lr=0.003,0.61\n")
    hist = [{"epoch": e, "val_acc": 0.3 + 0.1 * e, "val_loss": 2.0 - 0.2 * e} for e in range(1, 5)]
    RunRecord(study="rep", trial=1, seed=0, config_desc="adan lr=0.003", sweep_value=0.6, stop_reason="completed",
              epochs_run=4, best_epoch=4, best_val_acc=0.7, test_acc=0.61, test_loss=1.1, per_class_acc=[],
              confusion=[], classes=[], history=hist, train_time_s=1.0,
              key="k").save(folder / "trial1-seed0" / "result.json")
    res = write_report("rep", url, "none", tmp_path / "r.html", promote_dir=tmp_path / "promote",
                       echo=lambda _: None)
    page = res.path.read_text()
    assert res.promotion and "promotion" in res.sections and "trial 1 seed 0" in figure_chunks(page)["promotion"]
    assert "Leaderboard" in page and "adan lr=0.003" in page and res.mlflow_run_id is None


def test_unknown_study_and_empty_storage_exit_2(tmp_path):
    url, _ = make_study(tmp_path, parent=False)
    runner = CliRunner()
    result = runner.invoke(app, ["report", "--study", "nope", "--storage", url, "--tracking-uri", "none"])
    assert result.exit_code == 2 and "no study named 'nope'" in result.output
    result = runner.invoke(app, ["report", "--storage", f"sqlite:///{tmp_path}/missing.db"])
    assert result.exit_code == 2 and "no sweep storage" in result.output
    assert not (tmp_path / "missing.db").exists()
    empty = f"sqlite:///{tmp_path}/empty.db"
    open_storage(empty, create=True)
    result = runner.invoke(app, ["report", "--storage", empty])
    assert result.exit_code == 2 and "holds no study" in result.output
    optuna.create_study(study_name="e", storage=open_storage(empty))
    result = runner.invoke(app, ["report", "--storage", empty])
    assert result.exit_code == 2 and "study e" in result.output and "has no trials yet" in result.output


@needs_chromium
def test_report_renders_in_headless_chromium(report):
    root, _, _, res, _ = report
    url = res.path.resolve().as_uri()
    shot = root / "report.png"
    chromium(url, root / "chrome", f"--screenshot={shot}", "--window-size=1400,4000")
    assert shot.is_file() and shot.stat().st_size > 50_000
    dom = chromium(url, root / "chrome")
    rendered = {m.group(1): m.group(2) for m in re.finditer(
        r'<div class="figure" data-section="(\w+)">(.*?)(?=<div class="figure" data-section=|</body>)', dom, re.S)}
    assert sorted(rendered) == sorted(FIGURES)
    for key, chunk in rendered.items():
        assert 'class="main-svg"' in chunk, f"figure {key} did not render"
    keep = os.environ.get("VITSWEEP_REPORT_SCREENSHOT")  # a copy to look at
    if keep:
        shutil.copy(shot, keep)


def test_best_value_against_compute_spent():
    import datetime as dt

    from optuna.distributions import FloatDistribution

    from vitsweep.report.figures import best_vs_compute_figure
    from vitsweep.sweep.trials import duration_estimate

    study = optuna.create_study(direction="maximize")
    t0 = dt.datetime(2026, 1, 1)
    for state, value, flops in [(TrialState.COMPLETE, 0.3, 2e15), (TrialState.PRUNED, None, 1e15),
                                (TrialState.COMPLETE, 0.5, 2e15), (TrialState.COMPLETE, 0.4, 2e15)]:
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value, params={"lr": 0.1}, distributions={"lr": FloatDistribution(0.01, 1)},
            user_attrs={"flops": flops}, intermediate_values={1: 0.2}))  # ended in this order
    fig = best_vs_compute_figure(study, "val_acc")
    (trace,) = fig.data
    assert list(trace.x) == [2.0, 3.0, 5.0, 7.0] and list(trace.y) == [0.3, 0.3, 0.5, 0.5]  # best so far
    assert len(best_vs_compute_figure(optuna.create_study(), "val_acc").data) == 0
    # a pruned first trial is scaled to a full trial's epochs
    first = optuna.trial.create_trial(state=TrialState.PRUNED, value=None, intermediate_values={1: 0.2},
                                      params={}, distributions={})
    first.datetime_start, first.datetime_complete = t0, t0 + dt.timedelta(seconds=60)
    line = duration_estimate(first, epochs=5, left=10, workers=2, timeout=600.0)
    assert line.startswith("estimate: a full trial (5 epochs) takes ~5.0 min here; the 10 trial(s) left take at most ~25.0 min")
    assert "study.timeout starts no trial after 10.0 min" in line
