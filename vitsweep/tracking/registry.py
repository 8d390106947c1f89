"""The promotion's MLflow records and the model registry, with ``MlflowClient`` and explicit run
ids (no active-run globals); ``uri="none"``: every method is a no-op.

A parent run per ``vitsweep promote`` invocation (kind ``promotion``); a nested run per config and
seed (kind ``promoted``), found again by its key tag so that a resumed promotion reuses it; on
publishing: final metrics, ``checkpoint/best.pt``, ``evaluation/*``, and the model registered as a
version of ``vitsweep-<study>``; the best version gets the alias ``champion``.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature

from vitsweep.train.config import Config
from vitsweep.train.checkpoint import load_model
from vitsweep.tracking.artifacts import log_checkpoint
from vitsweep.tracking.client import quiet
from vitsweep.tracking.runs import Tracker, metrics_at, params_of
from vitsweep.tracking.tags import (CHAMPION, MODEL_PREFIX, PERCENT_SUFFIX, KIND_PARENT, KIND_RUN, TAG_KEY, TAG_KIND, TAG_PARENT, TAG_PUBLISHED,
                                    TAG_PREVIOUS_PARENT, TAG_REASON, TAG_SEED, TAG_STOP, TAG_STUDY, TAG_TRIAL)
from vitsweep.tracking.runs import hardware_tags


class Promotion:
    """MLflow for one promotion of ``study``."""

    def __init__(self, uri: str, experiment: str, artifacts: str, study: str):
        self.tracker = Tracker(uri, experiment, artifacts)
        self.enabled, self.uri, self.client = self.tracker.enabled, uri, self.tracker.client
        self.study, self.model_name = study, f"{MODEL_PREFIX}{study}"
        self.parent: str | None = None

    def start_parent(self, tags: dict[str, str]) -> str | None:
        if not self.enabled:
            return None
        # Promotions of this study are serialised by a file lock, so one still RUNNING died.
        for r in self._search(f"tags.`{TAG_KIND}` = '{KIND_PARENT}' and tags.`{TAG_STUDY}` = '{self.study}' "
                              f"and attributes.status = 'RUNNING'"):
            with contextlib.suppress(Exception):
                self.client.set_tag(r.info.run_id, TAG_REASON, "its process died (found RUNNING later)")
                self.client.set_terminated(r.info.run_id, status="KILLED")
        run = self.client.create_run(self.tracker.experiment_id,
                                     run_name=f"{self.study}-promote-{time.strftime('%Y%m%d-%H%M%S')}",
                                     tags={TAG_KIND: KIND_PARENT, TAG_STUDY: self.study, **tags, **hardware_tags(None)})
        self.parent = run.info.run_id
        return self.parent

    def end_parent(self, status: str, metrics: dict[str, float] | None = None, files: list[Path] = ()) -> None:
        if not self.enabled or not self.parent:
            return
        try:
            if metrics:
                self.client.log_batch(self.parent, metrics=metrics_at(
                    {k: v for k, v in metrics.items() if v is not None and math.isfinite(v)}))
            for f in files:
                if f.is_file():
                    self.client.log_artifact(self.parent, str(f), artifact_path="leaderboard")
        finally:
            self.client.set_terminated(self.parent, status=status)

    def _search(self, filter_string: str) -> list[Any]:
        return self.client.search_runs([self.tracker.experiment_id], filter_string=filter_string,
                                       max_results=1000, order_by=["attributes.start_time DESC"])

    def run_for(self, key: str, trial: int, seed: int, cfg: Config, tags: dict[str, str],
                fresh: bool) -> tuple[str | None, bool]:
        """The nested run of this config and seed: (run id, already published). An existing one
        (found by its ``key`` tag) is reused and moved under this invocation's parent, unless the
        run starts from scratch (``fresh``: its folder was deleted): then the old one is set aside.
        A new run gets ``tags`` and the config as params."""
        if not self.enabled:
            return None, False
        found = self._search(f"tags.`{TAG_KIND}` = '{KIND_RUN}' and tags.`{TAG_STUDY}` = '{self.study}' "
                             f"and tags.`{TAG_KEY}` = '{key}'")
        if found and fresh:
            for run in found:
                self.client.set_tag(run.info.run_id, TAG_KEY, f"{key}-superseded")
                self.client.set_tag(run.info.run_id, TAG_REASON, "superseded: its run folder was deleted "
                                                                 "and the run started again")
                if run.info.status == "RUNNING":
                    self.client.set_terminated(run.info.run_id, status="KILLED")
            found = []
        if found:
            return self._adopt(found[0])
        tags = {TAG_KIND: KIND_RUN, TAG_STUDY: self.study, TAG_TRIAL: str(trial), TAG_SEED: str(seed),
                TAG_KEY: key, **tags, **hardware_tags(cfg.train.device)}
        if self.parent:
            tags[TAG_PARENT] = self.parent
        run = self.client.create_run(self.tracker.experiment_id, run_name=f"{self.study}-trial{trial}-seed{seed}",
                                     tags=tags)
        for batch in params_of(cfg.flat()):
            self.client.log_batch(run.info.run_id, params=batch)
        return run.info.run_id, False

    def _adopt(self, run: Any) -> tuple[str, bool]:
        """An earlier invocation's run, moved under this invocation's parent."""
        rid = run.info.run_id
        old_parent = run.data.tags.get(TAG_PARENT)
        if self.parent and old_parent != self.parent:
            self.client.set_tag(rid, TAG_PARENT, self.parent)
            if old_parent:
                self.client.set_tag(rid, TAG_PREVIOUS_PARENT, old_parent)
        published = run.data.tags.get(TAG_PUBLISHED) == "true" and run.info.status == "FINISHED"
        return rid, published

    def set_running(self, run_id: str | None) -> None:
        if self.enabled and run_id:
            self.client.update_run(run_id, status="RUNNING")

    def log_epoch(self, run_id: str | None, epoch: int, metrics: dict[str, float]) -> None:
        self.tracker.log_epoch(run_id, epoch, metrics)

    def end(self, run_id: str | None, status: str, reason: str = "") -> None:
        if not self.enabled or not run_id:
            return
        with contextlib.suppress(Exception):
            if reason:
                self.client.set_tag(run_id, TAG_REASON, reason[:4000])
        self.client.set_terminated(run_id, status=status)

    def publish(self, run_id: str | None, history: list[dict[str, float]], final: dict[str, float],
                stop_reason: str, run_dir: Path, model_tags: dict[str, Any]) -> None:
        """Final metrics, artifacts and the registered model; then FINISHED. Safe to repeat after a
        kill: missing epochs are filled in, a model already registered for the run is not again."""
        if not self.enabled or not run_id:
            return
        client = self.client
        logged = {m.step for m in client.get_metric_history(run_id, "val_acc")}
        for h in history:  # epochs logged before a kill are there already
            if int(h["epoch"]) not in logged:
                self.log_epoch(run_id, int(h["epoch"]), h)
        pct = {f"{k}{PERCENT_SUFFIX}": 100.0 * v for k, v in final.items() if "acc" in k and v is not None}
        client.log_batch(run_id, metrics=metrics_at({**final, **pct}))  # *_pct: what the "vitsweep: promoted" view shows
        client.set_tag(run_id, TAG_STOP, stop_reason)
        if (run_dir / "best.pt").is_file():
            log_checkpoint(client, run_id, run_dir / "best.pt")
        for name in ("confusion_matrix.csv", "confusion_matrix.png", "result.json"):
            if (run_dir / name).is_file():
                client.log_artifact(run_id, str(run_dir / name), artifact_path="evaluation")
        if (run_dir / "best.pt").is_file():
            self._log_model(run_id, run_dir / "best.pt", model_tags)
        client.set_tag(run_id, TAG_PUBLISHED, "true")
        client.set_terminated(run_id, status="FINISHED")

    def _log_model(self, run_id: str, best: Path, model_tags: dict[str, Any]) -> None:
        """``mlflow.pytorch.log_model`` needs MLflow's active-run globals: the tracking URI and the
        run are set for the call only and restored after it."""
        if self.client.search_model_versions(f"run_id = '{run_id}'"):
            return
        model, cfg, meta = load_model(best)
        size = int(meta.get("image_size", cfg.data.image_size))
        x = torch.zeros(1, 3, size, size)
        with torch.no_grad():
            y = model(x)
        signature = infer_signature(x.numpy().astype(np.float32), y.numpy())
        previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
        mlflow.set_tracking_uri(self.uri)
        try:
            with quiet(registry=True), mlflow.start_run(run_id=run_id):
                # pickle, not pt2: pt2 traces one input shape (batch 1) and needs an input example
                info = mlflow.pytorch.log_model(model, name="model", signature=signature, serialization_format="pickle",
                                                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                                                registered_model_name=self.model_name, await_registration_for=0)
        finally:
            if previous is not None:
                mlflow.set_tracking_uri(previous)
        version = getattr(info, "registered_model_version", None)
        if version is not None:
            for k, v in model_tags.items():
                self.client.set_model_version_tag(self.model_name, str(version), k, str(v))

    def crown(self, run_id: str | None) -> str | None:
        """Point the ``champion`` alias at the model version of ``run_id``; returns the version."""
        if not self.enabled or not run_id:
            return None
        versions = self.client.search_model_versions(f"run_id = '{run_id}'")
        if not versions:
            return None
        v = max(versions, key=lambda mv: int(mv.version))
        self.client.set_registered_model_alias(v.name, CHAMPION, v.version)
        return str(v.version)
