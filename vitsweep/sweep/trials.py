"""A study's trials as people read them (like Optuna's ``study/_dataframe.py``): a line per
finished trial, the trials table (``vitsweep trials``), counts by state and the budget count."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from vitsweep.errors import VitsweepError
from vitsweep.paths import redact
from vitsweep.sweep.space import describe_params
from vitsweep.sweep.storage import load_study
from vitsweep.tracking.tags import REASON_ATTR, RETRY_HISTORY_SYSATTR, RUN_ATTR, SWEEP_ATTR
from vitsweep.units import fmt_metric
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


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, epochs, duration_s, params..., reason, mlflow_run_id."""
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
        row = {"number": t.number, "state": t.state.name, "value": t.value,
               "epochs": len(t.intermediate_values),
               "duration_s": round(t.duration.total_seconds(), 2) if t.duration else None}
        row.update({k: t.params.get(k) for k in names})
        row["reason"] = reason
        row["mlflow_run_id"] = t.user_attrs.get(RUN_ATTR, "")
        rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.set_index("number")
    return df


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
    df = trials_table(study)
    n = len(df)
    if sort == "value" and n:
        df = df.sort_values("value", ascending=study.direction == optuna.study.StudyDirection.MINIMIZE,
                            na_position="last", kind="stable")
    shown = df.head(top) if top is not None else df
    metric = metric_of(study)
    print(f"study {study.study_name} ({redact(storage)}): {n} trial(s)"
          + (f", the {len(shown)} {'best' if sort == 'value' else 'first'} shown" if len(shown) < n else ""))
    if df.empty:
        return study.study_name
    view = shown.drop(columns=["mlflow_run_id"]).rename(columns={"value": metric})
    view[metric] = [fmt_metric(v, metric) for v in shown["value"]]
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                           "display.max_colwidth", None,  # the whole reason (why it was pruned or failed)
                           "display.float_format", "{:.4g}".format):
        print(view.to_string(na_rep=""))
    if csv is not None:
        csv.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(csv)
        print(f"wrote {csv}")
    return study.study_name


def studies_table(storage: str) -> pd.DataFrame:
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
    df = pd.DataFrame(rows, columns=["study", "trials", "states", "metric", "best", "last_activity"])
    return df.sort_values("last_activity", ascending=False, kind="stable").reset_index(drop=True)


def show_studies(storage: str) -> str | None:
    """``vitsweep studies``: print the table; returns the most recent study's name (None: no study)."""
    df = studies_table(storage)
    print(f"{redact(storage)}: {len(df)} stud{'y' if len(df) == 1 else 'ies'}")
    if len(df):
        print(df.to_string(index=False))
        return str(df.iloc[0]["study"])
    return None
