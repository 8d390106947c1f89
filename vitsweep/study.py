"""Studies: storage, sampler and pruner, the objective, the worker loop, and the trials table.

``run_sweep(sweep, workers)`` is what ``vitsweep run`` does: open (or continue) the study named in
the sweep, make the MLflow parent run, then run trials in ``workers`` processes until the study
holds ``study.n_trials`` trials (a study-wide budget, not per worker). Each trial reports the
metric every epoch and is pruned from the trainer's ``on_epoch`` callback.

Storage: an Optuna RDB storage (SQLite under ``storage/`` by default, WAL + busy timeout) with
heartbeats; a trial whose worker died is marked FAIL and re-queued (``RetryHeartbeatStaleTrialCallback``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from vitsweep import placement
from vitsweep import space as space_mod
from vitsweep.errors import ConfigError, DataError, VitsweepError
from vitsweep.distributed import budget_lock, check_tracking_server, create_or_load_study, make_storage
from vitsweep.sqlite import prepare_sqlite, sqlite_path
from vitsweep.sweep import DEFAULT_STORAGE, DEFAULT_TRACKING, SweepConfig, build_sweep
from vitsweep.tracking import PARENT_ATTR, RUN_ATTR, Tracker

warnings.filterwarnings("ignore", category=ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)

SWEEP_ATTR = "vitsweep_sweep"  # the study's sweep (trainer config + space), to rebuild trial configs
REASON_ATTR = "fail_reason"
BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

# ---------------------------------------------------------------------------------------------
# Storage, sampler, pruner


def open_storage(url: str = DEFAULT_STORAGE, *, create: bool = False, heartbeat_interval: int | None = None,
                 grace_period: int | None = None,
                 stale_callback: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
                 ) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``. Without ``create``, a missing SQLite file is an error
    (reading commands must not create empty databases). PostgreSQL (``postgresql://`` or
    ``postgresql+psycopg2://``): a pre-pinged connection pool, and storage operations retried with
    backoff on transient errors (see :mod:`vitsweep.distributed`)."""
    path = sqlite_path(url)
    if path is not None and not create and not path.is_file():
        raise VitsweepError(f"no sweep storage at {url} ({path} does not exist); "
                            f"run a sweep first: vitsweep run sweeps/smoke.yaml")
    if create:
        prepare_sqlite(url)
    with _quiet():
        return make_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                            heartbeat_stale_trial_callback=stale_callback)


@contextlib.contextmanager
def _quiet():
    """Optuna flags heartbeats, grouped TPE and the retry callback as experimental: we mean to use them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def latest_study_name(storage: optuna.storages.BaseStorage) -> str:
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    if not summaries:
        raise VitsweepError("the storage holds no study yet; run one: vitsweep run sweeps/smoke.yaml")
    return max(summaries, key=lambda s: (s.datetime_start is not None, s.datetime_start or 0, s._study_id)).study_name


def load_study(name: str | None = None, storage: str = DEFAULT_STORAGE) -> optuna.Study:
    """An existing study by name (default: the one most recently started) for reading."""
    st = open_storage(storage)
    name = name or latest_study_name(st)
    try:
        return optuna.load_study(study_name=name, storage=st)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(st, include_best_trial=False)]
        raise VitsweepError(f"no study named {name!r} in {storage} (studies: {', '.join(names) or 'none'})") from None


def sweep_of(study: optuna.Study) -> SweepConfig:
    """The sweep a study was run with (as stored at its first run): ``config_for_params(sweep_of(study),
    trial.params)`` rebuilds any trial's trainer config."""
    raw = study.user_attrs.get(SWEEP_ATTR)
    if raw is None:
        raise VitsweepError(f"study {study.study_name!r} was not created by vitsweep run (no sweep stored)")
    return build_sweep(raw, source=f"study {study.study_name}")


def trial_config(study: optuna.Study, trial: optuna.trial.FrozenTrial):  # -> Config
    """The exact trainer config ``trial`` ran (``train.test`` off, as in the sweep)."""
    return space_mod.config_for_params(sweep_of(study), trial.params)


def build_sampler(sweep: SweepConfig, seed: int | None) -> optuna.samplers.BaseSampler:
    s = sweep.sampler
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.name == "grid":
        return optuna.samplers.GridSampler(_grid(sweep), seed=seed)
    with _quiet():
        return optuna.samplers.TPESampler(n_startup_trials=s.n_startup_trials, multivariate=s.multivariate,
                                          group=s.group, constant_liar=s.constant_liar, seed=seed)


def build_pruner(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    p = sweep.pruner
    if p.name == "hyperband":  # never "auto": with auto nothing is pruned until a trial completes
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, max_resource=sweep.epochs,
                                              reduction_factor=p.reduction_factor, bootstrap_count=p.bootstrap_count)
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    return optuna.pruners.NopPruner()


def _grid(sweep: SweepConfig) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for p in sweep.space:
        if p.kind == "categorical":
            out[p.name] = list(p.choices)
        elif p.kind == "int":
            out[p.name] = list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))
        else:
            n = int(math.floor((p.high - p.low) / p.step + 1e-9))
            out[p.name] = [round(p.low + i * p.step, 12) for i in range(n + 1)]
    return out


def _stored_sweep(sweep: SweepConfig) -> dict[str, Any]:
    """What a study remembers of its sweep: enough to rebuild every trial's config."""
    raw = {"study": {"name": sweep.study.name, "direction": sweep.study.direction, "metric": sweep.study.metric,
                     "n_trials": sweep.study.n_trials},
           "sampler": {"name": sweep.sampler.name}, "pruner": dataclasses.asdict(sweep.pruner),
           "trainer": sweep.base.to_dict(), "space": {}}
    for p in sweep.space:
        spec: dict[str, Any] = {"path": p.path, "type": p.kind}
        if p.kind == "categorical":
            spec["choices"] = list(p.choices)
        else:
            spec.update(low=p.low, high=p.high, log=p.log)
            if p.step is not None:
                spec["step"] = p.step
        if p.when:
            spec["when"] = {name: list(vals) for name, vals in p.when}
        raw["space"][p.name] = spec
    return json.loads(json.dumps(raw))


# ---------------------------------------------------------------------------------------------
# Running a sweep


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


def run_sweep(sweep: SweepConfig, workers: int = 1, out: Callable[[str], None] | None = None) -> SweepSummary:
    """``vitsweep run``: create or continue the study, then run trials in ``workers`` processes."""
    out = out or _print
    if workers < 1:
        raise ConfigError(f"--workers {workers}: must be >= 1")
    t0 = time.perf_counter()
    check_tracking_server(sweep.tracking.uri)  # an unreachable MLflow server: exit 2 before any trial
    storage = open_storage(sweep.storage.url, create=True)
    # Set-up under the budget lock, so that workers starting together (on any host, with
    # PostgreSQL) create one study and one MLflow parent run.
    setup_lock = budget_lock(sweep.storage.url, sweep.study.name)
    setup_lock.acquire()
    try:
        study = create_or_load_study(sweep.study.name, storage, sweep.study.direction)
        stored = _stored_sweep(sweep)
        previous = study.user_attrs.get(SWEEP_ATTR)
        if previous is None:
            study.set_user_attr(SWEEP_ATTR, stored)
        elif {k: previous[k] for k in ("trainer", "space")} != {k: stored[k] for k in ("trainer", "space")}:
            raise VitsweepError(
                f"study {sweep.study.name!r} in {sweep.storage.url} was run with a different trainer config or "
                f"search space, so its trials could not be compared; set a new study.name to start a new study")
        if study.direction.name.lower() != sweep.study.direction:
            raise VitsweepError(f"study {sweep.study.name!r} exists with direction {study.direction.name.lower()}")
        tracker = _tracker(sweep)
        parent = tracker.parent_run(sweep.study.name, study.user_attrs.get(PARENT_ATTR),
                                    {"vitsweep.sweep_file": sweep.source,
                                     "vitsweep.n_trials": str(sweep.study.n_trials)})
        if parent and parent != study.user_attrs.get(PARENT_ATTR):
            study.set_user_attr(PARENT_ATTR, parent)
    finally:
        setup_lock.close()

    done = _budget(study)[0]
    out(f"study {sweep.study.name} ({sweep.storage.url}): {done}/{sweep.study.n_trials} trials done; "
        f"{sweep.sampler.name} sampler, {sweep.pruner.name} pruner, {sweep.epochs} epochs per trial, "
        f"{workers} worker(s)" + (f"; MLflow {sweep.tracking.uri} experiment {tracker.experiment_name}"
                                  if tracker.enabled else ""))
    placements = placement.plan(workers, sweep.base.train.device)
    for p in placements:
        out(p.describe())
    for warning in placement.warnings_for(placements, sweep.base.train.device):
        out(f"warning: {warning}")
    interrupted = False
    try:
        if workers == 1:
            worker(sweep, 0, parent, out, device=_override(placements[0], sweep))
        else:
            ctx = multiprocessing.get_context("spawn")
            procs = [ctx.Process(target=_worker_entry, args=(sweep, p, parent), daemon=False) for p in placements]
            for p, where in zip(procs, placements):
                with placement.started_with(where):  # thread variables set before torch loads in the worker
                    p.start()
            try:
                for p in procs:
                    p.join()
            except KeyboardInterrupt:
                for p in procs:
                    if p.is_alive() and p.pid:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(p.pid, signal.SIGINT)
                for p in procs:
                    p.join(60)
                    if p.is_alive():
                        p.terminate()
                raise
            bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
            if bad and not any(c == 130 for c in bad):
                out(f"warning: {len(bad)} worker(s) exited with code(s) {bad}")
    except KeyboardInterrupt:
        interrupted = True
    final = optuna.load_study(study_name=sweep.study.name, storage=storage)
    summary = summarize(final, parent, time.perf_counter() - t0, interrupted)
    metric = sweep.study.metric
    finished, running, waiting = _budget(final)
    others = running > 0 or (waiting > 0 and finished < sweep.study.n_trials)  # workers elsewhere go on
    tracker.end_parent(parent, "KILLED" if interrupted else None if others else "FINISHED",
                       {**{f"trials_{k.lower()}": v for k, v in summary.counts.items()},
                        **({f"best_{metric}": summary.best_value} if summary.best_value is not None else {})})
    for line in summary.lines:
        out(line)
    if interrupted:
        raise KeyboardInterrupt
    return summary


def _override(where: placement.Placement, sweep: SweepConfig) -> str | None:
    """The device a worker's trials train on, where the plan differs from the trainer config's."""
    return where.device if where.device != sweep.base.train.device else None


def _worker_entry(sweep: SweepConfig, where: placement.Placement, parent: str | None) -> None:
    index = where.index
    placement.apply(where)
    _print(f"[w{index}] {where.describe()}")
    try:
        worker(sweep, index, parent, _print, tag=f"[w{index}] ", device=_override(where, sweep))
    except KeyboardInterrupt:
        sys.exit(130)
    except VitsweepError as e:
        print(f"error: [worker {index}] {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def _tracker(sweep: SweepConfig, background: bool = False) -> Tracker:
    """The sweep's MLflow tracker; workers write trial params and metrics in the background."""
    return Tracker(sweep.tracking.uri, sweep.tracking.experiment or sweep.study.name, sweep.tracking.artifacts,
                   background=background)


class _StaleTrial:
    """Heartbeat-stale trial (its worker died): end its MLflow run as FAILED, then re-queue it."""

    def __init__(self, max_retry: int, tracker: Tracker):
        with _quiet():
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.tracker = tracker

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        with contextlib.suppress(Exception):
            self.tracker.end_trial(trial.user_attrs.get(RUN_ATTR), "FAIL",
                                   "worker died (no heartbeat within the grace period); trial re-queued")
        self.retry(study, trial)


def _budget(study: optuna.Study) -> tuple[int, int, int]:
    """(finished trials that count, running, waiting). A failed trial that was re-queued does not
    count: its retry does."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    finished = sum(1 for t in trials if t.state in BUDGET_STATES
                   and not (t.state == TrialState.FAIL and t.number in retried))
    running = sum(1 for t in trials if t.state == TrialState.RUNNING)
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    return finished, running, waiting


# Per trial run in this process: {"number", "trial_s", "train_s", "callbacks_s"} (for benchmarks:
# orchestration time = trial_s - (train_s - callbacks_s)).
TIMINGS: list[dict[str, float]] = []


class _TrialFailed(Exception):
    """A trial that failed for a recorded reason; the sweep goes on."""


def worker(sweep: SweepConfig, index: int = 0, parent_run_id: str | None = None,
           out: Callable[[str], None] | None = None, tag: str = "", device: str | None = None) -> int:
    """Run trials of the sweep's study until its budget is used up; returns the trials this worker ran.
    ``device`` (from the worker placement plan) replaces the trials' ``train.device``."""
    from vitsweep.data import load_data
    from vitsweep.device import resolve_device

    out = out or _print
    tracker = _tracker(sweep, background=True)
    st = sweep.storage
    storage = open_storage(st.url, create=True, heartbeat_interval=st.heartbeat_interval,
                           grace_period=st.grace_period, stale_callback=_StaleTrial(st.max_retry, tracker))
    probe = optuna.load_study(study_name=sweep.study.name, storage=storage)
    n_existing = len(probe.get_trials(deepcopy=False))
    seed = None if sweep.study.seed is None else sweep.study.seed + 7919 * index + 104729 * n_existing
    study = optuna.load_study(study_name=sweep.study.name, storage=storage, sampler=build_sampler(sweep, seed),
                              pruner=build_pruner(sweep))
    lock = budget_lock(st.url, sweep.study.name)
    objective = _Objective(sweep, tracker, parent_run_id, lock, device)
    deadline = None if sweep.study.timeout is None else time.monotonic() + sweep.study.timeout
    ran = 0

    def progress(study_: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        out(tag + trial_line(t, sweep.study.metric, sweep.epochs))

    sampler = study.sampler
    loaded = False
    try:
        while deadline is None or time.monotonic() < deadline:
            if isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study):
                break
            if not loaded:
                f, r, w = _budget(study)
                if w or f + r < sweep.study.n_trials:
                    # Memoized: decoded once per process, before its first trial (a DataError stops the sweep).
                    load_data(sweep.base.data, resolve_device(device or sweep.base.train.device))
                    loaded = True
            lock.acquire()
            finished, running, waiting = _budget(study)
            if waiting == 0 and finished + running >= sweep.study.n_trials:
                lock.release()
                if running == 0:
                    break
                # Others are still running: wait for them, or for their heartbeats to go stale
                # (then their trials come back WAITING and this worker runs them).
                time.sleep(min(2.0, st.heartbeat_interval))
                with _quiet():
                    optuna.storages.fail_stale_trials(study)
                continue
            try:
                study.optimize(objective, n_trials=1, catch=(_TrialFailed,), callbacks=[progress])
            finally:
                lock.release()
            ran += 1
    finally:
        lock.close()
    return ran


class _Objective:
    def __init__(self, sweep: SweepConfig, tracker: Tracker, parent: str | None, lock: Any,
                 device: str | None = None):
        self.sweep, self.tracker, self.parent, self.lock, self.device = sweep, tracker, parent, lock, device
        self.metric = sweep.study.metric
        self.maximize = sweep.study.direction == "maximize"

    def __call__(self, trial: optuna.Trial) -> float:
        from vitsweep.trainer import train

        t_start = time.perf_counter()
        self.lock.release()  # the trial is RUNNING in storage now: other workers may count it
        sweep, metric = self.sweep, self.metric
        clock = {"train_s": 0.0, "callbacks_s": 0.0}
        run_id: str | None = None
        state, reason, value = "FAIL", "", None
        seen: list[float] = []
        run_dir = Path(sweep.trials.dir) / sweep.study.name / str(trial.number)
        predecessors = list(_system_attrs(trial).get("retry_history", []))  # a retried trial's earlier tries
        requeued = False
        try:
            try:
                config = space_mod.suggest(trial, sweep)
            except ConfigError as e:
                run_id = self.tracker.start_trial(self.parent, sweep.study.name, trial.number, None, trial.params)
                if run_id:
                    trial.set_user_attr(RUN_ATTR, run_id)
                raise _TrialFailed(f"bad sampled combination: {_one_line(e)}") from None
            if self.device is not None:
                config = config.replace(**{"train.device": self.device})
            run_id = self.tracker.start_trial(self.parent, sweep.study.name, trial.number, config, trial.params)
            attrs = {"run_dir": str(run_dir)} if config.train.checkpoint else {}
            if run_id:
                attrs[RUN_ATTR] = run_id
            for k, v in attrs.items():
                trial.set_user_attr(k, v)

            def report(epoch: int, m: dict[str, float], resumed: bool = False) -> None:
                v = float(m[metric])
                if not math.isfinite(v):
                    return  # the trainer returns "diverged" right after this epoch
                seen.append(v)
                trial.report(v, epoch)
                # After the last epoch, pruning would save nothing and only hide a finished result.
                if epoch < config.train.epochs and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}/{config.train.epochs} ({metric} {v:.4f})"
                                             + (" (epochs re-reported after resuming)" if resumed else ""))

            def on_epoch(epoch: int, m: dict[str, float]) -> None:
                t = time.perf_counter()
                try:
                    self.tracker.log_epoch(run_id, epoch, m)
                    report(epoch, m)
                finally:
                    clock["callbacks_s"] += time.perf_counter() - t

            resumed = self._resume(trial, run_dir, run_id, predecessors) if config.train.checkpoint else None
            if resumed:
                # The pruner sees the epochs the dead worker trained as this trial's own: report
                # them again (and log them to this trial's MLflow run), checking for pruning after
                # each as if they ran now.
                for m in resumed:
                    self.tracker.log_epoch(run_id, int(m["epoch"]), m)
                    report(int(m["epoch"]), m, resumed=True)
            t_train = time.perf_counter()
            try:
                result = train(config, on_epoch, run_dir=run_dir if config.train.checkpoint else None,
                               resume=bool(resumed))
            finally:
                clock["train_s"] = time.perf_counter() - t_train
            if result.stop_reason == "diverged":
                raise _TrialFailed(f"diverged: non-finite loss at epoch {result.epochs_run}")
            values = [float(h[metric]) for h in result.history if math.isfinite(float(h[metric]))]
            if not values:
                raise _TrialFailed(f"no finite {metric} was measured")
            value = max(values) if self.maximize else min(values)
            state, reason = "COMPLETE", result.stop_reason
            return value
        except optuna.TrialPruned as e:
            state, reason, value = "PRUNED", str(e), (seen[-1] if seen else None)
            raise
        except _TrialFailed as e:
            reason = str(e)
            trial.set_user_attr(REASON_ATTR, reason)
            raise
        except KeyboardInterrupt:
            reason = "interrupted (Ctrl-C); re-queued"
            with contextlib.suppress(Exception):
                trial.set_user_attr(REASON_ATTR, reason)
                self._requeue(trial)
                requeued = True  # its checkpoint stays: the re-queued trial resumes from it
            raise
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - out of memory, a trainer error...: record it and go on
            reason = f"{type(e).__name__}: {_one_line(e)}"
            if "out of memory" in str(e).lower():
                reason = f"out of memory: {_one_line(e)}"
            trial.set_user_attr(REASON_ATTR, reason)
            raise _TrialFailed(reason) from e
        finally:
            if not sweep.trials.keep_checkpoints and not requeued:
                # The trial has ended: its checkpoints go, and those of the earlier tries it resumed.
                for d in [run_dir, *(run_dir.parent / str(n) for n in predecessors)]:
                    shutil.rmtree(d, ignore_errors=True)
            with contextlib.suppress(Exception):
                self.tracker.end_trial(run_id, state, reason, value, metric,
                                       {"trainer_s": clock["train_s"] - clock["callbacks_s"]})
            TIMINGS.append({"number": trial.number, "trial_s": time.perf_counter() - t_start, **clock})

    def _resume(self, trial: optuna.Trial, run_dir: Path, run_id: str | None,
                predecessors: list[int]) -> list[dict[str, float]] | None:
        """A retried trial (its worker died, or was interrupted): copy the latest earlier try's
        checkpoint folder into this trial's ``run_dir`` and return the epochs it holds (None: start
        from scratch). Records ``retry_of``/``resumed_from_epoch`` in the trial's user attrs and as
        MLflow tags ``vitsweep.retry_of``, ``vitsweep.retry_of_run``, ``vitsweep.resumed_from_epoch``."""
        from vitsweep.checkpoint import load_checkpoint

        if not predecessors:
            return None
        by_number = {t.number: t for t in trial.study.get_trials(deepcopy=False)}
        previous = predecessors[-1]
        tags = {"vitsweep.retry_of": str(previous)}
        prev_run = by_number[previous].user_attrs.get(RUN_ATTR) if previous in by_number else None
        if prev_run:
            tags["vitsweep.retry_of_run"] = prev_run
        trial.set_user_attr("retry_of", previous)
        history: list[dict[str, float]] | None = None
        for n in reversed(predecessors):  # the latest try that left a checkpoint
            t = by_number.get(n)
            src = Path(t.user_attrs["run_dir"]) if t is not None and "run_dir" in t.user_attrs \
                else run_dir.parent / str(n)
            if not (src / "last.pt").is_file():
                continue
            try:
                state = load_checkpoint(src / "last.pt")["state"]
            except VitsweepError:
                continue  # damaged (killed mid-copy?): try an earlier one, or start from scratch
            if run_dir.exists():
                shutil.rmtree(run_dir)
            shutil.copytree(src, run_dir)
            history = [dict(m) for m in state["history"]]
            trial.set_user_attr("resumed_from_epoch", int(state["epoch"]))
            trial.set_user_attr("resumed_from", str(src))
            tags["vitsweep.resumed_from_epoch"] = str(int(state["epoch"]))
            tags["vitsweep.resumed_from_trial"] = str(n)
            break
        else:
            trial.set_user_attr("resumed_from_epoch", 0)
            tags["vitsweep.resumed_from_epoch"] = "0"
        self.tracker.set_tags(run_id, tags)
        return history or None

    @staticmethod
    def _requeue(trial: optuna.Trial) -> None:
        """An interrupted trial runs again on the next ``vitsweep run`` (same params)."""
        study = trial.study
        history = [*_system_attrs(trial).get("retry_history", []), trial.number]
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            system_attrs={"failed_trial": history[0], "retry_history": history}))


def _system_attrs(trial: optuna.Trial) -> dict[str, Any]:
    """A running trial's system attrs (``optuna.Trial`` has no public accessor for them)."""
    return trial.storage.get_trial_system_attrs(trial._trial_id)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _print(line: str) -> None:
    print(line, flush=True)


# ---------------------------------------------------------------------------------------------
# Reporting


def trial_line(t: optuna.trial.FrozenTrial, metric: str, epochs: int) -> str:
    value = "-" if t.value is None else f"{t.value:.4f}"
    secs = t.duration.total_seconds() if t.duration else 0.0
    reason = t.user_attrs.get(REASON_ATTR, "")
    line = (f"trial {t.number:>3}  {t.state.name:<8}  {metric} {value:>6}  "
            f"epochs {len(t.intermediate_values)}/{epochs}  {secs:6.1f}s  {space_mod.describe_params(t.params)}")
    return line + (f"  ({reason})" if reason and t.state == TrialState.FAIL else "")


def summarize(study: optuna.Study, parent: str | None, wall: float, interrupted: bool = False) -> SweepSummary:
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    try:
        best = study.best_trial
    except ValueError:
        best = None
    lines = [f"{'interrupted' if interrupted else 'done'}: study {study.study_name}, {len(trials)} trial(s) "
             f"({', '.join(f'{v} {k.lower()}' for k, v in sorted(counts.items()))}) in {wall:.1f}s"]
    if best is not None:
        lines.append(f"best: trial {best.number}, value {best.value:.4f}, "
                     f"{space_mod.describe_params(best.params)}")
    if parent:
        lines.append(f"MLflow parent run: {parent}  (vitsweep ui)")
    return SweepSummary(study.study_name, counts, best.number if best else None, best.value if best else None,
                        dict(best.params) if best else {}, parent, wall, interrupted, lines)


def trials_table(study: optuna.Study):  # -> pandas.DataFrame
    """One row per trial: number, state, value, epochs, duration_s, params..., reason, mlflow_run_id."""
    import pandas as pd

    trials = study.get_trials(deepcopy=False)
    retried_as = {}
    for t in trials:
        hist = t.system_attrs.get("retry_history", [])
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


def show_trials(study_name: str | None, storage: str, csv: Path | None) -> None:
    """``vitsweep trials``: print the table (and write a CSV)."""
    import pandas as pd

    study = load_study(study_name, storage)
    df = trials_table(study)
    print(f"study {study.study_name} ({storage}): {len(df)} trial(s)")
    if df.empty:
        return
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                           "display.float_format", "{:.4g}".format):
        print(df.drop(columns=["mlflow_run_id"]).to_string())
    if csv is not None:
        csv.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(csv)
        print(f"wrote {csv}")


# ---------------------------------------------------------------------------------------------
# Servers


def dashboard(storage: str = DEFAULT_STORAGE, host: str = "127.0.0.1", port: int = 8080) -> None:
    """``vitsweep dashboard``: the real optuna-dashboard server on the sweep storage (blocks)."""
    import optuna_dashboard

    open_storage(storage)  # a missing SQLite file is an error, not a new empty database
    print(f"optuna-dashboard for {storage} on http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
    optuna_dashboard.run_server(storage, host=host, port=port)


def ui(tracking_uri: str = DEFAULT_TRACKING, host: str = "127.0.0.1", port: int = 5000) -> int:
    """``vitsweep ui``: the real MLflow server (UI + REST API) on the tracking store (blocks)."""
    import subprocess

    if tracking_uri.startswith(("http://", "https://")):
        raise VitsweepError(f"the tracking store {tracking_uri} is an MLflow server already: open it in a "
                            f"browser (its UI is at that address), or pass --tracking-uri with a database URI")
    path = sqlite_path(tracking_uri)
    if path is not None and not path.is_file():
        raise VitsweepError(f"no MLflow store at {tracking_uri} ({path} does not exist); run a sweep first")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    print(f"MLflow UI for {tracking_uri} on http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
