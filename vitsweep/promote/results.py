"""What a promotion leaves on disk, and the one reader of it (``vitsweep report`` uses it too).

``<out>/<study>/`` holds a folder per run, ``trial<N>-seed<S>/``, whose ``result.json`` is a
:class:`RunRecord` (written when the run finished), and the promotion's ``leaderboard.csv``
(one row per config), ``runs.csv`` (one per run) and ``val_curves.html``.

Units: in memory (and in ``result.json``, as the trainer measures it) an accuracy is a fraction; in
the CSV files every accuracy column is in percent and says so (``test_acc_mean_pct``,
``best_val_acc_pct``, ``sweep_val_acc_pct``), as the terminal and the report show it;
:func:`read_promotion` turns them back into fractions. ``val_curves.html`` plots percent.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from vitsweep.stats import order_verdict
from vitsweep.tracking.tags import PERCENT_SUFFIX
from vitsweep.units import fmt_metric, is_percent, pct_column, shown
from vitsweep.paths import atomic_write

RESULT_FILE = "result.json"
LEADERBOARD_FILE, RUNS_FILE, CHART_FILE = "leaderboard.csv", "runs.csv", "val_curves.html"


@dataclass
class RunRecord:
    """What a finished promoted run measured; stored as ``result.json`` in its run folder."""

    study: str
    trial: int
    seed: int
    config_desc: str
    sweep_value: float
    stop_reason: str
    epochs_run: int
    best_epoch: int
    best_val_acc: float
    test_acc: float | None
    test_loss: float | None
    per_class_acc: list[float]
    confusion: list[list[int]]
    classes: list[str]
    history: list[dict[str, float]]
    train_time_s: float  # sum of the epochs' times, across resumes
    key: str
    config: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    run_dir: str = ""
    continued_from: int = 0  # the trial trunk's epoch this run continued from (0: trained from scratch)

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(asdict(self), indent=1)))

    @property
    def label(self) -> str:
        return f"trial {self.trial} seed {self.seed}"

    def final_metrics(self) -> dict[str, float]:
        """The run's end metrics for MLflow: best val, epochs, time; test top-1, loss and per class."""
        final = {"best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch, "epochs_run": self.epochs_run,
                 "train_time_s": self.train_time_s}
        if self.test_acc is not None:
            final.update(test_acc=self.test_acc, test_loss=self.test_loss)
            for name, acc in zip(self.classes, self.per_class_acc):
                final[f"test_acc_class_{_safe(name)}"] = acc
        return final


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in str(name))


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


# ---------------------------------------------------------------------------------------------
# Reading a promotion folder


@dataclass
class PromotionFiles:
    """A promotion's folder as read back: its leaderboard and the records of its finished runs."""

    folder: Path
    leaderboard: pd.DataFrame | None = None
    records: list[RunRecord] = field(default_factory=list)  # sorted by trial, then seed

    @property
    def found(self) -> bool:
        return self.leaderboard is not None or bool(self.records)


def read_promotion(out_dir: Path, study: str) -> PromotionFiles:
    """What ``vitsweep promote --out OUT_DIR`` left for ``study``; unreadable files are passed over."""
    folder = Path(out_dir) / study
    p = PromotionFiles(folder)
    if not folder.is_dir():
        return p
    if (folder / LEADERBOARD_FILE).is_file():
        with contextlib.suppress(Exception):
            p.leaderboard = from_percent_columns(pd.read_csv(folder / LEADERBOARD_FILE))
    for f in sorted(folder.glob(f"*/{RESULT_FILE}")):
        with contextlib.suppress(Exception):
            rec = RunRecord.load(f)
            if rec.history:
                p.records.append(rec)
    p.records.sort(key=lambda r: (r.trial, r.seed))
    return p


# ---------------------------------------------------------------------------------------------
# Leaderboard


def leaderboard(records: list[RunRecord], picked: list[Any], metric: str) -> pd.DataFrame:
    """One row per picked config (a ``Candidate``): best validation accuracy and test accuracy, mean
    and sample std over seeds (std NaN with one seed), sorted by mean validation accuracy (then sweep
    rank). The honest protocol: the validation split chooses; test accuracy is reported, never used
    to rank."""
    rows = []
    for c in picked:
        runs = [r for r in records if r.trial == c.number]
        if not runs:
            continue
        accs = [r.test_acc for r in runs if r.test_acc is not None]
        losses = [r.test_loss for r in runs if r.test_loss is not None]
        rows.append({
            "trial": c.number, "sweep_rank": c.rank, "config": c.describe, f"sweep_{metric}": c.value,
            "test_acc_mean": statistics.fmean(accs) if accs else float("nan"),
            "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else float("nan"),
            "test_loss_mean": statistics.fmean(losses) if losses else float("nan"),
            "best_val_acc_mean": statistics.fmean(r.best_val_acc for r in runs),
            "best_val_acc_std": statistics.stdev(r.best_val_acc for r in runs) if len(runs) > 1 else float("nan"),
            "seeds": len(runs),
            "continued_from": ",".join(str(r.continued_from) for r in runs),
            "epochs_run": ",".join(str(r.epochs_run) for r in runs),
            "stop_reason": ",".join(sorted({r.stop_reason for r in runs})),
            "wall_time_s": round(sum(r.train_time_s for r in runs), 2),
            "mlflow_run_ids": ",".join(r.mlflow_run_id or "" for r in runs),
        })
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values(["best_val_acc_mean", "sweep_rank"], ascending=[False, True], na_position="last")
        df = df.reset_index(drop=True)
        df.index = df.index + 1
        df.index.name = "place"
    return df


def to_percent_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The frame as the CSV files hold it: each accuracy column in percent (to 4 decimals), named
    ``<column>_pct``; every other column as it is."""
    df = df.copy()
    for col in [c for c in df.columns if is_percent(c)]:
        df[col] = [round(shown(float(v), col), 4) if v is not None and v == v else v for v in df[col]]
    return df.rename(columns={c: pct_column(c) for c in df.columns})


def from_percent_columns(df: pd.DataFrame) -> pd.DataFrame:
    """:func:`to_percent_columns` undone (a file written before the columns said percent: as it is)."""
    pct = [c for c in df.columns if c.endswith(PERCENT_SUFFIX) and is_percent(c)]
    df = df.copy()
    for col in pct:
        df[col] = df[col] / 100.0
    return df.rename(columns={c: c[: -len(PERCENT_SUFFIX)] for c in pct})


def write_leaderboard(board: pd.DataFrame, records: list[RunRecord], root: Path, study: str,
                      metric: str) -> dict[str, Path]:
    """``leaderboard.csv``, ``runs.csv`` (accuracies in percent, ``*_pct`` columns) and ``val_curves.html``."""
    files = {"leaderboard": root / LEADERBOARD_FILE, "runs": root / RUNS_FILE, "chart": root / CHART_FILE}
    to_percent_columns(board).to_csv(files["leaderboard"])
    runs = [{"trial": r.trial, "seed": r.seed, "config": r.config_desc, f"sweep_{metric}": r.sweep_value,
             "test_acc": r.test_acc, "test_loss": r.test_loss, "best_val_acc": r.best_val_acc,
             "best_epoch": r.best_epoch, "epochs_run": r.epochs_run, "continued_from": r.continued_from,
             "stop_reason": r.stop_reason, "wall_time_s": r.train_time_s, "mlflow_run_id": r.mlflow_run_id or "",
             "run_dir": r.run_dir} for r in records]
    to_percent_columns(pd.DataFrame(runs)).to_csv(files["runs"], index=False)
    fig = val_curves_figure(records, f"promotion of study {study}: validation curves")
    fig.write_html(files["chart"], include_plotlyjs=True)
    return files


def fidelity_line(board: pd.DataFrame, metric: str, direction: str) -> str:
    """Whether the sweep's ranking of the promoted configs held at full length."""
    if board is None or not len(board):
        return "the sweep's order: no promoted config finished"
    verdict = order_verdict(list(board[f"sweep_{metric}"]), list(board["best_val_acc_mean"]), direction == "maximize")
    return f"{verdict} (sweep {metric} against promoted validation accuracy)"


def format_leaderboard(board: pd.DataFrame | None, study: str, metric: str) -> str:
    if board is None or len(board) == 0:
        return "leaderboard: no runs"
    lines = [f"leaderboard (study {study}; ranked by validation accuracy, the best epoch's; test accuracy of "
             f"that checkpoint, measured once and never used to rank; mean ± std over seeds)"]
    lines.append(f"{'#':>2}  {'trial':>5}  {'sweep ' + metric:>14}  {'val acc':>16}  {'test acc':>16}  {'epochs':>8}  "
                 f"{'from':>5}  {'stop':<14}  {'time':>8}  config")
    for place, row in board.iterrows():
        val = _mean_std(row["best_val_acc_mean"], row.get("best_val_acc_std", float("nan")))
        acc = _mean_std(row["test_acc_mean"], row["test_acc_std"])
        lines.append(f"{place:>2}  {int(row['trial']):>5}  {fmt_metric(row[f'sweep_{metric}'], metric):>14}  {val:>16}  {acc:>16}  "
                     f"{row['epochs_run']:>8}  {_from(row):>5}  {row['stop_reason']:<14}  {row['wall_time_s']:>7.1f}s  "
                     f"{row['config']}")
    lines.append("from: the epoch of the trial's trunk a run continued from (0 = trained from scratch)")
    return "\n".join(lines)


def _from(row: Any) -> str:
    return str(row.get("continued_from", "0"))


def _mean_std(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.2%}" + ("" if math.isnan(std) else f" ± {std:.2%}")


def val_curves_figure(records: list[RunRecord], title: str) -> go.Figure:
    """Validation accuracy (in percent) and loss by epoch, a line per run (the promotion's chart and the report's)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("validation accuracy", "validation loss"))
    palette = plotly.colors.qualitative.Plotly
    for i, r in enumerate(records):
        hover = f"{r.label}<br>{r.config_desc}" + (f"<br>test acc {r.test_acc:.2%}" if r.test_acc is not None else "")
        for col, k in ((1, "val_acc"), (2, "val_loss")):
            if all(k in h for h in r.history):
                y_fmt = ".2f}%" if is_percent(k) else ".4f}"
                fig.add_trace(go.Scatter(x=[int(h["epoch"]) for h in r.history], y=[shown(h[k], k) for h in r.history],
                                         mode="lines+markers", name=r.label, legendgroup=r.label, showlegend=col == 1,
                                         line={"color": palette[i % len(palette)]}, text=[hover] * len(r.history),
                                         hovertemplate=f"%{{text}}<br>epoch %{{x}}<br>{k} %{{y:{y_fmt}<extra></extra>"),
                              row=1, col=col)
    fig.update_xaxes(title_text="epoch", dtick=1 if max((r.epochs_run for r in records), default=0) <= 20 else None)
    fig.update_yaxes(title_text="val_acc (%)", ticksuffix="%", row=1, col=1)
    fig.update_yaxes(title_text="val_loss", row=1, col=2)
    fig.update_layout(title=title, template="plotly_white")
    return fig
