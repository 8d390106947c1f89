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

import contextlib
import datetime as dt
import html
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from vitsweep.errors import VitsweepError

DEFAULT_DIR = Path("storage/reports")
ARTIFACT_DIR = "report"
PRUNED_COLOR, COMPLETE_COLOR, FAIL_COLOR = "#d62728", "#1f77b4", "#7f7f7f"

Out = Callable[[str], None]


def _print(line: str) -> None:
    print(line, flush=True)


def _warn(line: str) -> None:
    import sys

    print(f"warning: {line}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Compute spent


@dataclass
class ComputeSpent:
    """Epochs the sweep trained against an unpruned sweep of the same trials.

    Only trials that trained count (COMPLETE and PRUNED): ``epochs_run`` is the sum of the epochs
    each reported, ``epochs_full`` is ``trials * trial_epochs`` (every trial run to the end).
    Failed trials are listed apart (``failed_epochs``): pruning has no part in them.
    """

    trial_epochs: int
    trials: int
    complete: int
    pruned: int
    epochs_run: int
    epochs_full: int
    pruned_epochs_run: int  # epochs the pruned trials ran before they were stopped
    failed: int = 0
    failed_epochs: int = 0

    @property
    def epochs_saved(self) -> int:
        return self.epochs_full - self.epochs_run

    @property
    def saving(self) -> float:
        """Fraction of the unpruned sweep's epochs not run (0 when nothing trained)."""
        return self.epochs_saved / self.epochs_full if self.epochs_full else 0.0

    def line(self) -> str:
        return (f"compute: {self.epochs_run} of {self.epochs_full} epochs run ({self.trials} trials x "
                f"{self.trial_epochs} epochs unpruned); pruning saved {self.epochs_saved} epochs "
                f"({self.saving:.1%}); {self.pruned} trial(s) pruned")


def compute_spent(study: optuna.Study, trial_epochs: int) -> ComputeSpent:
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    pruned = [t for t in done if t.state == TrialState.PRUNED]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    return ComputeSpent(
        trial_epochs=trial_epochs, trials=len(done), complete=len(done) - len(pruned), pruned=len(pruned),
        epochs_run=sum(len(t.intermediate_values) for t in done), epochs_full=len(done) * trial_epochs,
        pruned_epochs_run=sum(len(t.intermediate_values) for t in pruned),
        failed=len(failed), failed_epochs=sum(len(t.intermediate_values) for t in failed))


# ---------------------------------------------------------------------------------------------
# Figures


@dataclass
class Section:
    key: str  # the html id
    title: str
    figure: Any = None  # plotly Figure, or None
    note: str = ""  # shown instead of (or under) the figure
    html: str = ""  # extra html (tables, numbers)


def _empty(fig: Any) -> bool:
    return fig is None or len(fig.data) == 0


def _figure_section(key: str, title: str, make: Callable[[], Any], empty_note: str) -> Section:
    """A section from an Optuna plot function; a failure or an empty figure becomes a note."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = make()
    except Exception as e:  # noqa: BLE001 - a tiny or odd study must not stop the report
        return Section(key, title, note=f"not shown: {type(e).__name__}: {' '.join(str(e).split())}")
    if _empty(fig):
        return Section(key, title, note=empty_note)
    fig.update_layout(template="plotly_white")
    return Section(key, title, fig)


def intermediate_figure(study: optuna.Study, metric: str, trial_epochs: int, rungs: list[int]) -> Any:
    """Optuna's intermediate values plot, restyled: complete trials solid, pruned trials dashed
    red with an X where the pruner stopped them, failed trials grey; dotted lines at the rungs."""
    import plotly.graph_objects as go

    fig = optuna.visualization.plot_intermediate_values(study)
    if _empty(fig):
        return fig
    by_name = {f"Trial{t.number}": t for t in study.get_trials(deepcopy=False)}
    stops_x, stops_y, stops_text = [], [], []
    for tr in fig.data:
        t = by_name.get(tr.name)
        if t is None:
            continue
        tr.name = f"trial {t.number} ({t.state.name.lower()})"
        tr.hovertemplate = f"trial {t.number} {t.state.name.lower()}<br>epoch %{{x}}<br>{metric} %{{y:.4f}}<extra></extra>"
        tr.marker = {"size": 5}
        if t.state == TrialState.PRUNED:
            tr.line = {"color": PRUNED_COLOR, "dash": "dash", "width": 1.5}
            tr.opacity = 0.75
            last = max(t.intermediate_values)
            stops_x.append(last)
            stops_y.append(t.intermediate_values[last])
            stops_text.append(f"trial {t.number} pruned after epoch {last}")
        elif t.state == TrialState.COMPLETE:
            tr.line = {"color": COMPLETE_COLOR, "width": 2}
        else:
            tr.line = {"color": FAIL_COLOR, "dash": "dot", "width": 1}
    if stops_x:
        fig.add_trace(go.Scatter(x=stops_x, y=stops_y, mode="markers", name="pruned here",
                                 marker={"symbol": "x", "size": 12, "color": PRUNED_COLOR, "line": {"width": 1}},
                                 hovertext=stops_text, hoverinfo="text"))
    for r in rungs:
        fig.add_vline(x=r, line={"color": "#bbbbbb", "dash": "dot", "width": 1})
    fig.update_layout(title=f"{metric} by epoch: pruned trials dashed red, X where the pruner stopped them",
                      xaxis_title="epoch", yaxis_title=metric, showlegend=True, template="plotly_white",
                      xaxis={"range": [0.5, trial_epochs + 0.5], "dtick": 1})
    return fig


def hyperband_rungs(pruner: Any, trial_epochs: int) -> list[int]:
    """Epochs where a Hyperband bracket may prune (``min_resource * eta**k`` below the max)."""
    if getattr(pruner, "name", None) != "hyperband":
        return []
    r, eta = max(1, int(pruner.min_resource)), max(2, int(pruner.reduction_factor))
    out = []
    while r < trial_epochs:
        out.append(r)
        r *= eta
    return out


def compute_figure(study: optuna.Study, trial_epochs: int) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    trials = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                           TrialState.FAIL)]
    for state, color in ((TrialState.COMPLETE, COMPLETE_COLOR), (TrialState.PRUNED, PRUNED_COLOR),
                         (TrialState.FAIL, FAIL_COLOR)):
        ts = [t for t in trials if t.state == state]
        if ts:
            fig.add_trace(go.Bar(x=[t.number for t in ts], y=[len(t.intermediate_values) for t in ts],
                                 name=f"epochs run ({state.name.lower()})", marker_color=color))
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    if pruned:
        fig.add_trace(go.Bar(x=[t.number for t in pruned],
                             y=[max(0, trial_epochs - len(t.intermediate_values)) for t in pruned],
                             name="epochs saved by pruning", marker_color="rgba(214,39,40,0.15)",
                             marker_line={"color": PRUNED_COLOR, "width": 1}))
    fig.update_layout(barmode="stack", title="epochs per trial (stacked to the unpruned length)",
                      xaxis_title="trial", yaxis_title="epochs", template="plotly_white",
                      yaxis={"range": [0, trial_epochs + 0.5], "dtick": 1})
    return fig


# ---------------------------------------------------------------------------------------------
# Promotion (written by vitsweep promote)


@dataclass
class Promotion:
    folder: Path
    leaderboard: Any = None  # pandas.DataFrame or None
    records: list[dict[str, Any]] = field(default_factory=list)  # result.json of each run

    @property
    def found(self) -> bool:
        return self.leaderboard is not None or bool(self.records)


def read_promotion(promote_dir: Path, study: str) -> Promotion:
    import pandas as pd

    folder = Path(promote_dir) / study  # vitsweep promote writes <out>/<study>/
    p = Promotion(folder)
    if not folder.is_dir():
        return p
    board = folder / "leaderboard.csv"
    if board.is_file():
        with contextlib.suppress(Exception):
            p.leaderboard = pd.read_csv(board)
    for f in sorted(folder.glob("*/result.json")):
        with contextlib.suppress(Exception):
            rec = json.loads(f.read_text())
            if rec.get("history"):
                p.records.append(rec)
    p.records.sort(key=lambda r: (r.get("trial", 0), r.get("seed", 0)))
    return p


def promotion_figure(p: Promotion) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("validation accuracy", "validation loss"))
    import plotly.colors

    palette = plotly.colors.qualitative.Plotly
    for i, r in enumerate(p.records):
        hist = r["history"]
        color = palette[i % len(palette)]
        label = f"trial {r.get('trial')} seed {r.get('seed')}"
        test = r.get("test_acc")
        hover = f"{label}<br>{r.get('config_desc', '')}" + (f"<br>test acc {test:.2%}" if test is not None else "")
        for col, k in ((1, "val_acc"), (2, "val_loss")):
            if all(k in h for h in hist):
                fig.add_trace(go.Scatter(x=[int(h["epoch"]) for h in hist], y=[h[k] for h in hist],
                                         mode="lines+markers", name=label, legendgroup=label, showlegend=col == 1,
                                         line={"color": color}, hovertext=hover), row=1, col=col)
    fig.update_xaxes(title_text="epoch", dtick=1)
    fig.update_layout(title="promoted runs: validation curves (full-length retraining)", template="plotly_white")
    return fig


# ---------------------------------------------------------------------------------------------
# The page


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


def build_sections(study: optuna.Study, promote_dir: Path) -> tuple[list[Section], ComputeSpent, bool, str]:
    from vitsweep.study import sweep_of, trials_table

    sweep = sweep_of(study)
    metric, epochs = sweep.study.metric, sweep.epochs
    vis = optuna.visualization
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    no_complete = "no completed trial yet"
    sections: list[Section] = []

    sec = _figure_section("history", "Optimization history", lambda: vis.plot_optimization_history(
        study, target_name=metric), no_complete)
    sections.append(sec)

    rungs = hyperband_rungs(sweep.pruner, epochs)
    sections.append(_figure_section("intermediate", "Intermediate values and pruning",
                                    lambda: intermediate_figure(study, metric, epochs, rungs),
                                    "no trial reported an epoch yet"))

    cs = compute_spent(study, epochs)
    numbers = (f"<p class='big'><b>{cs.epochs_run}</b> of <b>{cs.epochs_full}</b> epochs run "
               f"({cs.trials} trained trials &times; {epochs} epochs if none were pruned): pruning saved "
               f"<b>{cs.epochs_saved}</b> epochs, <b>{cs.saving:.1%}</b> of the unpruned sweep.</p>"
               f"<p>{cs.complete} complete, {cs.pruned} pruned (after {cs.pruned_epochs_run} epochs in all)"
               + (f"; {cs.failed} failed trial(s) ran {cs.failed_epochs} epoch(s), not counted above"
                  if cs.failed else "") + ".</p>")
    sec = _figure_section("compute", "Compute spent", lambda: compute_figure(study, epochs), "no trial finished yet")
    sec.html = numbers
    sections.append(sec)

    imp_note = "needs at least 2 completed trials" if len(complete) < 2 else "not computable for this study"
    if len(complete) < 2:
        sections.append(Section("importances", "Parameter importances", note=f"not shown: {imp_note} "
                                f"({len(complete)} so far)"))
    else:
        sections.append(_figure_section("importances", "Parameter importances",
                                        lambda: vis.plot_param_importances(study, target_name=metric), imp_note))
    sections.append(_figure_section("parallel", "Parallel coordinates",
                                    lambda: vis.plot_parallel_coordinate(study, target_name=metric), no_complete))
    sections.append(_figure_section("slice", "Slice plots",
                                    lambda: vis.plot_slice(study, target_name=metric), no_complete))

    df = trials_table(study)
    tail = [c for c in ("reason", "mlflow_run_id") if c in df.columns]
    df = df[[c for c in df.columns if c not in tail] + tail]  # params (conditional ones too) before them
    for col in df.columns:
        if df[col].dtype == object:
            df[col] = df[col].where(df[col].notna(), "")
    table = df.to_html(classes="trials", float_format=lambda v: f"{v:.4g}", na_rep="", border=0)
    sections.append(Section("trials", "Trials", html=table))

    promo = read_promotion(promote_dir, study.study_name)
    if promo.found:
        sec = Section("promotion", "Promotion: promoted runs and leaderboard")
        if promo.records:
            sec.figure = promotion_figure(promo)
        else:
            sec.note = f"no run records (result.json) in {promo.folder}"
        if promo.leaderboard is not None:
            sec.html = ("<h3>Leaderboard (test accuracy of each run's best checkpoint)</h3>"
                        + promo.leaderboard.to_html(classes="trials", index=False, na_rep="", border=0,
                                                    float_format=lambda v: f"{v:.4g}"))
        sections.append(sec)
    return sections, cs, promo.found, _header(study, sweep, cs)


def _header(study: optuna.Study, sweep: Any, cs: ComputeSpent) -> str:
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    try:
        best = study.best_trial
        from vitsweep import space as space_mod

        best_line = (f"best: trial {best.number}, {sweep.study.metric} {best.value:.4f} "
                     f"({html.escape(space_mod.describe_params(best.params))})")
    except ValueError:
        best_line = "best: none yet (no completed trial)"
    p = sweep.pruner
    if p.name == "hyperband":
        pruner = f"pruner hyperband (min_resource {p.min_resource}, reduction_factor {p.reduction_factor})"
    elif p.name == "none" and cs.pruned:
        pruner = "pruner not recorded with the study"  # the stored sweep keeps no pruner settings
    else:
        pruner = f"pruner {p.name}"
    return (f"<p>{len(trials)} trials ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}); "
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
.tablewrap{overflow-x:auto}
"""


def render(study_name: str, header: str, sections: list[Section], generated: str) -> str:
    import plotly.offline

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
# MLflow


@contextlib.contextmanager
def _short_http():
    """Fail fast on an unreachable MLflow server (no minutes of retries)."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def log_to_mlflow(path: Path, study: optuna.Study, tracking_uri: str) -> tuple[str | None, str | None]:
    """Log the page to the sweep's parent run: (run id, None) or (None, why not)."""
    from vitsweep.sqlite import sqlite_path
    from vitsweep.tracking import PARENT_ATTR

    if tracking_uri.lower() == "none":
        return None, None
    parent = study.user_attrs.get(PARENT_ATTR)
    if not parent:
        return None, f"study {study.study_name} has no MLflow parent run (user attr {PARENT_ATTR}); report not logged"
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        return None, f"no MLflow store at {tracking_uri} ({db} does not exist); report not logged to MLflow"
    try:
        import logging

        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow import MlflowClient

        with _short_http():
            client = MlflowClient(tracking_uri=tracking_uri)
            client.get_run(parent)
            client.log_artifact(parent, str(path), artifact_path=ARTIFACT_DIR)
        return parent, None
    except Exception as e:  # noqa: BLE001 - the file is written; tracking is a bonus
        msg = " ".join(str(e).split())[:300]
        return None, f"could not log the report to MLflow run {parent} at {tracking_uri}: {type(e).__name__}: {msg}"


# ---------------------------------------------------------------------------------------------
# The command


def write_report(study: str | None = None, storage: str | None = None, tracking_uri: str | None = None,
                 out: str | Path | None = None, promote_dir: str | Path | None = None,
                 echo: Out = _print, warn: Out = _warn) -> ReportResult:
    """``vitsweep report``: write the page, log it to MLflow, say where it is."""
    from vitsweep.promote import DEFAULT_OUT
    from vitsweep.study import load_study
    from vitsweep.sweep import storage_url, tracking_uri as resolve_tracking

    t0 = time.perf_counter()
    storage = storage_url(storage)
    st = load_study(study, storage)
    if not st.get_trials(deepcopy=False):
        raise VitsweepError(f"study {st.study_name} in {storage} has no trials yet; nothing to report")
    sections, cs, promoted, header = build_sections(st, Path(promote_dir) if promote_dir else DEFAULT_OUT)
    generated = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = render(st.study_name, header, sections, generated)
    path = Path(out) if out is not None else DEFAULT_DIR / f"{st.study_name}.html"
    if path.suffix.lower() not in (".html", ".htm"):
        raise VitsweepError(f"--out {path}: give an .html file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)

    warns: list[str] = []
    run_id, why = log_to_mlflow(path, st, resolve_tracking(tracking_uri))
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
         + (f"; logged to MLflow run {run_id} as {ARTIFACT_DIR}/{path.name}" if run_id else ""))
    return res

