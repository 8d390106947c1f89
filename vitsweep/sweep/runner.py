"""``vitsweep run``: open (or continue) the study named in the sweep, make the MLflow parent run,
then run trials in ``workers`` processes until the study holds ``study.n_trials`` trials (a
study-wide budget, not per worker), and say how it went.

``run_sweep(sweep, workers, train_fn=train)``: every trial trains with ``train_fn`` (the real
trainer by default; benchmarks and tests pass a light stand-in with the same signature).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna

from vitsweep import console, signals
from vitsweep.errors import ConfigError, one_line
from vitsweep.paths import check_reachable, is_database_server, is_http, redact, writable_folder
from vitsweep.sweep.objective import TrainFn
from vitsweep.sweep import placement, plateau
from vitsweep.sweep.optimize import Stores, device_override, worker, worker_process
from vitsweep.sweep.space import describe_params
from vitsweep.sweep.spec import SweepConfig
from vitsweep.sweep.study import check_storable, set_up
from vitsweep.sweep.trials import budget, describe_counts, metric_of, state_counts
from vitsweep.units import fmt_metric
from vitsweep.tracking.client import check_tracking_store, runs_url
from vitsweep.tracking.runs import Tracker
from vitsweep.tracking.tags import TAG_REASON, TAG_STOP
from vitsweep.train.data import load_data
from vitsweep.train.loop import train


@dataclass
class SweepSummary:
    study_name: str
    counts: dict[str, int]
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    parent_run_id: str | None
    wall_time: float
    interrupted: bool = False
    lines: list[str] = field(default_factory=list)


def run_sweep(sweep: SweepConfig, workers: int = 1, out: Callable[[str], None] = console.say,
              train_fn: TrainFn = train, more: int | None = None) -> SweepSummary:
    """``vitsweep run``: create or continue the study, then run trials in ``workers`` processes
    (``more``: that many trials beyond those the study holds, instead of ``study.n_trials``)."""
    if workers < 1:
        raise ConfigError(f"--workers {workers}: must be >= 1")
    if more is not None and more < 1:
        raise ConfigError(f"--more {more}: must be >= 1 (the trials to add to the study)")
    t0 = time.perf_counter()
    check_before_anything(sweep)
    stores = Stores.open(sweep)  # the one in-process worker uses these too
    tracker, storage = stores.tracker, stores.storage
    study, parent = set_up(sweep, storage, tracker)
    # From here on every way out ends the parent run (unless workers elsewhere still run trials).
    stop: KeyboardInterrupt | None = None
    failure: BaseException | None = None
    summary: SweepSummary | None = None
    try:
        sweep = _with_more(sweep, study, more)
        placements = _plan(sweep, study, workers, tracker, out)
        if len(placements) == 1:
            worker(sweep, 0, parent, out, device=device_override(placements[0], sweep), train_fn=train_fn,
                   stores=stores)
        elif placements:  # none: the study is finished, and the summary says what it holds
            _fan_out(sweep, placements, parent, out, train_fn)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the trials are re-queued; end the parent run
        stop = e
    except BaseException as e:  # a data error in a sampled config, a storage error...: end it FAILED, say why
        failure = e
    with signals.shielded() if stop or failure else contextlib.nullcontext():
        try:
            summary = _end(sweep, storage, tracker, parent, t0, stop, failure, _runs_page(sweep, tracker))
        except Exception as e:  # noqa: BLE001 - the storage itself failed: end the run; show the first error
            with contextlib.suppress(Exception):
                tracker.end_parent(parent, "KILLED" if stop else "FAILED", {},
                                   tags={TAG_REASON: _reason(failure or e, sweep)})
            if failure is None and stop is None:
                raise
    if failure is not None:
        raise failure
    for line in summary.lines if summary else []:
        out(line)
    if stop is not None:
        raise stop
    assert summary is not None
    return summary


def _plan(sweep: SweepConfig, study: optuna.Study, workers: int, tracker: Tracker,
          out: Callable[[str], None]) -> list[placement.Placement]:
    """Where the workers run (a worker per trial left at most: more would only start and stop),
    said in the sweep's first lines; none when the study is finished (said plainly)."""
    finished, running, waiting = budget(study)
    left = max(waiting, sweep.study.n_trials - finished - running)
    if left == 0 and running == 0:
        out(f"study {sweep.study.name} is finished: {finished}/{sweep.study.n_trials} trials done, none to run. "
            f"For more: vitsweep run {sweep.source} --more N")
        return []
    why = plateau.stopped(study)
    if why:  # its workers would each stop at once; the summary says why
        out(f"study {sweep.study.name} was stopped ({why}): no trial starts")
        return []
    if workers > max(1, left):
        out(f"--workers {workers}: {left} trial(s) left to run, so {max(1, left)} worker(s)")
        workers = max(1, left)
    out(f"study {sweep.study.name} ({redact(sweep.storage.url)}): {finished}/{sweep.study.n_trials} trials done; "
        f"{sweep.sampler.name} sampler, {sweep.pruner.name} pruner, {sweep.epochs} epochs per trial, "
        f"{workers} worker(s)" + (f"; MLflow {redact(sweep.tracking.uri)} experiment {tracker.experiment_name}"
                                  if tracker.enabled else ""))
    page = _runs_page(sweep, tracker)
    if page:
        out(f"MLflow runs: {page}")
    placements = placement.plan(workers, sweep.base.train.device)
    for p in placements:
        out(p.describe())
    for warning in placement.warnings_for(placements, sweep.base.train.device):
        out(f"warning: {warning}")
    return placements


def _with_more(sweep: SweepConfig, study: optuna.Study, more: int | None) -> SweepConfig:
    """The sweep with ``more`` trials beyond those the study holds (finished, running, waiting)."""
    if more is None:
        return sweep
    return sweep.with_overrides(n_trials=sum(budget(study)) + more)


def _runs_page(sweep: SweepConfig, tracker: Tracker) -> str | None:
    """Where the sweep's runs are seen in MLflow (the saved view)."""
    if not (tracker.enabled and tracker.experiment_id):
        return None
    if is_http(sweep.tracking.uri):
        return runs_url(redact(sweep.tracking.uri), tracker.experiment_id, view=True)
    from vitsweep.servers import running_ui

    up = running_ui(sweep.tracking.uri)  # a `vitsweep ui` on this store, already serving
    if up is not None:
        return runs_url(up, tracker.experiment_id, view=True)
    return f"vitsweep ui, then {runs_url('http://127.0.0.1:5000', tracker.experiment_id, view=True)}"


def _end(sweep: SweepConfig, storage: optuna.storages.BaseStorage, tracker: Tracker, parent: str | None, t0: float,
         stop: KeyboardInterrupt | None, failure: BaseException | None, runs_page: str | None) -> SweepSummary:
    """The sweep's summary, and its parent run ended: KILLED after Ctrl-C/SIGTERM; else left RUNNING
    while workers elsewhere run trials (the last one to finish ends it); else FAILED after an error
    (its message as the reason), FINISHED otherwise."""
    final = optuna.load_study(study_name=sweep.study.name, storage=storage)
    summary = summarize(final, parent, time.perf_counter() - t0, stop is not None, runs_page)
    metric = sweep.study.metric
    finished, running, waiting = budget(final)
    others = running > 0 or (waiting > 0 and finished < sweep.study.n_trials)  # workers elsewhere go on
    why = plateau.stopped(final)
    if why and not stop:
        summary.lines.insert(1, f"stopped early: {why}")
        others = running > 0
    tags = {TAG_STOP: why} if why else {}
    if failure is not None:
        tags[TAG_REASON] = _reason(failure, sweep)
    # Ctrl-C/SIGTERM ends it KILLED even with trials re-queued (WAITING): this sweep was stopped
    status = "KILLED" if stop else None if others else "FAILED" if failure is not None else "FINISHED"
    tracker.end_parent(parent, status,
                       {**{f"trials_{k.lower()}": v for k, v in summary.counts.items()},
                        **({f"best_{metric}": summary.best_value} if summary.best_value is not None else {})},
                       tags=tags or None)
    return summary


def check_before_anything(sweep: SweepConfig) -> None:
    """Everything a user can get wrong, found before anything is created, in this order: one
    database for both stores, a sweep too large to store, the MLflow store (a server or database
    that does not answer, a URI MLflow cannot use), a database server behind the Optuna storage,
    the data (missing root, corrupt image, val_size too large, a cache folder it cannot write) and
    the trials folder. Only then are the Optuna storage, the MLflow experiment, the study and its
    parent run made (Stores.open, set_up): a mistake leaves no empty study, no empty experiment
    and no RUNNING run behind."""
    if sweep.storage.url == sweep.tracking.uri:
        raise ConfigError(f"the Optuna storage and the MLflow tracking store are one database ({redact(sweep.storage.url)}); "
                          f"both keep their own schema version there and would refuse each other: give each its "
                          f"own database (e.g. .../optuna and .../mlflow)")
    check_storable(sweep)  # a sweep too large for its study to keep (vitsweep.inputs.MAX_BYTES of JSON)
    check_tracking_store(sweep.tracking.uri)
    if is_database_server(sweep.storage.url):  # a server that is down: exit 2 now, before the data is decoded
        check_reachable(sweep.storage.url)
    load_data(sweep.base.data)  # memoized: a one-worker sweep on a CPU trains on this very copy
    if sweep.base.train.checkpoint:
        writable_folder(sweep.trials.dir, f"trials.dir = {sweep.trials.dir}",
                        "make it writable, or set trials.dir in the sweep file to a writable folder")


def _reason(e: BaseException, sweep: SweepConfig) -> str:
    """An error as the parent run's reason tag: one line, no password."""
    return redact(redact(f"{type(e).__name__}: {one_line(e)}", sweep.storage.url), sweep.tracking.uri)[:4000]


def _fan_out(sweep: SweepConfig, placements: list[placement.Placement], parent: str | None,
             out: Callable[[str], None], train_fn: TrainFn) -> None:
    """Run a worker process per placement and wait for them; Ctrl-C is passed on to each."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=worker_process, args=(sweep, where, parent, train_fn, len(placements)), daemon=False)
             for where in placements]
    for p, where in zip(procs, placements):
        with placement.started_with(where):  # thread variables set before torch loads in the worker
            p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: passed on once to each worker (its own group)
        sig = signal.SIGTERM if isinstance(e, signals.Terminated) else signal.SIGINT
        with signals.shielded():
            for p in procs:
                if p.is_alive() and p.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, sig)
            for p in procs:
                p.join(60)
                if p.is_alive():
                    p.kill()
        raise
    bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if bad and not any(c in (130, 143) for c in bad):
        out(f"warning: {len(bad)} worker(s) exited with code(s) {bad}")


def summarize(study: optuna.Study, parent: str | None, wall: float, interrupted: bool = False,
              runs_page: str | None = None) -> SweepSummary:
    trials = study.get_trials(deepcopy=False)
    counts = state_counts(trials)
    try:
        best = study.best_trial
    except ValueError:
        best = None
    lines = [f"{'interrupted' if interrupted else 'done'}: study {study.study_name}, {len(trials)} trial(s) "
             f"({describe_counts(counts)}) in {wall:.1f}s"]
    if best is not None:
        metric = metric_of(study)
        lines.append(f"best: trial {best.number}, {metric} {fmt_metric(best.value, metric)}, {describe_params(best.params)}")
    if parent:
        lines.append(f"MLflow parent run: {parent}; runs: {runs_page}" if runs_page else
                     f"MLflow parent run: {parent}  (vitsweep ui)")
    return SweepSummary(study.study_name, counts, best.number if best else None, best.value if best else None,
                        dict(best.params) if best else {}, parent, wall, interrupted, lines)
