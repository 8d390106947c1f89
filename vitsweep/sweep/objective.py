"""One trial's life (Optuna's objective): sample the config, open its MLflow run, resume an earlier
try's checkpoint, train with ``train_fn`` while reporting every epoch (pruning raises
``optuna.TrialPruned`` from the trainer's ``on_epoch`` callback), then record how it ended.

How a trial ends, and what it leaves:
- COMPLETE: its best epoch's metric; PRUNED: the last reported value and "pruned at epoch N/M: ..."
  (the pruner's bracket, rung, the value needed and the trial's rank: ``why.why_pruned``).
- FAIL for a recorded reason (``TrialFailed``; the sweep goes on): a bad sampled combination, a
  diverged loss, no finite metric, or any trainer error (out of memory...).
- Ctrl-C: recorded as interrupted and re-queued (its checkpoint stays: the retry resumes from it).
- A ``DataError`` stops the sweep (every trial would fail the same way).
Its checkpoints (and those of the earlier tries it resumed) are deleted unless the sweep keeps them.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna

from vitsweep.train.config import Config
from vitsweep import signals
from vitsweep.errors import ConfigError, DataError, one_line
from vitsweep.sweep.resume import requeue, resume, retry_history
from vitsweep.sweep.space import suggest
from vitsweep.sweep.spec import SweepConfig
from vitsweep.sweep.why import why_pruned
from vitsweep.tracking.tags import EPOCHS_METRIC, FLOPS_ATTR, REASON_ATTR
from vitsweep.units import fmt_metric
from vitsweep.tracking.runs import Tracker
from vitsweep.tracking.tags import RUN_ATTR, RUN_DIR_ATTR
from vitsweep.train.checkpoint import BEST
from vitsweep.train.loop import TrainResult

# The training function a sweep runs: ``vitsweep.train.loop.train`` or anything with its signature.
TrainFn = Callable[..., TrainResult]


class TrialFailed(Exception):
    """A trial that failed for a recorded reason; the sweep goes on."""


@dataclass
class _Ending:
    """What a trial's MLflow run is ended with."""

    state: str = "FAIL"
    reason: str = ""
    value: float | None = None
    run_id: str | None = None
    seen: list[float] = field(default_factory=list)  # the values reported so far
    train_s: float = 0.0  # in train_fn, callbacks included
    callbacks_s: float = 0.0  # in on_epoch (MLflow writes, reporting, pruning checks)
    flops: float = 0.0  # the trainer's compute estimate at its last reported epoch


class Objective:
    """The objective of a trial the worker loop asked for (``vitsweep.sweep.optimize.run_trial``).
    ``device`` (the worker's place) replaces the trials' ``train.device``. ``on_epoch(trial number,
    epoch, metrics)`` runs after each epoch that was not pruned (the worker's live status line)."""

    def __init__(self, sweep: SweepConfig, tracker: Tracker, parent: str | None, train_fn: TrainFn,
                 device: str | None = None,
                 on_epoch: Callable[[int, int, dict[str, float]], None] | None = None):
        self.sweep, self.tracker, self.parent, self.train_fn = sweep, tracker, parent, train_fn
        self.on_epoch = on_epoch  # (trial number, epoch, metrics) after each epoch is reported: a live status
        self.device = device  # from the worker placement plan: replaces the trials' train.device
        self.metric = sweep.study.metric
        self.maximize = sweep.study.direction == "maximize"

    def __call__(self, trial: optuna.Trial) -> float:
        end = _Ending()
        run_dir = Path(self.sweep.trials.dir) / self.sweep.study.name / str(trial.number)
        predecessors = retry_history(trial)  # a retried trial's earlier tries
        requeued = False
        shield = contextlib.ExitStack()  # after an interrupt: no second signal until the trial is put away
        try:
            return self._run(trial, run_dir, predecessors, end)
        except optuna.TrialPruned as e:
            end.state, end.reason, end.value = "PRUNED", str(e), (end.seen[-1] if end.seen else None)
            with contextlib.suppress(Exception):
                trial.set_user_attr(REASON_ATTR, end.reason)  # vitsweep trials, the report, the dashboard
            raise
        except TrialFailed as e:
            end.reason = str(e)
            trial.set_user_attr(REASON_ATTR, end.reason)
            raise
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: re-queued exactly once, whatever comes next
            shield.enter_context(signals.shielded())
            end.reason = f"{signals.describe(e)}; re-queued"
            with contextlib.suppress(Exception):
                trial.set_user_attr(REASON_ATTR, end.reason)
                requeue(trial)
                requeued = True  # its checkpoint stays: the re-queued trial resumes from it
            raise
        except DataError as e:  # stops the sweep (every trial would fail the same way): the trial says why
            end.reason = f"data error: {one_line(e)}"
            with contextlib.suppress(Exception):
                trial.set_user_attr(REASON_ATTR, end.reason)
            raise
        except Exception as e:  # noqa: BLE001 - out of memory, a trainer error...: record it and go on
            end.reason = f"{type(e).__name__}: {one_line(e)}"
            if "out of memory" in str(e).lower():
                end.reason = f"out of memory: {one_line(e)}"
            trial.set_user_attr(REASON_ATTR, end.reason)
            raise TrialFailed(end.reason) from e
        finally:
            if not self.sweep.trials.keep_checkpoints and not requeued:
                # The trial has ended: its checkpoints go, and those of the earlier tries it resumed;
                # a complete trial on a constant-lr trunk keeps its last.pt (promote continues it).
                keep_trunk = end.state == "COMPLETE" and bool(self.sweep.base.schedule.branches)
                for d in [*([] if keep_trunk else [run_dir]), *(run_dir.parent / str(n) for n in predecessors)]:
                    shutil.rmtree(d, ignore_errors=True)
                if keep_trunk:
                    (run_dir / BEST).unlink(missing_ok=True)
            with contextlib.suppress(Exception):
                if end.flops and not requeued:  # compute spent, for the report's best-vs-compute plot
                    trial.set_user_attr(FLOPS_ATTR, end.flops)
            with contextlib.suppress(Exception):
                self.tracker.end_trial(end.run_id, end.state, end.reason, end.value, self.metric,
                                       {"trainer_s": end.train_s - end.callbacks_s, EPOCHS_METRIC: len(end.seen)})
            shield.close()

    def _run(self, trial: optuna.Trial, run_dir: Path, predecessors: list[int], end: _Ending) -> float:
        config = self._start(trial, run_dir, end)
        report = self._reporter(trial, config, end)

        def on_epoch(epoch: int, m: dict[str, float]) -> None:
            t = time.perf_counter()
            try:
                self.tracker.log_epoch(end.run_id, epoch, m)
                report(epoch, m)
                if self.on_epoch is not None:
                    self.on_epoch(trial.number, epoch, m)
            finally:
                end.callbacks_s += time.perf_counter() - t

        checkpoint = config.train.checkpoint
        resumed = resume(trial, run_dir, self.tracker, end.run_id, predecessors) if checkpoint else None
        if resumed:
            # The pruner sees the epochs the dead worker trained as this trial's own: report them
            # again (and log them to this trial's MLflow run), checking for pruning after each as
            # if they ran now.
            for m in resumed:
                self.tracker.log_epoch(end.run_id, int(m["epoch"]), m)
                report(int(m["epoch"]), m, resumed=True)
        t_train = time.perf_counter()
        try:
            result = self.train_fn(config, on_epoch, run_dir=run_dir if checkpoint else None, resume=bool(resumed))
        finally:
            end.train_s = time.perf_counter() - t_train
        if result.stop_reason == "diverged":
            raise TrialFailed(f"diverged: non-finite loss at epoch {result.epochs_run}")
        values = [v for h in result.history if math.isfinite(v := reported(h, self.metric))]
        if not values:
            raise TrialFailed(f"no finite {self.metric} was measured")
        end.value = max(values) if self.maximize else min(values)
        end.state, end.reason = "COMPLETE", result.stop_reason
        return end.value

    def _start(self, trial: optuna.Trial, run_dir: Path, end: _Ending) -> Config:
        """Sample the trial's config and open its MLflow run (also for a bad sampled combination)."""
        sweep = self.sweep
        try:
            config = suggest(trial, sweep)
        except ConfigError as e:
            end.run_id = self.tracker.start_trial(self.parent, sweep.study.name, trial.number, None, trial.params)
            if end.run_id:
                trial.set_user_attr(RUN_ATTR, end.run_id)
            raise TrialFailed(f"bad sampled combination: {one_line(e)}") from None
        if self.device is not None:
            config = config.replace(**{"train.device": self.device})
        end.run_id = self.tracker.start_trial(self.parent, sweep.study.name, trial.number, config, trial.params)
        attrs: dict[str, Any] = {RUN_DIR_ATTR: str(run_dir)} if config.train.checkpoint else {}
        if end.run_id:
            attrs[RUN_ATTR] = end.run_id
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        return config

    def _reporter(self, trial: optuna.Trial, config: Config, end: _Ending) -> Callable[..., None]:
        """Report an epoch's metric to Optuna and raise ``TrialPruned`` when the pruner says so."""
        metric, epochs = self.metric, config.train.epochs

        def report(epoch: int, m: dict[str, float], resumed: bool = False) -> None:
            v = reported(m, metric)
            end.flops = float(m.get("flops", end.flops))
            if not math.isfinite(v):
                return  # the trainer returns "diverged" right after this epoch
            end.seen.append(v)
            trial.report(v, epoch)
            # After the last epoch, pruning would save nothing and only hide a finished result.
            if epoch < epochs and trial.should_prune():
                why = why_pruned(trial.study, trial._trial_id, epoch, v, metric) or f"{metric} {fmt_metric(v, metric)}"
                raise optuna.TrialPruned(f"pruned at epoch {epoch}/{epochs}: {why}"
                                         + (" (epochs re-reported after resuming)" if resumed else ""))

        return report


def reported(m: dict[str, float], metric: str) -> float:
    """The value a trial reports for an epoch: a cooldown branch's (a finished model's) where the
    epoch has one, else the trunk's."""
    return float(m.get(f"cooldown_{metric}", m[metric]))
