"""The report's figures: Optuna's own plots made into sections, restyled where pruning must show
(a colour per trial, pruned trials dashed with an X where they stopped, Hyperband rungs dotted), and
compute spent. An accuracy is plotted in percent (:func:`percent_study`, ``%`` after the ticks)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import optuna
import plotly.colors
import plotly.graph_objects as go
from optuna.trial import TrialState

from vitsweep.errors import one_line
from vitsweep.tracking.tags import FLOPS_ATTR
from vitsweep.units import axis_title, is_percent, shown

PRUNED_COLOR, COMPLETE_COLOR, FAIL_COLOR, STOP_COLOR = "#d62728", "#1f77b4", "#7f7f7f", "#222222"
FLOP_UNITS = ((1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"))


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


def percent_study(study: optuna.Study, metric: str) -> optuna.Study:
    """The study as its plots show it: for an accuracy, an in-memory copy whose values and
    intermediate values are in percent (Optuna's plots then draw, rank and colour percent, the
    best-value line included); any other metric, the study itself. Trial numbers are kept."""
    if not is_percent(metric):
        return study
    copy = optuna.create_study(study_name=study.study_name, direction=study.direction)
    for t in study.get_trials(deepcopy=True):
        if t.value is not None:
            t.value = shown(t.value, metric)
        t.intermediate_values = {step: shown(v, metric) for step, v in t.intermediate_values.items()}
        copy.add_trial(t)
    return copy


def percent_axes(fig: Any, metric: str, axis: str = "y") -> Any:
    """Every ``axis`` axis of ``fig`` (which holds :func:`shown` values) with a ``%`` after its ticks."""
    if is_percent(metric):
        (fig.update_yaxes if axis == "y" else fig.update_xaxes)(ticksuffix="%")
    return fig


def percent_parallel(fig: Any, metric: str) -> Any:
    """Optuna's parallel coordinates (drawn from :func:`percent_study`) with a ``%`` after the
    objective axis' tick labels (its first axis, the annotations at x = 0)."""
    if is_percent(metric):
        for ann in fig.layout.annotations:
            if ann.x == 0 and ann.text and ann.text.replace(".", "", 1).lstrip("-").isdigit():
                ann.text += "%"
    return fig


def trial_colours(numbers: list[int]) -> dict[int, str]:
    """A colour per trial, none twice: plotly's Dark24 for up to 24 trials, else spread over Turbo."""
    numbers = sorted(set(numbers))
    if len(numbers) <= len(plotly.colors.qualitative.Dark24):
        palette = plotly.colors.qualitative.Dark24
    else:
        palette = plotly.colors.sample_colorscale("Turbo", [i / (len(numbers) - 1) for i in range(len(numbers))])
    return dict(zip(numbers, palette))


def fitted_range(values: list[float]) -> list[float]:
    """An axis range around ``values`` with a margin, also when they are all equal (where plotly
    would span -1..+1 around them)."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.1 or max(abs(hi) * 0.02, 1e-3)
    return [lo - pad, hi + pad]


def intermediate_figure(study: optuna.Study, metric: str, trial_epochs: int, rungs: list[int]) -> Any:
    """Optuna's intermediate values plot, restyled: a colour per trial, complete trials solid,
    pruned trials dashed with an X where the pruner stopped them, failed trials dotted; dotted lines
    at the rungs. An accuracy in percent."""
    study = percent_study(study, metric)
    fig = optuna.visualization.plot_intermediate_values(study)
    if _empty(fig):
        return fig
    by_name = {f"Trial{t.number}": t for t in study.get_trials(deepcopy=False)}
    colours = trial_colours([t.number for t in by_name.values()])
    y_fmt = ".2f}%" if is_percent(metric) else ".4f}"  # as vitsweep shows the metric everywhere (fmt_metric)
    stops_x, stops_y, stops_text = [], [], []
    for tr in fig.data:
        t = by_name.get(tr.name)
        if t is None:
            continue
        state = t.state.name.lower()
        tr.name = f"trial {t.number} ({state})"
        tr.hovertemplate = f"trial {t.number} {state}<br>epoch %{{x}}<br>{metric} %{{y:{y_fmt}<extra></extra>"
        tr.marker = {"size": 5, "color": colours[t.number]}
        dash, width = {TrialState.PRUNED: ("dash", 1.5), TrialState.COMPLETE: ("solid", 2)}.get(t.state, ("dot", 1))
        tr.line = {"color": colours[t.number], "dash": dash, "width": width}
        if t.state == TrialState.PRUNED:
            last = max(t.intermediate_values)
            stops_x.append(last)
            stops_y.append(t.intermediate_values[last])
            stops_text.append(f"trial {t.number} pruned after epoch {last}")
    if stops_x:
        fig.add_trace(go.Scatter(x=stops_x, y=stops_y, mode="markers", name="pruned here",
                                 marker={"symbol": "x", "size": 11, "color": STOP_COLOR, "line": {"width": 1}},
                                 hovertext=stops_text, hoverinfo="text"))
    last_epoch = max((max(t.intermediate_values) for t in by_name.values() if t.intermediate_values), default=1)
    for r in rungs:
        if r <= last_epoch:
            fig.add_vline(x=r, line={"color": "#bbbbbb", "dash": "dot", "width": 1})
    fig.update_layout(title=f"{metric} by epoch (of {trial_epochs}): a colour per trial, pruned trials dashed, "
                            "X where the pruner stopped them",
                      xaxis_title="epoch", yaxis_title=axis_title(metric), showlegend=True, template="plotly_white",
                      xaxis={"range": [0.5, last_epoch + 0.5], "dtick": 1 if last_epoch <= 20 else None})
    return percent_axes(fig, metric)


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
                      yaxis={"range": [0, trial_epochs + 0.5], "dtick": 1 if trial_epochs <= 20 else None})
    return fig


def flop_unit(flops: float) -> tuple[float, str]:
    """The unit to show ``flops`` in: GFLOP, TFLOP or PFLOP, whichever keeps the number >= 1."""
    for scale, name in FLOP_UNITS:
        if flops >= scale:
            return scale, name
    return FLOP_UNITS[-1]


def best_vs_compute_figure(study: optuna.Study, metric: str, flops_attr: str = FLOPS_ATTR) -> Any:
    """Best value so far against the training compute spent so far (trials in the order they
    ended; each trial's FLOPs estimate as its trainer recorded it, pruned and failed trials too),
    compute in GFLOP, TFLOP or PFLOP by the total, an accuracy in percent."""
    ended = sorted((t for t in study.get_trials(deepcopy=False) if t.datetime_complete is not None
                    and t.user_attrs.get(flops_attr)), key=lambda t: t.datetime_complete)
    fig = go.Figure()
    if not ended:
        return fig
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    scale, unit = flop_unit(sum(float(t.user_attrs[flops_attr]) for t in ended))
    spent, best, xs, ys, labels = 0.0, None, [], [], []
    for t in ended:
        spent += float(t.user_attrs[flops_attr])
        if t.state == TrialState.COMPLETE and t.value is not None:
            best = t.value if best is None else (max(best, t.value) if maximize else min(best, t.value))
        if best is not None:
            xs.append(spent / scale)
            ys.append(shown(best, metric))
            labels.append(f"after trial {t.number}")
    y_fmt = ".2f}%" if is_percent(metric) else ".4f}"
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", line_shape="hv", text=labels,
                             name=f"best {metric}", marker_color=COMPLETE_COLOR,
                             hovertemplate=f"%{{text}}<br>%{{x:.3g}} {unit}<br>best {metric} "
                                           f"%{{y:{y_fmt}<extra></extra>"))
    fig.update_layout(title=f"best {metric} against training compute spent", xaxis_title=f"{unit} spent (estimate)",
                      yaxis_title=f"best {axis_title(metric)}", template="plotly_white")
    if ys:
        fig.update_yaxes(range=fitted_range(ys))
    return percent_axes(fig, metric)
