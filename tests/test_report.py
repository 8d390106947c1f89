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

from tests.helpers import chromium, needs_chromium, plotly_figures, sweep_dict
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
DIST = {"optimizer": CategoricalDistribution(["adan", "adamw"]), "lr": FloatDistribution(3e-4, 1e-2, log=True),
        "beta3": FloatDistribution(0.9, 0.999)}  # beta3: a conditional param (Adan only)
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
    # accuracies in percent: the value axis as drawn (tick labels in the SVG), and the trials table
    for key in ("history", "intermediate", "slice"):
        ticks = re.findall(r'<g class="ytick">.*?>([^<>]*)</text>', rendered[key])
        assert ticks and all(t.endswith("%") for t in ticks), (key, ticks)
    assert "val_acc (%)" in rendered["history"]
    # the best trial first
    table = re.search(r"<section id=\"trials\">.*?</section>", dom, re.S).group(0)
    first = re.findall(r"<td>(.*?)</td>", re.search(r"<tbody>\s*<tr>(.*?)</tr>", table, re.S).group(1))
    assert first[:4] == ["1", "1", "COMPLETE", "50.00%"]
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
    assert list(trace.x) == [2.0, 3.0, 5.0, 7.0] and list(trace.y) == [30.0, 30.0, 50.0, 50.0]  # best so far, in %
    assert fig.layout.xaxis.title.text == "PFLOP spent (estimate)" and fig.layout.yaxis.ticksuffix == "%"
    assert len(best_vs_compute_figure(optuna.create_study(), "val_acc").data) == 0
    # a pruned first trial is scaled to a full trial's epochs
    first = optuna.trial.create_trial(state=TrialState.PRUNED, value=None, intermediate_values={1: 0.2},
                                      params={}, distributions={})
    first.datetime_start, first.datetime_complete = t0, t0 + dt.timedelta(seconds=60)
    line = duration_estimate(first, epochs=5, left=10, workers=2, timeout=600.0)
    assert line.startswith("estimate: a full trial (5 epochs) takes ~5.0 min here; the 10 trial(s) left take at most ~25.0 min")
    assert "study.timeout starts no trial after 10.0 min" in line


# ---------------------------------------------------------------------------------------------
# What the page shows: accuracy in percent, the best trial first, a colour per trial, FLOPs in a
# unit that fits, no "None" on a numeric axis, a leaderboard that fits the page

# trials 1 and 3 sampled beta3 (Adan); the others did not
COND_TRIALS = [
    (TrialState.COMPLETE, {"optimizer": "adamw", "lr": 1e-3}, [0.30, 0.40, 0.45]),
    (TrialState.COMPLETE, {"optimizer": "adan", "lr": 3e-3, "beta3": 0.99}, [0.32, 0.44, 0.50]),
    (TrialState.PRUNED, {"optimizer": "adamw", "lr": 9e-3}, [0.15]),
    (TrialState.COMPLETE, {"optimizer": "adan", "lr": 5e-4, "beta3": 0.92}, [0.28, 0.38, 0.41]),
    (TrialState.COMPLETE, {"optimizer": "adamw", "lr": 2e-3}, [0.25, 0.30, 0.33]),
]


def test_every_report_plot_shows_accuracy_in_percent(report):
    figs = plotly_figures(report[3].path.read_text())
    data, layout = figs["fig-history"]
    (values,) = [tr for tr in data if tr["name"] == "val_acc (%)"]
    (best,) = [tr for tr in data if tr["name"] == "Best Value"]
    assert sorted(values["y"]) == pytest.approx([41.0, 45.0, 50.0]) and max(best["y"]) == pytest.approx(50.0)
    assert layout["yaxis"]["ticksuffix"] == "%" and layout["yaxis"]["title"]["text"] == "val_acc (%)"
    data, layout = figs["fig-intermediate"]
    trials = [tr for tr in data if tr["name"].startswith("trial ")]
    assert max(y for tr in trials for y in tr["y"]) == pytest.approx(50.0) and layout["yaxis"]["ticksuffix"] == "%"
    assert "%{y:.2f}%" in trials[0]["hovertemplate"]
    data, layout = figs["fig-slice"]
    assert all(15 <= y <= 50.0 + 1e-9 for tr in data for y in tr.get("y") or [])
    yaxes = [k for k in layout if k.startswith("yaxis")]
    assert len(yaxes) == 2 and all(layout[k]["ticksuffix"] == "%" for k in yaxes)
    data, layout = figs["fig-parallel"]
    ticks = [a["text"] for a in layout["annotations"] if a["x"] == 0 and a["text"][0].isdigit()]
    assert ticks and all(t.endswith("%") and 41 <= float(t[:-1]) <= 50 for t in ticks)
    data, layout = figs["fig-best_vs_compute"] if "fig-best_vs_compute" in figs else (None, None)
    assert data is None  # the fixture's trials recorded no FLOPs


def test_the_trials_table_shows_the_best_trial_first(report):
    page = report[3].path.read_text()
    table = re.search(r"<section id='trials'>.*?</section>", page, re.S).group(0)
    head = re.findall(r"<th>(.*?)</th>", table)
    body = re.search(r"<tbody>.*?</tbody>", table, re.S).group(0)
    rows = [re.findall(r"<td>(.*?)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", body, re.S)]
    assert head[:4] == ["place", "trial", "state", "val_acc"]
    assert [r[1] for r in rows] == ["1", "0", "3", "2", "4", "5"]  # by value (maximize), then the rest in order
    assert rows[0][:4] == ["1", "1", "COMPLETE", "50.00%"] and rows[2][3] == "41.00%"
    assert [r[0] for r in rows] == ["1", "2", "3", "", "", ""] and rows[3][3] == "-"


def test_intermediate_values_draw_a_colour_per_trial_and_fit_the_epochs_reported(tmp_path):
    url, _ = make_study(tmp_path, trials=TRIALS[:3], parent=False)  # 3 epochs per trial, trial 2 pruned after 1
    res = write_report("rep", url, "none", tmp_path / "r.html", echo=lambda _: None)
    data, layout = plotly_figures(res.path.read_text())["fig-intermediate"]
    trials = {tr["name"]: tr for tr in data if tr["name"].startswith("trial ")}
    assert sorted(trials) == ["trial 0 (complete)", "trial 1 (complete)", "trial 2 (pruned)"]
    colours = [tr["line"]["color"] for tr in trials.values()]
    assert len(set(colours)) == 3 and all(tr["marker"]["color"] == tr["line"]["color"] for tr in trials.values())
    assert trials["trial 2 (pruned)"]["line"]["dash"] == "dash"
    assert trials["trial 0 (complete)"]["line"]["dash"] == "solid"
    assert layout["xaxis"]["range"] == [0.5, 3.5]
    short = make_study(tmp_path / "short", trials=[TRIALS[2], TRIALS[4]], parent=False)[0]  # 2 epochs at most
    res = write_report("rep", short, "none", tmp_path / "s.html", echo=lambda _: None)
    assert plotly_figures(res.path.read_text())["fig-intermediate"][1]["xaxis"]["range"] == [0.5, 2.5]


def test_a_conditional_numeric_param_puts_no_none_on_a_numeric_axis(tmp_path):
    url, _ = make_study(tmp_path, trials=COND_TRIALS, parent=False)
    res = write_report("rep", url, "none", tmp_path / "r.html", echo=lambda _: None)
    page = res.path.read_text()
    figs = plotly_figures(page)
    _, layout = figs["fig-parallel"]
    ticks = [a["text"] for a in layout["annotations"]]
    assert layout["xaxis"]["ticktext"] == ["val_acc (%)", "lr", "optimizer"] and "None" not in ticks
    assert "not on these axes: beta3 (numeric, sampled by some trials only" in page
    data, layout = figs["fig-slice"]
    (beta3,) = [tr for tr in data if tr.get("xaxis") == "x"]  # slice subplots are sorted: beta3 first
    assert layout["xaxis"]["title"]["text"] == "beta3" and sorted(beta3["x"]) == [0.92, 0.99]  # the trials that have it


def test_compute_is_shown_in_gflop_tflop_or_pflop_by_its_size():
    from vitsweep.report.figures import best_vs_compute_figure, flop_unit

    assert flop_unit(3e9) == (1e9, "GFLOP") and flop_unit(999e9) == (1e9, "GFLOP") and flop_unit(2e12)[1] == "TFLOP"
    assert flop_unit(5e15)[1] == "PFLOP" and flop_unit(1e6)[1] == "GFLOP"
    for flops, unit, x in ((3e9, "GFLOP", [3.0, 6.0]), (4e12, "TFLOP", [4.0, 8.0])):
        study = optuna.create_study(direction="maximize")
        for v in (0.2, 0.25):
            study.add_trial(create_trial(state=TrialState.COMPLETE, value=v, params={}, distributions={},
                                         user_attrs={"flops": flops}))
        fig = best_vs_compute_figure(study, "val_acc")
        assert fig.layout.xaxis.title.text == f"{unit} spent (estimate)" and list(fig.data[0].x) == pytest.approx(x)
        lo, hi = fig.layout.yaxis.range  # fitted to the values (20% and 25%), not 0..100
        assert 19 < lo < 20 and 25 < hi < 26


def promotion_files(root: Path, study: str = "rep", config: str = "adan lr=0.003") -> Path:
    """A promotion folder as vitsweep promote writes it (leaderboard.csv, runs.csv, result.json)."""
    from types import SimpleNamespace

    from vitsweep.promote.results import leaderboard, write_leaderboard

    folder = root / "promote" / study
    records = []
    for trial, val in ((1, 0.70), (0, 0.66)):
        for seed in (0, 1):
            hist = [{"epoch": e, "val_acc": val - 0.1 * (4 - e) + seed / 100, "val_loss": 2.0 - 0.2 * e}
                    for e in range(1, 5)]
            rec = RunRecord(study=study, trial=trial, seed=seed, config_desc=f"{config} #{trial}",
                            sweep_value=0.5 - trial / 20, stop_reason="completed", epochs_run=4, best_epoch=4, best_val_acc=val + seed / 100,
                            test_acc=0.61 - trial / 50, test_loss=1.1, per_class_acc=[], confusion=[], classes=[],
                            history=hist, train_time_s=12.0, key="k", mlflow_run_id=f"{trial}{seed}" * 16)
            (folder / f"trial{trial}-seed{seed}").mkdir(parents=True)
            rec.save(folder / f"trial{trial}-seed{seed}" / "result.json")
            records.append(rec)
    picked = [SimpleNamespace(number=n, rank=n + 1, describe=f"{config} #{n}", value=0.5 - n / 20) for n in (1, 0)]
    write_leaderboard(leaderboard(records, picked, "val_acc"), records, folder, study, "val_acc")
    return folder


def test_the_leaderboard_in_the_report_is_in_percent_and_narrow(tmp_path):
    url, _ = make_study(tmp_path, parent=False)
    folder = promotion_files(tmp_path)
    assert "test_acc_mean_pct" in (folder / "leaderboard.csv").read_text().splitlines()[0]
    res = write_report("rep", url, "none", tmp_path / "r.html", promote_dir=tmp_path / "promote", echo=lambda _: None)
    page = res.path.read_text()
    table = re.search(r"<table[^>]*leaderboard.*?</table>", page, re.S).group(0)
    head = re.findall(r"<th>(.*?)</th>", table)
    body = re.search(r"<tbody>.*?</tbody>", table, re.S).group(0)
    rows = [re.findall(r"<td>(.*?)</td>", r, re.S) for r in re.findall(r"<tr>(.*?)</tr>", body, re.S)]
    assert head[:5] == ["place", "trial", "sweep rank", "config", "sweep val_acc"] and len(head) <= 13
    assert "mlflow_run_ids" not in head and "1111111111111111" not in table  # run ids stay in the CSV
    row = dict(zip(head, rows[0]))
    assert row["trial"] == "1" and row["sweep val_acc"] == "45.00%" and row["test acc"] == "59.00% ± 0.00%"
    assert row["val acc (best epoch)"] == "70.50% ± 0.71%" and row["time"] == "24s"
    assert "<span class='wrap'>adan lr=0.003 #1</span>" == row["config"]
    data, layout = plotly_figures(page)["fig-promotion"]
    assert max(y for tr in data if tr.get("xaxis", "x") == "x" for y in tr["y"]) == pytest.approx(71.0)
    assert layout["yaxis"]["ticksuffix"] == "%"
    data, layout = plotly_figures(page)["fig-fidelity"]
    assert data[0]["x"] == pytest.approx([45.0, 50.0]) and data[0]["y"] == pytest.approx([70.5, 66.5])
    assert layout["xaxis"]["ticksuffix"] == layout["yaxis"]["ticksuffix"] == "%"
    lo, hi = layout["yaxis"]["range"]
    assert 60 < lo < 66.5 and 70.5 < hi < 75  # fitted to the values


LONG_CONFIG = ("optimizer=adan lr=0.003 beta1=0.98 beta2=0.92 beta3=0.99 weight_decay=0.05 patch_size=4 "
               "batch_size=128 precision=bf16 augment=trivial label_smoothing=0.1 dim=192 depth=6")


@needs_chromium
def test_the_leaderboard_fits_the_page_in_chromium(tmp_path):
    """A leaderboard of long configs, in a 1280-pixel window: no horizontal scrolling, percent shown."""
    url, _ = make_study(tmp_path, parent=False)
    promotion_files(tmp_path, config=LONG_CONFIG)
    res = write_report("rep", url, "none", tmp_path / "r.html", promote_dir=tmp_path / "promote", echo=lambda _: None)
    probe = tmp_path / "probe.html"  # the page, and a script that measures the table once it is laid out
    probe.write_text(res.path.read_text().replace("</body>", (
        "<script>window.addEventListener('load', () => { const t = document.querySelector('#promotion table');"
        "const w = t.closest('.tablewrap'); document.body.setAttribute('data-fits', "
        "t.scrollWidth <= w.clientWidth ? 'yes' : `no: ${t.scrollWidth} > ${w.clientWidth}`); });</script></body>")))
    dom = chromium(probe.as_uri(), tmp_path / "chrome", "--window-size=1280,2000", "--dump-dom")
    assert re.search(r'<body[^>]*data-fits="yes"', dom), re.search(r'data-fits="[^"]*"', dom)
    table = re.search(r'<table[^>]*leaderboard.*?</table>', dom, re.S).group(0)
    assert "70.50% ± 0.71%" in table and LONG_CONFIG in table
