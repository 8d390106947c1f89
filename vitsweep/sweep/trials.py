"""A study's trials as people read them (like Optuna's ``study/_dataframe.py``): a line per
finished trial, the trials table (``vitsweep trials``), counts by state and the budget count.

``vitsweep trials`` and ``vitsweep studies`` are read-only commands a user runs often: they import
neither torch nor MLflow, nor pandas (``trials_table``, the DataFrame the report uses, imports it
when called), and print their tables with :func:`text_table`."""

from __future__ import annotations

import csv as csv_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from vitsweep.errors import VitsweepError
from vitsweep.paths import redact
from vitsweep.sweep.space import describe_params
from vitsweep.sweep.storage import load_study
from vitsweep.tracking.tags import ENQUEUED_SYSATTR, REASON_ATTR, RETRY_HISTORY_SYSATTR, RUN_ATTR, SWEEP_ATTR
from vitsweep.units import fmt_metric

if TYPE_CHECKING:
    import pandas as pd

BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def state_counts(trials: Iterable[FrozenTrial], lower: bool = False) -> dict[str, int]:
    """How many trials are in each state: ``{"COMPLETE": 3, "PRUNED": 2}`` (``lower``: ``"complete"``)."""
    counts: dict[str, int] = {}
    for t in trials:
        name = t.state.name.lower() if lower else t.state.name
        counts[name] = counts.get(name, 0) + 1
    return counts


def describe_counts(counts: dict[str, int]) -> str:
    """``"3 complete, 2 pruned"``, states in alphabetical order."""
    return ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))


def budget(study: optuna.Study) -> tuple[int, int, int]:
    """(finished trials that count, running, waiting). A failed trial that was re-queued does not
    count: its retry does."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get(RETRY_HISTORY_SYSATTR, [])}
    finished = sum(1 for t in trials if t.state in BUDGET_STATES
                   and not (t.state == TrialState.FAIL and t.number in retried))
    running = sum(1 for t in trials if t.state == TrialState.RUNNING)
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    return finished, running, waiting


def trial_line(t: FrozenTrial, metric: str, epochs: int) -> str:
    value = fmt_metric(t.value, metric)
    secs = t.duration.total_seconds() if t.duration else 0.0
    reason = t.user_attrs.get(REASON_ATTR, "")
    line = (f"trial {t.number:>3}  {t.state.name:<8}  {metric} {value:>7}  "
            f"epochs {len(t.intermediate_values)}/{epochs}  {secs:6.1f}s  {describe_params(t.params)}")
    return line + (f"  ({reason})" if reason and t.state in (TrialState.FAIL, TrialState.PRUNED) else "")


def duration_estimate(t: FrozenTrial, epochs: int, left: int, workers: int, timeout: float | None) -> str | None:
    """After a sweep's first trial: what a full trial costs here and how long the rest may take.
    A pruned first trial is scaled up to the trial's full epochs; pruning makes the rest shorter."""
    done = len(t.intermediate_values)
    if not t.duration or done == 0:
        return None
    full = t.duration.total_seconds() / done * epochs
    rest = full * left / max(1, workers)
    line = (f"estimate: a full trial ({epochs} epochs) takes ~{_minutes(full)} here; the {left} trial(s) left take "
            f"at most ~{_minutes(rest)} with {workers} worker(s), less as trials are pruned")
    if timeout is not None and rest > timeout:
        line += f"; study.timeout starts no trial after {_minutes(timeout)}"
    return line


def metric_of(study: optuna.Study) -> str:
    """The study's metric name (set by vitsweep run; older studies: from the sweep they stored)."""
    names = study.metric_names
    if names:
        return names[0]
    return (study.user_attrs.get(SWEEP_ATTR) or {}).get("study", {}).get("metric", "value")


def _minutes(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min"


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One dict per trial: number, state, value, epochs, duration_s, params..., reason, mlflow_run_id.
    ``reason``: why it was pruned or failed, whether it was retried, and "enqueued" for a point the
    sweep file queued (``enqueue:``) rather than one the sampler drew."""
    trials = study.get_trials(deepcopy=False)
    retried_as = {}
    for t in trials:
        hist = t.system_attrs.get(RETRY_HISTORY_SYSATTR, [])
        if hist:
            retried_as[hist[-1]] = t.number
    names = list(dict.fromkeys(k for t in trials for k in t.params))
    rows = []
    for t in trials:
        reason = t.user_attrs.get(REASON_ATTR, "")
        if t.state == TrialState.FAIL and t.number in retried_as and not reason:
            reason = "worker died (no heartbeat)"
        if t.number in retried_as:
            reason = f"{reason}; retried as trial {retried_as[t.number]}".lstrip("; ")
        if ENQUEUED_SYSATTR in t.system_attrs:  # a queued point, not the sampler's
            reason = f"enqueued; {reason}".rstrip("; ")
        row = {"number": t.number, "state": t.state.name, "value": t.value,
               "epochs": len(t.intermediate_values),
               "duration_s": round(t.duration.total_seconds(), 2) if t.duration else None}
        row.update({k: t.params.get(k) for k in names})
        row["reason"] = reason
        row["mlflow_run_id"] = t.user_attrs.get(RUN_ATTR, "")
        rows.append(row)
    return rows


def best_first(rows: list[dict[str, Any]], direction: optuna.study.StudyDirection) -> list[dict[str, Any]]:
    """:func:`trial_rows` best value first (by the study's direction), trials without a value last,
    ties in trial order."""
    sign = 1 if direction == optuna.study.StudyDirection.MINIMIZE else -1
    return sorted(rows, key=lambda r: (r["value"] is None, sign * (r["value"] or 0.0), r["number"]))


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """:func:`trial_rows` as a DataFrame indexed by trial number (the report's table)."""
    import pandas as pd

    df = pd.DataFrame(trial_rows(study))
    if not df.empty:
        df = df.set_index("number")
    return df


def text_table(rows: list[dict[str, Any]], columns: list[str], align_left: Iterable[str] = ()) -> str:
    """``rows`` as a plain text table: a header line, then a line per row; numbers right-aligned,
    the ``align_left`` columns left-aligned, None blank, floats with 4 significant digits."""
    left = set(align_left)

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return ""
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = []
    for row in [list(columns), *cells]:
        lines.append("  ".join(v.ljust(w) if c in left else v.rjust(w)
                               for c, v, w in zip(columns, row, widths)).rstrip())
    return "\n".join(lines)


def show_trials(study_name: str | None, storage: str, csv: Path | None, sort: str = "number",
                top: int | None = None) -> str:
    """``vitsweep trials``: print the table (and write a CSV), by trial number or best value first; returns the study's name;
    ``top`` rows at most. The metric is shown as everywhere else (accuracy in percent); a
    conditional parameter a trial did not sample is blank."""
    if sort not in ("number", "value"):
        raise VitsweepError(f"--sort {sort}: choose number or value")
    if top is not None and top < 1:
        raise VitsweepError(f"--top {top}: must be >= 1")
    if csv is not None and csv.is_dir():
        raise VitsweepError(f"--csv {csv}: is a folder; give a file name (e.g. {csv / 'trials.csv'})")
    study = load_study(study_name, storage)
    rows = trial_rows(study)
    n = len(rows)
    if sort == "value":
        rows = best_first(rows, study.direction)
    shown = rows[:top] if top is not None else rows
    metric = metric_of(study)
    print(f"study {study.study_name} ({redact(storage)}): {n} trial(s)"
          + (f", the {len(shown)} {'best' if sort == 'value' else 'first'} shown" if len(shown) < n else ""))
    if not rows:
        return study.study_name
    # the value column is named after the metric; the run id is left to the CSV; the whole reason
    # (why it was pruned or failed) is shown
    columns = [metric if c == "value" else c for c in rows[0] if c != "mlflow_run_id"]
    view = [{(metric if k == "value" else k): (fmt_metric(v, metric) if k == "value" else v) for k, v in r.items()}
            for r in shown]
    print(text_table(view, columns, align_left=("reason",)))
    if csv is not None:
        csv.parent.mkdir(parents=True, exist_ok=True)
        with open(csv, "w", newline="") as f:
            w = csv_module.writer(f)
            w.writerow(list(rows[0]))
            w.writerows([["" if v is None else v for v in r.values()] for r in rows])
        print(f"wrote {csv}")
    return study.study_name


STUDY_COLUMNS = ["study", "trials", "states", "metric", "best", "last_activity"]


def studies_table(storage: str) -> list[dict[str, Any]]:
    """``vitsweep studies``: every study in the storage, with its trials by state, best value (as
    vitsweep shows it) and last activity, the most recent first."""
    from vitsweep.sweep.storage import open_storage

    st = open_storage(storage)
    rows = []
    for s in optuna.get_all_study_summaries(st, include_best_trial=False):
        study = optuna.load_study(study_name=s.study_name, storage=st)
        trials = study.get_trials(deepcopy=False)
        metric = metric_of(study)
        try:
            best = fmt_metric(study.best_value, metric)
        except (ValueError, RuntimeError):  # no completed trial (or a multi-objective study)
            best = "-"
        times = [t for tr in trials for t in (tr.datetime_complete, tr.datetime_start) if t is not None]
        rows.append({"study": s.study_name, "trials": len(trials), "states": describe_counts(state_counts(trials)),
                     "metric": metric, "best": best,
                     "last_activity": max(times).strftime("%Y-%m-%d %H:%M") if times else "-"})
    return sorted(rows, key=lambda r: r["last_activity"], reverse=True)  # stable: ties keep creation order


def show_studies(storage: str) -> str | None:
    """``vitsweep studies``: print the table; returns the most recent study's name (None: no study)."""
    rows = studies_table(storage)
    print(f"{redact(storage)}: {len(rows)} stud{'y' if len(rows) == 1 else 'ies'}")
    if not rows:
        return None
    print(text_table(rows, STUDY_COLUMNS, align_left=("study", "states", "metric")))
    return str(rows[0]["study"])
