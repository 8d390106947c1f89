"""MLflow logging for sweeps, with ``MlflowClient`` and explicit run ids (no active-run globals).

One parent run per study (its id lives in the study's user attrs ``mlflow_parent_run_id``, so a
resumed study reuses it), one nested run per trial (tag ``mlflow.parentRunId``; its id lives in the
trial's user attrs ``mlflow_run_id``). Trial state goes into the run status (FINISHED complete,
KILLED pruned, FAILED failed) and into the tags ``vitsweep.trial_state`` / ``vitsweep.reason``.
"""

from __future__ import annotations

import platform
import queue
import threading
import time
import warnings
from typing import Any

from mlflow.entities import Metric, Param as MParam, RunTag

from vitsweep.train.config import Config
from vitsweep.paths import tracking_off
from vitsweep.tracking.client import (PROMOTED_VIEW_TAG, VIEW_TAG, experiment_id, open_client, promoted_view, runs_view,
                                      trial_metric_key)
from vitsweep.tracking.tags import (BEST_PREFIX, BOOKKEEPING_PREFIX, MODEL_METRIC_PREFIXES, PERCENT_SUFFIX, KIND_SWEEP, KIND_TRIAL, RUN_STATUS, TAG_KIND, TAG_NOTE, TAG_PARENT, TAG_REASON,
                                    TAG_STATE, TAG_STUDY, TAG_TRIAL, TAG_VALUE_MAX)


def hardware_tags(device: str | None) -> dict[str, str]:
    """torch and Python versions, host, and the device a run trains on."""
    import torch

    from vitsweep.train.device import device_name, resolve_device

    tags = {"torch.version": torch.__version__, "python.version": platform.python_version(),
            "host": platform.node()}
    try:
        tags["hardware.device"] = device_name(resolve_device(device or "auto"))
    except Exception:  # noqa: BLE001 - a tag must never fail a trial
        tags["hardware.device"] = str(device)
    return tags


def percent(value: float, metric: str) -> float:
    """An accuracy (a fraction) in percent, for the metric a person reads; other metrics as they are."""
    return 100.0 * value if "acc" in metric else value


def with_percent(metrics: dict[str, float]) -> dict[str, float]:
    """An epoch's metrics and, for each accuracy, the same in percent as ``<name>_pct``
    (``val_acc_pct``): the charts a person reads on the run page say percent, while ``val_acc``
    stays the fraction Optuna ranks by."""
    return {**metrics, **{f"{k}{PERCENT_SUFFIX}": percent(v, k) for k, v in metrics.items()
                          if "acc" in k and k != "epoch" and v is not None}}


def chart_order(metrics: dict[str, float]) -> dict[str, float]:
    """A trial's metrics as logged: the trainer's bookkeeping (lr, images_per_sec, epoch_time, flops,
    trainer_s, epochs_run) under ``run/``, so the run page charts train_*/val_* first."""
    return {k if k == "epoch" or k.startswith(MODEL_METRIC_PREFIXES) else BOOKKEEPING_PREFIX + k: v
            for k, v in metrics.items()}


def metrics_at(metrics: dict[str, float], step: int = 0) -> list[Metric]:
    """MLflow metrics stamped now at ``step`` (``epoch`` is the step, not a metric)."""
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in metrics.items() if k != "epoch"]


def params_of(flat: dict[str, Any]) -> list[list[MParam]]:
    """A flat config as MLflow params, in batches of 100 (MLflow's limit per call)."""
    items = [MParam(k, str(list(v) if isinstance(v, tuple) else v)) for k, v in flat.items()]
    return [items[i : i + 100] for i in range(0, len(items), 100)]


class _Background:
    """One thread that performs MLflow writes in the order they were asked for, off the
    trainer's path (the next epoch trains while the last one's metrics are written)."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.error: Exception | None = None
        threading.Thread(target=self._run, name="vitsweep-mlflow", daemon=True).start()

    def _run(self) -> None:
        while True:
            fn, args, kwargs = self.queue.get()
            try:
                fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - reported by flush()
                self.error = self.error or e
            finally:
                self.queue.task_done()

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        self.queue.put((fn, args, kwargs))

    def flush(self) -> None:
        """Wait until every write asked for so far is done; raise the first that failed."""
        self.queue.join()
        if self.error is not None:
            error, self.error = self.error, None
            raise error


class Tracker:
    """MLflow for one sweep; ``uri="none"`` makes every method a no-op. With ``background``,
    a trial's params, per-epoch metrics and tags are written by a background thread, in order;
    ``end_trial`` waits for them before it ends the run."""

    def __init__(self, uri: str, experiment: str, artifacts: str, background: bool = False):
        self.uri, self.experiment_name, self.enabled = uri, experiment, not tracking_off(uri)
        self.client: Any = None
        self.experiment_id: str | None = None
        self._names: dict[str, str] = {}  # run id -> name, for the trials this process started
        self._bg: _Background | None = None
        if not self.enabled:
            return
        if background:
            self._bg = _Background()
        self.client = open_client(uri)
        self.experiment_id = experiment_id(self.client, uri, experiment, artifacts)

    # -- parent ---------------------------------------------------------------------------------

    def parent_run(self, study_name: str, existing: str | None, tags: dict[str, str]) -> str | None:
        """The sweep's parent run: reuse ``existing`` (set back to RUNNING) or create it."""
        if not self.enabled:
            return None
        if existing:
            try:
                self.client.get_run(existing)
                self.client.update_run(existing, status="RUNNING")
                return existing
            except Exception:  # noqa: BLE001 - deleted or a different tracking store: start anew
                pass
        run = self.client.create_run(self.experiment_id, run_name=study_name,
                                     tags={TAG_STUDY: study_name, TAG_KIND: KIND_SWEEP, **tags, **hardware_tags(None)})
        return run.info.run_id

    def set_runs_view(self, parent_id: str | None, metric: str, params: list[str], maximize: bool = True) -> None:
        """Save the experiment's "vitsweep: trials" view of the runs table (:func:`runs_view`), with
        this sweep's parent run unfolded; the UI opens it from the Views menu or ``runs_url(view=True)``."""
        if not self.enabled:
            return
        self.client.set_experiment_tag(self.experiment_id, VIEW_TAG, runs_view(metric, params, maximize=maximize))
        self.client.set_experiment_tag(self.experiment_id, PROMOTED_VIEW_TAG, promoted_view())

    def end_parent(self, run_id: str | None, status: str | None, metrics: dict[str, float],
                   tags: dict[str, str] | None = None) -> None:
        """Log the sweep's metrics (and tags); end the run with ``status`` (None: leave it RUNNING,
        as workers on other hosts still run trials; the last one to finish ends it)."""
        if not self.enabled or not run_id:
            return
        self.client.log_batch(run_id, metrics=metrics_at(metrics),
                              tags=[RunTag(k, v) for k, v in (tags or {}).items()])
        if status is not None:
            self.client.set_terminated(run_id, status=status)

    # -- trials ---------------------------------------------------------------------------------

    def start_trial(self, parent_id: str | None, study_name: str, number: int, config: Config | None,
                    params: dict[str, Any]) -> str | None:
        """A nested run for a trial, with the resolved config flattened as params (only the sampled
        params when no valid config could be built from them)."""
        if not self.enabled:
            return None
        tags = {TAG_STUDY: study_name, TAG_TRIAL: str(number), TAG_STATE: "RUNNING",
                TAG_KIND: KIND_TRIAL, **hardware_tags(config.train.device if config else None)}
        if parent_id:
            tags[TAG_PARENT] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=f"{study_name}-trial-{number}", tags=tags)
        self._names[run.info.run_id] = run.info.run_name
        flat = config.flat() if config is not None else {f"sampled.{k}": v for k, v in params.items()}
        for batch in params_of(flat):
            self._write(self.client.log_batch, run.info.run_id, params=batch)
        return run.info.run_id

    def _write(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self._bg is not None:
            self._bg.submit(fn, *args, **kwargs)
        else:
            fn(*args, **kwargs)

    def flush(self) -> None:
        """Wait for the background writes (no-op without ``background``)."""
        if self._bg is not None:
            self._bg.flush()

    def log_epoch(self, run_id: str | None, epoch: int, metrics: dict[str, float]) -> None:
        if not self.enabled or not run_id:
            return
        self._write(self.client.log_batch, run_id, metrics=metrics_at(chart_order(with_percent(metrics)), epoch))

    def set_tags(self, run_id: str | None, tags: dict[str, str]) -> None:
        if not self.enabled or not run_id or not tags:
            return
        self._write(self.client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end_trial(self, run_id: str | None, state: str, reason: str = "", value: float | None = None,
                  metric: str = "value", extra: dict[str, float] | None = None) -> None:
        """End a trial's run: status from the Optuna state, tags with state and reason."""
        if not self.enabled or not run_id:
            return
        tags = [RunTag(TAG_STATE, state), RunTag(TAG_REASON, reason[:TAG_VALUE_MAX] or state.lower())]
        if reason and state in ("PRUNED", "FAIL"):  # the run page's description: the whole reason, on top
            tags.append(RunTag(TAG_NOTE, f"{state.lower()}: {reason}"[:TAG_VALUE_MAX]))
        name = self._names.pop(run_id, None)
        if state == "PRUNED" and name:  # MLflow shows a pruned run as "Killed", like a failure: say it in the name
            tags.append(RunTag("mlflow.runName", f"{name} (pruned)"))
        best = {} if value is None else {f"{BEST_PREFIX}{metric}": value, trial_metric_key(metric): percent(value, metric)}
        metrics = metrics_at({**best, **chart_order(extra or {})})
        try:
            try:
                self.flush()
            except Exception as e:  # noqa: BLE001 - the run still gets its end state below
                warnings.warn(f"MLflow: some params/metrics of run {run_id} could not be logged: {e}", stacklevel=2)
            self.client.log_batch(run_id, metrics=metrics, tags=tags)
        finally:
            self.client.set_terminated(run_id, status=RUN_STATUS.get(state, "FAILED"))
