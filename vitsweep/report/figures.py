"""The report's figures: Optuna's own plots made into sections, restyled where pruning must show
(pruned trials dashed red with an X where they stopped, Hyperband rungs dotted), and compute spent."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState

from vitsweep.errors import one_line
from vitsweep.tracking.tags import FLOPS_ATTR

PRUNED_COLOR, COMPLETE_COLOR, FAIL_COLOR = "#d62728", "#1f77b4", "#7f7f7f"


@dataclass
class Section:
    key: str  # the html id
    title: str
    figure: Any = None  # plotly Figure, or None
    note: str = ""  # shown instead of (or under) the figure
    html: str = ""  # extra html (tables, numbers)


def _empty(fig: Any) -> bool:
    return fig is None or len(fig.data) == 0


def figure_section(key: str, title: str, make: Callable[[], Any], empty_note: str) -> Section:
    """A section from an Optuna plot function; a failure or an empty figure becomes a note."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = make()
    except Exception as e:  # noqa: BLE001 - a tiny or odd study must not stop the report
        return Section(key, title, note=f"not shown: {type(e).__name__}: {one_line(e)}")
    if _empty(fig):
        return Section(key, title, note=empty_note)
    fig.update_layout(template="plotly_white")
    return Section(key, title, fig)


def intermediate_figure(study: optuna.Study, metric: str, trial_epochs: int, rungs: list[int]) -> Any:
    """Optuna's intermediate values plot, restyled: complete trials solid, pruned trials dashed
    red with an X where the pruner stopped them, failed trials grey; dotted lines at the rungs."""
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
        y_fmt = ".2%" if "acc" in metric else ".4f"  # as vitsweep shows the metric everywhere (fmt_metric)
        tr.hovertemplate = f"trial {t.number} {t.state.name.lower()}<br>epoch %{{x}}<br>{metric} %{{y:{y_fmt}}}<extra></extra>"
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


def compute_figure(study: optuna.Study, trial_epochs: int) -> Any:
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


def best_vs_compute_figure(study: optuna.Study, metric: str, flops_attr: str = FLOPS_ATTR) -> Any:
    """Best value so far against the training compute spent so far (trials in the order they
    ended; each trial's FLOPs estimate as its trainer recorded it, pruned and failed trials too)."""
    ended = sorted((t for t in study.get_trials(deepcopy=False) if t.datetime_complete is not None
                    and t.user_attrs.get(flops_attr)), key=lambda t: t.datetime_complete)
    fig = go.Figure()
    if not ended:
        return fig
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    spent, best, xs, ys, labels = 0.0, None, [], [], []
    for t in ended:
        spent += float(t.user_attrs[flops_attr])
        if t.state == TrialState.COMPLETE and t.value is not None:
            best = t.value if best is None else (max(best, t.value) if maximize else min(best, t.value))
        if best is not None:
            xs.append(spent / 1e15)
            ys.append(best)
            labels.append(f"after trial {t.number}")
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", line_shape="hv", text=labels,
                             name=f"best {metric}", marker_color=COMPLETE_COLOR))
    fig.update_layout(title=f"best {metric} against training compute spent", xaxis_title="PFLOP spent (estimate)",
                      yaxis_title=f"best {metric}", template="plotly_white")
    return fig
