"""The worker loop, in Optuna's own order (``optuna/study/_optimize.py:_run_trial``): under the
study-wide budget lock, fail the stale trials and *ask* for a trial (it is RUNNING in storage when
the lock is released, so workers on any host never start more than ``n_trials``); then train it
with a heartbeat; then *tell* its state. Until the budget (``study.n_trials`` trials, all workers
together) is used up, the study stops on a plateau, or ``study.timeout`` passes.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread  # what study.optimize runs a trial under
from optuna.trial import TrialState

from vitsweep import console, signals
from vitsweep.errors import DataError, VitsweepError, plain_warnings
from vitsweep.sweep import placement, plateau
from vitsweep.sweep.heartbeat import StaleTrial, fail_stale_trials
from vitsweep.sweep.locks import budget_lock
from vitsweep.sweep.objective import Objective, TrainFn, TrialFailed
from vitsweep.sweep.pruners import build_pruner
from vitsweep.sweep.samplers import build_sampler
from vitsweep.sweep.spec import SweepConfig
from vitsweep.sweep.storage import open_storage
from vitsweep.sweep.study import sweep_tracker
from vitsweep.sweep.trials import budget, duration_estimate, trial_line
from vitsweep.tracking.runs import Tracker
from vitsweep.tracking.tags import STREAMS_ATTR
from vitsweep.train.data import load_data
from vitsweep.train.device import resolve_device
from vitsweep.train.loop import train
from vitsweep.units import fmt_metric

Out = Callable[[str], None]


@dataclass
class Stores:
    """A worker's connection to its sweep: the Optuna storage (with heartbeats and the stale-trial
    re-queue) and the MLflow tracker (trial writes in the background). Opened once per process."""

    storage: optuna.storages.BaseStorage
    tracker: Tracker

    @classmethod
    def open(cls, sweep: SweepConfig) -> Stores:
        """The Optuna storage first, then the MLflow store: a storage that cannot be opened leaves
        no empty MLflow experiment behind."""
        st = sweep.storage
        stale = StaleTrial(st.max_retry)
        storage = open_storage(st.url, create=True, heartbeat_interval=st.heartbeat_interval,
                               grace_period=st.grace_period, stale_callback=stale)
        stale.tracker = tracker = sweep_tracker(sweep, background=True)
        return cls(storage, tracker)


def worker(sweep: SweepConfig, index: int = 0, parent_run_id: str | None = None, out: Out = console.say,
           tag: str = "", device: str | None = None, train_fn: TrainFn = train, workers: int = 1,
           stores: Stores | None = None) -> int:
    """Run trials of the sweep's study until its budget is used up; returns the trials this worker ran.
    ``device`` (from the worker placement plan) replaces the trials' ``train.device``; ``stores``:
    the caller's (``vitsweep run`` with one worker), else this process opens its own."""
    stores = stores or Stores.open(sweep)
    seed = None if sweep.study.seed is None else sampler_seed(sweep, stores.storage)
    study = optuna.load_study(study_name=sweep.study.name, storage=stores.storage,
                              sampler=build_sampler(sweep, seed), pruner=build_pruner(sweep))
    deadline = None if sweep.study.timeout is None else time.monotonic() + sweep.study.timeout
    # One worker on a terminal: a status line under the trial lines (the running trial's epoch, the
    # sweep's counts, best and ETA). With several workers their lines interleave: plain lines only.
    shown = _Progress(sweep, study, out, tag, workers, deadline, estimated=index != 0,
                      live=console.LiveLine(enabled=None if workers == 1 and not tag else False))
    objective = Objective(sweep, stores.tracker, parent_run_id, train_fn, device=device, on_epoch=shown.epoch)
    ran, loaded = 0, False
    with budget_lock(sweep.storage.url, sweep.study.name) as lock, shown.live:
        while deadline is None or time.monotonic() < deadline:
            if isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study):
                break
            if not loaded and _has_work(study, sweep):
                # Memoized: decoded once per process, before its first trial (a DataError stops the sweep).
                load_data(sweep.base.data, resolve_device(device or sweep.base.train.device))
                loaded = True
            with lock.holding():
                if plateau.check(study, sweep.study.patience, sweep.study.min_delta, sweep.study.metric):
                    break  # the study has stopped on a plateau (this worker decided it, or another did)
                finished, running, waiting = budget(study)
                full = waiting == 0 and finished + running >= sweep.study.n_trials
                trial = None if full else _ask(study)
            if trial is not None:
                shown.trial(study, run_trial(study, trial, objective))
                ran += 1
            elif running == 0:
                break
            else:  # others are still running: wait for them, or for their heartbeats to go stale
                time.sleep(min(2.0, sweep.storage.heartbeat_interval))  # (their trials then come back WAITING)
                fail_stale_trials(study)
    return ran


def _has_work(study: optuna.Study, sweep: SweepConfig) -> bool:
    finished, running, waiting = budget(study)
    return bool(waiting) or finished + running < sweep.study.n_trials


def _ask(study: optuna.Study) -> optuna.Trial:
    """Optuna's first steps of a trial: the trials of dead workers failed (and re-queued), then a
    new (or re-queued) trial, RUNNING in storage when this returns."""
    fail_stale_trials(study)
    with warnings.catch_warnings():  # "Heartbeat ... supposed to be used with Study.optimize": run_trial runs it
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        return study.ask()


def run_trial(study: optuna.Study, trial: optuna.Trial, objective: Objective) -> optuna.trial.FrozenTrial:
    """Train ``trial`` under Optuna's heartbeat, then tell the study how it ended. A trial the
    objective re-queued (Ctrl-C, SIGTERM) or a data error is told FAIL and the exception goes on."""
    state, value, stop = TrialState.FAIL, None, None
    with get_heartbeat_thread(trial._trial_id, study._storage):
        try:
            value, state = objective(trial), TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except TrialFailed:
            pass
        except (KeyboardInterrupt, DataError) as e:
            stop = e
    with signals.shielded() if stop is not None else contextlib.nullcontext():  # no trial left RUNNING
        frozen = study.tell(trial, value, state=state)
    if stop is not None:
        raise stop
    return frozen


@dataclass
class _Progress:
    """What a worker prints: a line per finished trial with the sweep's counts, best and ETA; after
    its first one (worker 0), a duration estimate; epoch by epoch, a live status line (one worker)."""

    sweep: SweepConfig
    study: optuna.Study
    out: Out
    tag: str
    workers: int
    deadline: float | None
    estimated: bool
    live: console.LiveLine
    times: list[float] = field(default_factory=list)  # this worker's trial times, for the ETA

    def epoch(self, number: int, epoch: int, m: dict[str, float]) -> None:
        if self.live.enabled:
            finished, running, _ = budget(self.study)
            metric = self.sweep.study.metric
            value = fmt_metric(float(m[metric]), metric) if metric in m else "-"
            self.live.show(f"{self.tag}trial {number}: epoch {epoch}/{self.sweep.epochs}, {metric} {value}"
                           + status_tail(self.study, self.sweep, finished, running, self.times, self.workers))

    def trial(self, study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        sweep = self.sweep
        finished, running, _ = budget(study)
        if t.duration:
            self.times.append(t.duration.total_seconds())
        self.out(self.tag + trial_line(t, sweep.study.metric, sweep.epochs)
                 + status_tail(study, sweep, finished, running, self.times, self.workers))
        if not self.estimated and t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            self.estimated = True
            left = max(0, sweep.study.n_trials - finished)
            timeout = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
            line = duration_estimate(t, sweep.epochs, left, self.workers, timeout)
            if line and left:
                self.out(self.tag + line)


def sampler_seed(sweep: SweepConfig, storage: optuna.storages.BaseStorage) -> int:
    """This worker process's sampler seed: ``study.seed``, the trials so far, and a stream number
    that the study hands out once per worker process under the budget lock. Processes started
    together (``--workers N``, or ``vitsweep run`` on N machines) never share a stream, so never
    sample the same configs; the first process on a new study always gets stream 0, so a sweep run
    again from scratch samples the same configs."""
    with budget_lock(sweep.storage.url, sweep.study.name) as lock, lock.holding():
        study = optuna.load_study(study_name=sweep.study.name, storage=storage)
        stream = int(study.user_attrs.get(STREAMS_ATTR, 0))
        study.set_user_attr(STREAMS_ATTR, stream + 1)
        n_existing = len(study.get_trials(deepcopy=False))
    return sweep.study.seed + 7919 * stream + 104729 * n_existing


def status_tail(study: optuna.Study, sweep: SweepConfig, finished: int, running: int, times: list[float],
                workers: int) -> str:
    """What a trial line adds about the whole sweep: the trials finished (and of those, pruned), the
    best value so far, the trials running, and an ETA from the trial times measured here (pruned
    trials included, so it shrinks as Hyperband prunes)."""
    metric = sweep.study.metric
    try:
        best = fmt_metric(study.best_value, metric)
    except ValueError:  # no completed trial yet
        best = "-"
    left = max(0, sweep.study.n_trials - finished)
    pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
    tail = (f"  | {finished}/{sweep.study.n_trials} done" + (f" ({pruned} pruned)" if pruned else "")
            + f", best {metric} {best}, {running} running")
    if times and left:
        eta = sum(times) / len(times) * left / max(1, workers)
        tail += f", ETA ~{eta / 60:.0f} min" if eta >= 90 else f", ETA ~{eta:.0f} s"
    return tail


def device_override(where: placement.Placement, sweep: SweepConfig) -> str | None:
    """The device a worker's trials train on, where the plan differs from the trainer config's."""
    return where.device if where.device != sweep.base.train.device else None


def worker_process(sweep: SweepConfig, where: placement.Placement, parent: str | None, train_fn: TrainFn,
                   workers: int = 1) -> None:
    """A worker in a process of its own (``vitsweep run --workers N``), placed as the plan says:
    exit 130 on Ctrl-C, 2 on a user's mistake (printed as ``error: [worker N] ...``)."""
    index = where.index
    # A process group of its own: a terminal's Ctrl-C reaches the parent only, which passes it on
    # once (a second SIGINT landing in the re-queue would leave the trial FAIL, not re-queued).
    os.setpgrp()
    signals.exit_promptly()  # the parent waits for this process to exit before its summary
    signals.install()
    plain_warnings()
    placement.apply(where)
    console.say(f"[w{index}] {where.describe()}")
    try:
        worker(sweep, index, parent, console.say, tag=f"[w{index}] ", device=device_override(where, sweep),
               train_fn=train_fn, workers=workers)
    except KeyboardInterrupt as e:
        sys.exit(signals.exit_code(e))
    except VitsweepError as e:
        print(f"error: [worker {index}] {e}", file=sys.stderr, flush=True)
        sys.exit(2)
