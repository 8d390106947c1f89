"""The report's tables: the trials, best first, and the promotion's leaderboard, narrow enough for
the page (accuracies in percent with two decimals, as everywhere)."""

from __future__ import annotations

import html
import math
from typing import Any

import optuna
import pandas as pd

from vitsweep.sweep.trials import best_first, metric_of, trial_rows
from vitsweep.units import fmt_metric


def trials_html(study: optuna.Study, runs_url: str | None = None) -> str:
    """The trials table, best first (by the study's direction; trials without a value after, in
    trial order), with a place column; with ``runs_url`` (an MLflow server's address) each run id
    links to its run."""
    rows = best_first(trial_rows(study), study.direction)
    df = pd.DataFrame(rows)
    if df.empty:
        return ""
    df.insert(0, "place", [str(i) if r["value"] is not None else "" for i, r in enumerate(rows, 1)])
    df = df.rename(columns={"number": "trial"})
    tail = [c for c in ("reason", "mlflow_run_id") if c in df.columns]
    df = df[[c for c in df.columns if c not in tail] + tail]  # params (conditional ones too) before them
    metric = metric_of(study)
    df["value"] = [fmt_metric(r["value"], metric) for r in rows]  # accuracy in percent, as everywhere
    for col in df.columns:
        if df[col].dtype == object:
            df[col] = [html.escape(str(v)) if v is not None and v == v else "" for v in df[col]]
    df = df.rename(columns={"value": metric})
    if "reason" in df.columns:
        df["reason"] = [_wrap(r, escaped=True) for r in df["reason"]]
    if runs_url and "mlflow_run_id" in df.columns:
        base = runs_url.rstrip("/")
        df["mlflow_run_id"] = [f'<a href="{base}/#/runs/{r}">{r}</a>' if r else "" for r in df["mlflow_run_id"]]
    return df.to_html(classes="trials", index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0,
                      escape=False)


def _wrap(text: str, escaped: bool = False) -> str:
    """A cell that wraps (a config, a reason), where the others stay on one line."""
    return f"<span class='wrap'>{text if escaped else html.escape(text)}</span>" if text else ""


def _mean_std(row: Any, name: str) -> str:
    mean, std = row.get(f"{name}_mean"), row.get(f"{name}_std")
    if mean is None or mean != mean:
        return "-"
    return fmt_metric(mean, name) + ("" if std is None or std != std else f" ± {fmt_metric(std, name)}")


def _cell(row: Any, name: str, fmt: str = "{}") -> str:
    v = row.get(name)
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def leaderboard_html(board: pd.DataFrame, metric: str) -> str:
    """The promotion's leaderboard (as :func:`vitsweep.promote.results.read_promotion` reads it,
    accuracies as fractions) in the columns a person reads: place, trial, config (wrapped), the
    sweep's value, validation and test accuracy (mean ± std over seeds, in percent), test loss,
    seeds, epochs, where it continued from, why it stopped, time. Run ids stay in the CSV."""
    rows = []
    for i, (_, row) in enumerate(board.iterrows(), 1):
        rows.append({
            "place": _cell(row, "place") or str(i), "trial": _cell(row, "trial"),
            "sweep rank": _cell(row, "sweep_rank"), "config": _wrap(_cell(row, "config")),
            f"sweep {metric}": fmt_metric(row.get(f"sweep_{metric}"), metric),
            "val acc (best epoch)": _mean_std(row, "best_val_acc"), "test acc": _mean_std(row, "test_acc"),
            "test loss": fmt_metric(row.get("test_loss_mean"), "loss"), "seeds": _cell(row, "seeds"),
            "epochs": _cell(row, "epochs_run"), "from": _cell(row, "continued_from"),
            "stop": html.escape(_cell(row, "stop_reason")), "time": _cell(row, "wall_time_s", "{:.0f}s"),
        })
    df = pd.DataFrame(rows)
    df = df[[c for c in df.columns if (df[c] != "").any() and (df[c] != "-").any() or c in ("place", "trial")]]
    return df.to_html(classes="trials leaderboard", index=False, border=0, escape=False)
