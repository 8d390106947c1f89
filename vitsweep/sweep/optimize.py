"""The worker loop (like Optuna's ``study/_optimize.py``): run trials of a sweep's study, one at a
time, until the study-wide budget (``study.n_trials`` trials, all workers together) is used up.

The budget lock is held from "is there budget left?" until the new trial is RUNNING in storage
(the objective's ``on_start`` releases it), so that workers never start more than ``n_trials``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

import optuna
from optuna.trial import TrialState

from vitsweep import console
from vitsweep.train.data import load_data
from vitsweep.train.device import resolve_device
from vitsweep import signals
from vitsweep.errors import VitsweepError, plain_warnings
from vitsweep.sweep import placement
from vitsweep.sweep.heartbeat import StaleTrial, fail_stale_trials
from vitsweep.sweep import plateau
from vitsweep.sweep.locks import budget_lock
from vitsweep.sweep.objective import Objective, TrainFn, TrialFailed
from vitsweep.sweep.spec import SweepConfig
from vitsweep.sweep.storage import open_storage
from vitsweep.sweep.pruners import build_pruner
from vitsweep.sweep.samplers import build_sampler
from vitsweep.sweep.study import sweep_tracker
from vitsweep.sweep.trials import budget, duration_estimate, trial_line
from vitsweep.tracking.tags import STREAMS_ATTR
from vitsweep.units import fmt_metric
from vitsweep.train.loop import train

Out = Callable[[str], None]


def worker(sweep: SweepConfig, index: int = 0, parent_run_id: str | None = None, out: Out = console.say,
           tag: str = "", device: str | None = None, train_fn: TrainFn = train, workers: int = 1) -> int:
    """Run trials of the sweep's study until its budget is used up; returns the trials this worker ran.
    ``device`` (from the worker placement plan) replaces the trials' ``train.device``. Worker 0
    prints a duration estimate after its first finished trial (``workers`` share the rest)."""
    tracker = sweep_tracker(sweep, background=True)
    st = sweep.storage
    storage = open_storage(st.url, create=True, heartbeat_interval=st.heartbeat_interval,
                           grace_period=st.grace_period, stale_callback=StaleTrial(st.max_retry, tracker))
    seed = None if sweep.study.seed is None else sampler_seed(sweep, storage)
    study = optuna.load_study(study_name=sweep.study.name, storage=storage, sampler=build_sampler(sweep, seed),
                              pruner=build_pruner(sweep))
    deadline = None if sweep.study.timeout is None else time.monotonic() + sweep.study.timeout

    estimated = index != 0
    mine: list[float] = []  # this worker's trial times, for the ETA
    # One worker on a terminal: a status line under the trial lines (the running trial's epoch, the
    # sweep's counts, best and ETA). With several workers their lines interleave: plain lines only.
    live = console.LiveLine(enabled=None if workers == 1 and not tag else False)

    def epoch_status(number: int, epoch: int, m: dict[str, float]) -> None:
        if live.enabled:
            finished, running, _ = budget(study)
            metric = sweep.study.metric
            value = fmt_metric(float(m[metric]), metric) if metric in m else "-"
            live.show(f"{tag}trial {number}: epoch {epoch}/{sweep.epochs}, {metric} {value}"
                      + status_tail(study, sweep, finished, running, mine, workers))

    def progress(study_: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        nonlocal estimated
        finished, running, _ = budget(study_)
        if t.duration:
            mine.append(t.duration.total_seconds())
        out(tag + trial_line(t, sweep.study.metric, sweep.epochs)
            + status_tail(study_, sweep, finished, running, mine, workers))
        if not estimated and t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            estimated = True
            left = max(0, sweep.study.n_trials - finished)
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            line = duration_estimate(t, sweep.epochs, left, workers, timeout)
            if line and left:
                out(tag + line)

    ran, loaded = 0, False
    with budget_lock(st.url, sweep.study.name) as lock, live:
        objective = Objective(sweep, tracker, parent_run_id, train_fn, on_start=lock.release, device=device,
                              on_epoch=epoch_status)
        while deadline is None or time.monotonic() < deadline:
            if isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study):
                break
            if not loaded:
                f, r, w = budget(study)
                if w or f + r < sweep.study.n_trials:
                    # Memoized: decoded once per process, before its first trial (a DataError stops the sweep).
                    load_data(sweep.base.data, resolve_device(device or sweep.base.train.device))
                    loaded = True
            with lock.holding():
                if plateau.check(study, sweep.study.patience, sweep.study.min_delta, sweep.study.metric):
                    break  # the study has stopped on a plateau (this worker decided it, or another did)
                finished, running, waiting = budget(study)
                full = waiting == 0 and finished + running >= sweep.study.n_trials
                if not full:
                    study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=[progress])
                    ran += 1
            if full:
                if running == 0:
                    break
                # Others are still running: wait for them, or for their heartbeats to go stale
                # (then their trials come back WAITING and this worker runs them).
                time.sleep(min(2.0, st.heartbeat_interval))
                fail_stale_trials(study)
    return ran



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
