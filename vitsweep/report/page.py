"""``vitsweep report``: one self-contained HTML page per study, to look at rather than read.

Sections (each a plotly figure, most of them Optuna's own ``optuna.visualization.plot_*``):
optimization history, intermediate values with the trials Hyperband pruned marked where they
stopped, compute spent (epochs run against what the same trials would have run unpruned),
parameter importances, parallel coordinates, slice plots, the trials table, and, where
``vitsweep promote`` ran for the study, the promoted runs' validation curves and the leaderboard
(read from the promotion's folder, ``storage/promote/<study>/``).

The page holds one inlined copy of plotly.js, then each figure as a ``<div>`` (no external
script or stylesheet: it opens offline). It is written to ``storage/reports/<study>.html`` and
logged as an artifact (``report/<study>.html``) of the sweep's MLflow parent run; an unreachable
tracking store is a warning, never a failure.
"""

from __future__ import annotations

import datetime as dt
import html
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import optuna
import plotly.offline
from optuna.trial import TrialState

from vitsweep import console
from vitsweep.errors import VitsweepError
from vitsweep.paths import PROMOTE_DIR, REPORTS_DIR, atomic_write, is_http, redact, storage_url, tracking_uri as resolve_tracking
from vitsweep.promote.results import fidelity_line, read_promotion, val_curves_figure
from vitsweep.report.compute import ComputeSpent, compute_spent
from vitsweep.report.figures import (Section, best_vs_compute_figure, compute_figure, figure_section, fitted_range,
                                     intermediate_figure, percent_axes, percent_parallel,
                                     percent_study)
from vitsweep.report.tables import leaderboard_html, trials_html
from vitsweep.sweep.space import describe_params
from vitsweep.sweep.spec import SweepConfig
from vitsweep.sweep.storage import load_study
from vitsweep.sweep.pruners import rungs as pruner_rungs
from vitsweep.sweep.study import sweep_of
from vitsweep.sweep.trials import describe_counts, state_counts
from vitsweep.tracking.tags import FLOPS_ATTR
from vitsweep.units import axis_title, fmt_metric, shown
from vitsweep.tracking.artifacts import log_report
from vitsweep.tracking.client import check_tracking_server
from vitsweep.tracking.tags import REPORT_ARTIFACT_DIR

Out = Callable[[str], None]


@dataclass
class ReportResult:
    study: str
    path: Path
    size_bytes: int
    sections: list[str]  # keys of the sections with a figure
    notes: dict[str, str]  # section key -> why it has no figure
    compute: ComputeSpent
    promotion: bool
    mlflow_run_id: str | None  # the parent run the page was logged to
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def build_sections(study: optuna.Study, promote_dir: Path, runs_url: str | None = None,
                   ) -> tuple[list[Section], ComputeSpent, bool, str]:
    sweep = sweep_of(study)
    metric, epochs = sweep.study.metric, sweep.epochs
    sections = _study_sections(study, sweep)
    cs = compute_spent(study, epochs)
    sections.insert(2, _compute_section(study, cs, epochs))
    sections.insert(3, figure_section("best_vs_compute", "Best value against compute spent",
                                      lambda: best_vs_compute_figure(study, metric, FLOPS_ATTR),
                                      "no trial recorded its compute yet"))
    sections.append(_trials_section(study, runs_url))
    promo = _promotion_section(promote_dir, study.study_name, metric)
    if promo is not None:
        sections.append(promo)
        fidelity = _fidelity_section(promote_dir, study.study_name, metric, study.direction.name.lower())
        if fidelity is not None:
            sections.append(fidelity)
    return sections, cs, promo is not None, _header(study, sweep, cs)


def _study_sections(study: optuna.Study, sweep: SweepConfig) -> list[Section]:
    """Optuna's plots: history, intermediate values (pruning marked), importances, parallel, slice;
    an accuracy in percent (drawn from :func:`percent_study`)."""
    metric, epochs = sweep.study.metric, sweep.epochs
    vis = optuna.visualization
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    no_complete = "no completed trial yet"
    rungs = pruner_rungs(sweep)
    pct, name = percent_study(study, metric), axis_title(metric)
    sections = [
        figure_section("history", "Optimization history",
                       lambda: percent_axes(vis.plot_optimization_history(pct, target_name=name), metric), no_complete),
        figure_section("intermediate", "Intermediate values and pruning",
                       lambda: intermediate_figure(study, metric, epochs, rungs), "no trial reported an epoch yet"),
    ]
    imp_note = "needs at least 2 completed trials" if len(complete) < 2 else "not computable for this study"
    if len(complete) < 2:
        sections.append(Section("importances", "Parameter importances", note=f"not shown: {imp_note} "
                                f"({len(complete)} so far)"))
    else:
        sections.append(figure_section("importances", "Parameter importances",
                                       lambda: vis.plot_param_importances(study, target_name=metric), imp_note))
    params, left_out = _parallel_params(complete)
    parallel = figure_section(
        "parallel", "Parallel coordinates", lambda: percent_parallel(vis.plot_parallel_coordinate(
            pct, params=params, target_name=name), metric),
        no_complete if not complete else "no param that every completed trial sampled")
    if left_out and parallel.figure is not None:
        parallel.note = (f"not on these axes: {', '.join(left_out)} (numeric, sampled by some trials only: "
                         "see the slice plots)")
    sections.append(parallel)
    sections.append(figure_section("slice", "Slice plots",
                                   lambda: percent_axes(vis.plot_slice(pct, target_name=name), metric), no_complete))
    return sections


def _parallel_params(complete: list[optuna.trial.FrozenTrial]) -> tuple[list[str], list[str]]:
    """(the params for the parallel coordinates, the numeric ones left out): a numeric param that a
    completed trial did not sample (a conditional one) would get a "None" tick on its numeric axis."""
    names = sorted({p for t in complete for p in t.params})
    left_out = [p for p in names if any(p not in t.params for t in complete)
                and all(isinstance(t.params[p], (int, float)) and not isinstance(t.params[p], bool)
                        for t in complete if p in t.params)]
    return [p for p in names if p not in left_out], left_out


def _compute_section(study: optuna.Study, cs: ComputeSpent, epochs: int) -> Section:
    sec = figure_section("compute", "Compute spent", lambda: compute_figure(study, epochs), "no trial finished yet")
    sec.html = (f"<p class='big'><b>{cs.epochs_run}</b> of <b>{cs.epochs_full}</b> epochs run "
                f"({cs.trials} trained trials &times; {epochs} epochs if none were pruned): pruning saved "
                f"<b>{cs.epochs_saved}</b> epochs, <b>{cs.saving:.1%}</b> of the unpruned sweep.</p>"
                f"<p>{cs.complete} complete, {cs.pruned} pruned (after {cs.pruned_epochs_run} epochs in all)"
                + (f"; {cs.failed} failed trial(s) ran {cs.failed_epochs} epoch(s), not counted above"
                   if cs.failed else "") + ".</p>")
    return sec


def _trials_section(study: optuna.Study, runs_url: str | None = None) -> Section:
    """The trials table, best first; with ``runs_url`` (an MLflow server's address) each run id links to its run."""
    return Section("trials", "Trials (best first)", html=trials_html(study, runs_url))


def _promotion_section(promote_dir: Path, study_name: str, metric: str) -> Section | None:
    """The promoted runs' validation curves and the leaderboard, where vitsweep promote ran."""
    promo = read_promotion(promote_dir, study_name)
    if not promo.found:
        return None
    sec = Section("promotion", "Promotion: promoted runs and leaderboard")
    if promo.records:
        sec.figure = val_curves_figure(promo.records, "promoted runs: validation curves (full-length retraining)")
    else:
        sec.note = f"no run records (result.json) in {promo.folder}"
    if promo.leaderboard is not None:
        sec.html = ("<h3>Leaderboard (ranked by validation accuracy; test accuracy of each run's best checkpoint; "
                    "mean ± std over seeds)</h3>" + leaderboard_html(promo.leaderboard, metric))
    return sec


def _fidelity_section(promote_dir: Path, study_name: str, metric: str, direction: str) -> Section | None:
    """Each promoted config's sweep value against its value at full length, and whether the order held."""
    board = read_promotion(promote_dir, study_name).leaderboard
    col = f"sweep_{metric}"
    if board is None or col not in board or not len(board):
        return None
    import plotly.graph_objects as go

    xs, ys = [shown(v, metric) for v in board[col]], [shown(v, "acc") for v in board["best_val_acc_mean"]]
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="markers+text", text=[f"trial {int(t)}" for t in board["trial"]],
                               textposition="top center"))
    fig.update_layout(title="Fidelity: the sweep's value against the promoted run's", template="plotly_white",
                      xaxis_title=f"sweep {axis_title(metric)}", yaxis_title="promoted best validation accuracy (%)",
                      xaxis_range=fitted_range(xs), yaxis_range=fitted_range(ys), yaxis_ticksuffix="%")
    percent_axes(fig, metric, "x")
    return Section("fidelity", "Fidelity: did the sweep's order hold at full length?", figure=fig,
                   note=fidelity_line(board, metric, direction))


def _header(study: optuna.Study, sweep: SweepConfig, cs: ComputeSpent) -> str:
    trials = study.get_trials(deepcopy=False)
    try:
        best = study.best_trial
        best_line = (f"best: trial {best.number}, {sweep.study.metric} {fmt_metric(best.value, sweep.study.metric)} "
                     f"({html.escape(describe_params(best.params))})")
    except ValueError:
        best_line = "best: none yet (no completed trial)"
    p = sweep.pruner
    if p.name == "hyperband":
        pruner = f"pruner hyperband (min_resource {p.min_resource}, reduction_factor {p.reduction_factor})"
    else:
        pruner = f"pruner {p.name}"
    return (f"<p>{len(trials)} trials ({describe_counts(state_counts(trials))}); "
            f"direction {study.direction.name.lower()} {html.escape(sweep.study.metric)}; "
            f"{sweep.epochs} epochs per trial; sampler {sweep.sampler.name}; {pruner}.</p>"
            f"<p>{best_line}</p>")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1300px;
color:#222;padding:0 16px}
h1{margin-bottom:4px} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:36px}
nav a{margin-right:12px} .note{color:#8a6d3b;background:#fcf8e3;padding:8px 12px;border-radius:4px}
.big{font-size:1.15em} .meta{color:#666;font-size:.9em}
table.trials{border-collapse:collapse;font-size:.85em} table.trials th,table.trials td{padding:3px 8px;
border-bottom:1px solid #eee;text-align:right;white-space:nowrap} table.trials th{background:#f5f5f5}
.tablewrap{overflow-x:auto} table.leaderboard{width:100%} table.trials td .wrap{white-space:normal;display:inline-block;
text-align:left;min-width:14em;max-width:32em} table.leaderboard th{white-space:normal}
"""


def render(study_name: str, header: str, sections: list[Section], generated: str) -> str:
    parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
             f"<title>vitsweep report: {html.escape(study_name)}</title><style>{CSS}</style>"
             f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head><body>",
             f"<h1>Study {html.escape(study_name)}</h1><p class='meta'>vitsweep report, generated {generated}</p>",
             header, "<nav>" + "".join(f"<a href='#{s.key}'>{html.escape(s.title)}</a>" for s in sections) + "</nav>"]
    for s in sections:
        parts.append(f"<section id='{s.key}'><h2>{html.escape(s.title)}</h2>")
        if s.html and s.key in ("compute",):
            parts.append(s.html)
        if s.figure is not None:
            height = 450 if s.key not in ("slice", "parallel") else 500
            fig_html = s.figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{s.key}",
                                        default_height=f"{height}px", config={"responsive": True})
            parts.append(f"<div class='figure' data-section='{s.key}'>{fig_html}</div>")
        if s.note:
            parts.append(f"<p class='note'>{html.escape(s.note)}</p>")
        if s.html and s.key not in ("compute",):
            parts.append(f"<div class='tablewrap'>{s.html}</div>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# The command


def write_report(study: str | None = None, storage: str | None = None, tracking_uri: str | None = None,
                 out: str | Path | None = None, promote_dir: str | Path | None = None,
                 echo: Out = console.say, warn: Out = console.warn) -> ReportResult:
    """``vitsweep report``: write the page, log it to MLflow, say where it is."""
    t0 = time.perf_counter()
    storage = storage_url(storage)
    st = load_study(study, storage)
    if not st.get_trials(deepcopy=False):
        raise VitsweepError(f"study {st.study_name} in {redact(storage)} has no trials yet; nothing to report")
    uri = resolve_tracking(tracking_uri)
    sections, cs, promoted, header = build_sections(st, Path(promote_dir) if promote_dir else PROMOTE_DIR,
                                                    redact(uri) if is_http(uri) else None)
    page = render(st.study_name, header, sections, dt.datetime.now().strftime("%Y-%m-%d %H:%M"))
    path = Path(out) if out is not None else REPORTS_DIR / f"{st.study_name}.html"
    if path.suffix.lower() not in (".html", ".htm"):
        raise VitsweepError(f"--out {path}: give an .html file name")
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))

    warns: list[str] = []
    try:
        check_tracking_server(uri)  # a server that is down: say so at once, instead of minutes of retries
        run_id, why = log_report(path, st.study_name, st.user_attrs, uri)
    except VitsweepError as e:
        run_id, why = None, f"report not logged to MLflow: {e}"
    if why:
        warns.append(why)
        warn(why)
    notes = {s.key: s.note for s in sections if s.figure is None and s.note}
    res = ReportResult(st.study_name, path, path.stat().st_size, [s.key for s in sections if s.figure is not None],
                       notes, cs, promoted, run_id, warns, time.perf_counter() - t0)
    echo(cs.line())
    for key, note in notes.items():
        echo(f"{key}: {note}")
    echo(f"wrote {path} ({res.size_bytes / 1e6:.1f} MB, {len(res.sections)} figures"
         + (", with promotion" if promoted else "") + f") in {res.seconds:.1f}s"
         + (f"; logged to MLflow run {run_id} as {REPORT_ARTIFACT_DIR}/{path.name}" if run_id else ""))
    return res
