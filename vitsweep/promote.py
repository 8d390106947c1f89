"""Promotion: ``vitsweep promote`` retrains a study's best trials at full length and ranks them on the test set.

Short sweep trials pick candidates; promotion gives the honest answer:

1. **Select** the top-k COMPLETE trials by the study's metric and direction. Pruned, failed and
   running trials are skipped, and so is a trial whose trainer config is identical to a better
   ranked one (a duplicate). Equal values are ordered by trial number (the earlier trial wins).
2. **Retrain** each from scratch with its exact trial config (``study.trial_config``), with
   ``train.epochs = --epochs`` (the warmup + cosine schedule stretches to it), early stopping on
   the validation split (``--patience``/``--min-delta``; default: the trial's own), checkpoints
   on and ``train.test`` on. ``--seeds S`` runs each config S times with seeds
   ``trial seed + 0 .. S-1`` (seed offset 0 is the trial's own seed, so ``--seeds 1`` retrains
   exactly the trial's config, only longer).
3. **Evaluate** the best checkpoint of each run on the test set, once (the trainer's
   ``TrainResult.test``): top-1, loss, per-class accuracy, confusion matrix.
4. **Record**: run folders ``<out>/<study>/trial<N>-seed<S>/`` (``best.pt``, ``last.pt``,
   ``result.json``, confusion matrix CSV/PNG), a leaderboard (``leaderboard.csv``, ``runs.csv``,
   ``val_curves.html``) in ``<out>/<study>/``, and MLflow: a parent run per invocation
   (``vitsweep.kind = promotion``), a nested run per config and seed (``vitsweep.kind = promoted``,
   tag ``vitsweep.source_run_id`` = the source trial's MLflow run), per-epoch metrics
   (step = epoch), params, ``checkpoint/best.pt``, ``evaluation/confusion_matrix.{csv,png}``, the
   model (``mlflow.pytorch.log_model``) registered as a version of ``vitsweep-<study>``; the best
   version on the leaderboard gets the alias ``champion``.

Resumable: ``result.json`` marks a finished run (it is neither retrained nor re-evaluated); an
unfinished run continues from its ``last.pt``; its MLflow run (found by the tag
``vitsweep.promote_key``, a hash of the run's config) is reused, so re-running the same command
after a kill or Ctrl-C creates no duplicate runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
from optuna.trial import TrialState

from vitsweep import space as space_mod
from vitsweep.config import Config
from vitsweep.errors import VitsweepError

DEFAULT_OUT = Path("storage/promote")
KIND_PARENT, KIND_RUN = "promotion", "promoted"
TAG_KIND, TAG_STUDY, TAG_TRIAL = "vitsweep.kind", "optuna.study_name", "optuna.trial_number"
TAG_SEED, TAG_SOURCE, TAG_KEY = "vitsweep.seed", "vitsweep.source_run_id", "vitsweep.promote_key"
TAG_STOP, TAG_PUBLISHED, TAG_RUN_DIR = "vitsweep.stop_reason", "vitsweep.published", "vitsweep.run_dir"
CHAMPION = "champion"

Out = Callable[[str], None]


def _print(line: str) -> None:
    print(line, flush=True)


# ---------------------------------------------------------------------------------------------
# Which study


def choose_study(name: str | None, storage: str, out: Out = _print) -> optuna.Study:
    """``name``, or the most recently created study when it is clearly the latest: the newest one
    created is also the one whose trials started last. Otherwise ask for ``--study``."""
    from vitsweep.study import load_study, open_storage

    if name is not None:
        return load_study(name, storage)
    st = open_storage(storage)
    summaries = optuna.get_all_study_summaries(st, include_best_trial=False)
    if not summaries:
        raise VitsweepError(f"{storage} holds no study yet; run one first: vitsweep run sweeps/smoke.yaml")
    if len(summaries) > 1:
        newest = max(summaries, key=lambda s: s._study_id)
        started = [s for s in summaries if s.datetime_start is not None]
        last_start = max((s.datetime_start for s in started), default=None)
        latest = [s for s in started if s.datetime_start == last_start]
        if len(latest) != 1 or latest[0].study_name != newest.study_name:
            listing = ", ".join(f"{s.study_name} ({s.n_trials} trials, started "
                                f"{s.datetime_start:%Y-%m-%d %H:%M} )".replace(" )", ")")
                                if s.datetime_start else f"{s.study_name} (no trials)"
                                for s in sorted(summaries, key=lambda s: s._study_id))
            raise VitsweepError(f"{storage} holds {len(summaries)} studies and none is clearly the latest; "
                                f"choose one with --study NAME (studies: {listing})")
    chosen = max(summaries, key=lambda s: s._study_id).study_name
    out(f"study {chosen} (the latest in {storage}; choose another with --study)")
    return load_study(chosen, storage)


# ---------------------------------------------------------------------------------------------
# Selection


@dataclass
class Candidate:
    rank: int  # 1 = best
    number: int
    value: float
    params: dict[str, Any]
    config: Config  # the trial's exact trainer config
    source_run_id: str | None

    @property
    def describe(self) -> str:
        return space_mod.describe_params(self.params)


@dataclass
class Selection:
    study: str
    metric: str
    direction: str
    picked: list[Candidate]
    lines: list[str]


def select_trials(study: optuna.Study, top: int) -> Selection:
    """The ``top`` best COMPLETE trials with distinct trainer configs; lines say what was picked,
    what was skipped, and why. Raises VitsweepError when there are fewer than ``top``."""
    from vitsweep.study import REASON_ATTR, sweep_of, trial_config
    from vitsweep.tracking import RUN_ATTR

    if top < 1:
        raise VitsweepError(f"--top {top}: must be >= 1")
    sweep = sweep_of(study)
    metric, direction = sweep.study.metric, study.direction.name.lower()
    maximize = direction == "maximize"
    trials = study.get_trials(deepcopy=False)
    lines: list[str] = []
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                and math.isfinite(t.value)]
    for t in trials:
        if t.state == TrialState.COMPLETE and t not in complete:
            lines.append(f"skipped trial {t.number}: complete but its value is not finite ({t.value})")
        elif t.state == TrialState.PRUNED:
            lines.append(f"skipped trial {t.number}: pruned after {len(t.intermediate_values)} epoch(s)")
        elif t.state == TrialState.FAIL:
            why = t.user_attrs.get(REASON_ATTR) or "no reason recorded"
            lines.append(f"skipped trial {t.number}: failed ({why})")
        elif t.state in (TrialState.RUNNING, TrialState.WAITING):
            lines.append(f"skipped trial {t.number}: {t.state.name.lower()}, not finished")
    if not complete:
        counts = {}
        for t in trials:
            counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
        have = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no trials"
        raise VitsweepError(f"study {study.study_name} has no completed trials ({have}); nothing to promote. "
                            f"Run (or continue) the sweep until some trials complete")

    ordered = sorted(complete, key=lambda t: ((-t.value if maximize else t.value), t.number))
    unique: list[tuple[optuna.trial.FrozenTrial, Config]] = []
    seen: dict[str, int] = {}
    for t in ordered:
        try:
            cfg = trial_config(study, t)
        except VitsweepError as e:
            lines.append(f"skipped trial {t.number}: its config cannot be rebuilt ({' '.join(str(e).split())})")
            continue
        key = json.dumps(cfg.to_dict(), sort_keys=True)
        if key in seen:
            lines.append(f"skipped trial {t.number}: {metric} {t.value:.4f}, same trainer config as trial "
                         f"{seen[key]} (ranked higher), a duplicate")
            continue
        seen[key] = t.number
        unique.append((t, cfg))
    if top > len(unique):
        listing = ", ".join(str(t.number) for t, _ in unique) or "none"
        raise VitsweepError(f"--top {top}: study {study.study_name} has only {len(unique)} completed trial(s) "
                            f"with distinct configs (trials {listing}); use --top {max(len(unique), 1)} "
                            f"or run more trials")
    picked: list[Candidate] = []
    best_word = "highest" if maximize else "lowest"
    for rank, (t, cfg) in enumerate(unique, 1):
        if rank > top:
            lines.append(f"not picked: trial {t.number} ({metric} {t.value:.4f}, rank {rank} > --top {top})")
            continue
        ties = [u.number for u, _ in unique if u.value == t.value and u.number != t.number]
        why = f"rank {rank}: {metric} {t.value:.4f}, {'the ' + best_word if rank == 1 else 'next ' + best_word}"
        if ties:
            why += f"; tied with trial(s) {', '.join(map(str, ties))}, the lower trial number ranks first"
        lines.insert(len(picked), f"picked trial {t.number} ({why}): {space_mod.describe_params(t.params)}")
        picked.append(Candidate(rank, t.number, float(t.value), dict(t.params), cfg, t.user_attrs.get(RUN_ATTR)))
    lines.insert(0, f"selection from study {study.study_name}: {len(complete)} completed of {len(trials)} trial(s), "
                    f"{metric} {direction}d, top {top}")
    return Selection(study.study_name, metric, direction, picked, lines)


# ---------------------------------------------------------------------------------------------
# One promoted run


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

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)


def run_key(cfg: Config) -> str:
    """Identifies a promoted run: its config, less what may change on resume (patience, device...)."""
    from vitsweep.trainer import RESUMABLE_CHANGES

    flat = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.flat().items() if k not in RESUMABLE_CHANGES}
    return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def promoted_config(c: Candidate, epochs: int, seed_offset: int, patience: int | None,
                    min_delta: float | None) -> Config:
    dotted: dict[str, Any] = {"train.epochs": epochs, "train.test": True, "train.checkpoint": True,
                              "train.seed": c.config.train.seed + seed_offset}
    if patience is not None:
        dotted["train.patience"] = patience
    if min_delta is not None:
        dotted["train.min_delta"] = min_delta
    return c.config.replace(**dotted)


# ---------------------------------------------------------------------------------------------
# MLflow


class _Mlflow:
    """The promotion's MLflow records, with MlflowClient and explicit run ids; ``uri="none"``: off."""

    def __init__(self, uri: str, experiment: str, artifacts: str, study: str):
        from vitsweep.tracking import Tracker

        self.tracker = Tracker(uri, experiment, artifacts)
        self.enabled, self.uri, self.client = self.tracker.enabled, uri, self.tracker.client
        self.study, self.model_name = study, f"vitsweep-{study}"
        self.parent: str | None = None

    def start_parent(self, tags: dict[str, str]) -> str | None:
        if not self.enabled:
            return None
        from vitsweep.tracking import _hardware_tags

        # Promotions of this study are serialised by a file lock, so one still RUNNING died.
        for r in self._search(f"tags.`{TAG_KIND}` = '{KIND_PARENT}' and tags.`{TAG_STUDY}` = '{self.study}' "
                              f"and attributes.status = 'RUNNING'"):
            with contextlib.suppress(Exception):
                self.client.set_tag(r.info.run_id, "vitsweep.reason", "its process died (found RUNNING later)")
                self.client.set_terminated(r.info.run_id, status="KILLED")
        run = self.client.create_run(self.tracker.experiment_id, run_name=f"{self.study}-promote-{time.strftime('%Y%m%d-%H%M%S')}",
                                     tags={TAG_KIND: KIND_PARENT, TAG_STUDY: self.study, **tags, **_hardware_tags(None)})
        self.parent = run.info.run_id
        return self.parent

    def end_parent(self, status: str, metrics: dict[str, float] | None = None, files: list[Path] = ()) -> None:
        if not self.enabled or not self.parent:
            return
        from mlflow.entities import Metric

        try:
            now = int(time.time() * 1000)
            if metrics:
                self.client.log_batch(self.parent, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()
                                                            if v is not None and math.isfinite(v)])
            for f in files:
                if f.is_file():
                    self.client.log_artifact(self.parent, str(f), artifact_path="leaderboard")
        finally:
            self.client.set_terminated(self.parent, status=status)

    def _search(self, filter_string: str) -> list[Any]:
        return self.client.search_runs([self.tracker.experiment_id], filter_string=filter_string,
                                       max_results=1000, order_by=["attributes.start_time DESC"])

    def run_for(self, c: Candidate, seed: int, cfg: Config, key: str, run_dir: Path,
                fresh: bool) -> tuple[str | None, bool]:
        """The nested run of this config and seed: (run id, already published). An existing one
        (found by its key tag) is reused and moved under this invocation's parent, unless the run
        starts from scratch (``fresh``: its folder was deleted): then the old one is set aside."""
        if not self.enabled:
            return None, False
        found = self._search(f"tags.`{TAG_KIND}` = '{KIND_RUN}' and tags.`{TAG_STUDY}` = '{self.study}' "
                             f"and tags.`{TAG_KEY}` = '{key}'")
        if found and fresh:
            for run in found:
                self.client.set_tag(run.info.run_id, TAG_KEY, f"{key}-superseded")
                self.client.set_tag(run.info.run_id, "vitsweep.reason", "superseded: its run folder was deleted "
                                                                        "and the run started again")
                if run.info.status == "RUNNING":
                    self.client.set_terminated(run.info.run_id, status="KILLED")
            found = []
        if found:
            run = found[0]
            rid = run.info.run_id
            old_parent = run.data.tags.get("mlflow.parentRunId")
            if self.parent and old_parent != self.parent:
                self.client.set_tag(rid, "mlflow.parentRunId", self.parent)
                if old_parent:
                    self.client.set_tag(rid, "vitsweep.previous_parent_run_id", old_parent)
            published = run.data.tags.get(TAG_PUBLISHED) == "true" and run.info.status == "FINISHED"
            return rid, published
        from mlflow.entities import Param

        from vitsweep.tracking import _hardware_tags

        tags = {TAG_KIND: KIND_RUN, TAG_STUDY: self.study, TAG_TRIAL: str(c.number), TAG_SEED: str(seed),
                TAG_KEY: key, TAG_RUN_DIR: str(run_dir), "vitsweep.sweep_value": f"{c.value:.6g}",
                "vitsweep.config": c.describe, **_hardware_tags(cfg.train.device)}
        if c.source_run_id:
            tags[TAG_SOURCE] = c.source_run_id
        if self.parent:
            tags["mlflow.parentRunId"] = self.parent
        run = self.client.create_run(self.tracker.experiment_id, run_name=f"{self.study}-trial{c.number}-seed{seed}",
                                     tags=tags)
        items = [Param(k, str(list(v) if isinstance(v, tuple) else v)) for k, v in cfg.flat().items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run.info.run_id, params=items[i : i + 100])
        return run.info.run_id, False

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
                self.client.set_tag(run_id, "vitsweep.reason", reason[:4000])
        self.client.set_terminated(run_id, status=status)

    def publish(self, run_id: str | None, rec: RunRecord, run_dir: Path) -> None:
        """Final metrics, artifacts and the registered model; then FINISHED. Safe to repeat after a
        kill: missing epochs are filled in, a model already registered for the run is not again."""
        if not self.enabled or not run_id:
            return
        from mlflow.entities import Metric

        from vitsweep.checkpoint import log_checkpoint

        client = self.client
        now = int(time.time() * 1000)
        logged = {m.step for m in client.get_metric_history(run_id, "val_acc")}
        missing = [h for h in rec.history if int(h["epoch"]) not in logged]
        for h in missing:  # epochs logged before a kill are there already
            self.log_epoch(run_id, int(h["epoch"]), h)
        final = {"best_val_acc": rec.best_val_acc, "best_epoch": rec.best_epoch, "epochs_run": rec.epochs_run,
                 "train_time_s": rec.train_time_s}
        if rec.test_acc is not None:
            final.update(test_acc=rec.test_acc, test_loss=rec.test_loss)
            for name, acc in zip(rec.classes, rec.per_class_acc):
                final[f"test_acc_class_{_safe(name)}"] = acc
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in final.items()])
        client.set_tag(run_id, TAG_STOP, rec.stop_reason)
        if (run_dir / "best.pt").is_file():
            log_checkpoint(client, run_id, run_dir / "best.pt")
        for name in ("confusion_matrix.csv", "confusion_matrix.png", "result.json"):
            if (run_dir / name).is_file():
                client.log_artifact(run_id, str(run_dir / name), artifact_path="evaluation")
        if (run_dir / "best.pt").is_file():
            self._log_model(run_id, rec, run_dir / "best.pt")
        client.set_tag(run_id, TAG_PUBLISHED, "true")
        client.set_terminated(run_id, status="FINISHED")

    def _log_model(self, run_id: str, rec: RunRecord, best: Path) -> None:
        import mlflow
        import numpy as np
        import torch
        from mlflow.models import infer_signature

        from vitsweep.trainer import load_model

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
        quiet = logging.getLogger("mlflow.pytorch")  # its pickle caution: we load our own models
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            with mlflow.start_run(run_id=run_id):
                # pickle, not pt2: pt2 traces one input shape (batch 1) and needs an input example
                info = mlflow.pytorch.log_model(model, name="model", signature=signature, serialization_format="pickle",
                                                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                                                registered_model_name=self.model_name, await_registration_for=0)
        finally:
            quiet.setLevel(level)
            if previous is not None:
                mlflow.set_tracking_uri(previous)
        version = getattr(info, "registered_model_version", None)
        if version is not None:
            for k, v in {TAG_TRIAL: rec.trial, TAG_SEED: rec.seed, "test_acc": rec.test_acc,
                         TAG_STOP: rec.stop_reason}.items():
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


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in str(name))


# ---------------------------------------------------------------------------------------------
# The command


@dataclass
class PromoteResult:
    study: str
    selection: Selection
    runs: list[RunRecord]
    leaderboard: Any  # pandas.DataFrame, one row per config
    files: dict[str, Path]
    parent_run_id: str | None
    wall_time: float
    trained: list[str] = field(default_factory=list)  # run folders trained (or resumed) this time
    skipped: list[str] = field(default_factory=list)  # run folders already finished


def promote(*, top: int, epochs: int, study: str | None = None, storage: str | None = None,
            tracking_uri: str | None = None, patience: int | None = None, min_delta: float | None = None,
            seeds: int = 1, out_dir: str | Path = DEFAULT_OUT, out: Out = _print,
            on_epoch: Callable[[str, int, dict[str, float]], None] | None = None) -> PromoteResult:
    """``vitsweep promote``. ``on_epoch(run_name, epoch, metrics)`` is called after each epoch is
    recorded (tests interrupt a run from it)."""
    from vitsweep import console
    from vitsweep.study import sweep_of
    from vitsweep.sweep import storage_url, tracking_uri as resolve_tracking

    t0 = time.perf_counter()
    for name, v, low in (("--top", top, 1), ("--epochs", epochs, 1), ("--seeds", seeds, 1)):
        if v < low:
            raise VitsweepError(f"{name} {v}: must be >= {low}")
    if patience is not None and patience < 1:
        raise VitsweepError(f"--patience {patience}: must be >= 1 epoch")
    if min_delta is not None and not (0 <= min_delta < 1):
        raise VitsweepError(f"--min-delta {min_delta}: must be in [0, 1) (validation accuracy)")
    storage = storage_url(storage)
    st = choose_study(study, storage, out)
    sel = select_trials(st, top)
    for line in sel.lines:
        out(line)

    root = Path(out_dir) / sel.study
    root.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise VitsweepError(f"another vitsweep promote is running for study {sel.study} ({root}/.lock); "
                            f"wait for it to finish") from None
    try:
        sweep = sweep_of(st)
        uri = resolve_tracking(tracking_uri)
        ml = _Mlflow(uri, sweep.tracking.experiment or sel.study, sweep.tracking.artifacts, sel.study)
        ml.start_parent({"vitsweep.top": str(top), "vitsweep.epochs": str(epochs), "vitsweep.seeds": str(seeds),
                         "vitsweep.patience": str(patience), "vitsweep.min_delta": str(min_delta),
                         "vitsweep.picked_trials": ",".join(str(c.number) for c in sel.picked),
                         "mlflow.note.content": "\n".join(sel.lines)})
        plan = [(c, s) for c in sel.picked for s in range(seeds)]
        out(f"promoting {len(sel.picked)} config(s) x {seeds} seed(s) = {len(plan)} run(s), up to {epochs} epochs "
            f"each" + (f", patience {patience}" if patience is not None else "")
            + f"; run folders in {root}" + (f"; MLflow {uri} run {ml.parent}" if ml.enabled else ""))
        records: list[RunRecord] = []
        trained: list[str] = []
        skipped: list[str] = []
        status = "FAILED"
        try:
            for i, (c, s) in enumerate(plan, 1):
                rec, did_train = _run_one(c, s, epochs, patience, min_delta, root, sel, ml, out, on_epoch,
                                          f"[{i}/{len(plan)} trial {c.number} seed {c.config.train.seed + s}] ",
                                          console)
                records.append(rec)
                (trained if did_train else skipped).append(rec.run_dir)
            board = leaderboard(records, sel)
            files = write_leaderboard(board, records, root, sel)
            champion = board.iloc[0] if len(board) else None
            if champion is not None:
                best_runs = [r for r in records if r.trial == int(champion["trial"]) and r.test_acc is not None]
                if best_runs:
                    version = ml.crown(max(best_runs, key=lambda r: r.test_acc).mlflow_run_id)
                    if version:
                        out(f"registered model {ml.model_name}: version {version} of trial {int(champion['trial'])} "
                            f"has the alias '{CHAMPION}'")
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if status != "FINISHED":
                ml.end_parent(status)
        out("")
        out(format_leaderboard(board, sel))
        for f in files.values():
            out(f"wrote {f}")
        best = board["test_acc_mean"].max() if len(board) else float("nan")
        ml.end_parent("FINISHED", {"best_test_acc_mean": best, "runs": len(records),
                                   "runs_trained": len(trained)}, list(files.values()))
        wall = time.perf_counter() - t0
        out(f"done in {wall:.1f}s: {len(trained)} run(s) trained, {len(skipped)} already finished"
            + (f"; MLflow parent run {ml.parent} (vitsweep ui)" if ml.parent else ""))
        return PromoteResult(sel.study, sel, records, board, files, ml.parent, wall, trained, skipped)
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)


def _run_one(c: Candidate, s: int, epochs: int, patience: int | None, min_delta: float | None, root: Path,
             sel: Selection, ml: _Mlflow, out: Out, hook: Callable[[str, int, dict[str, float]], None] | None,
             prefix: str, console: Any) -> tuple[RunRecord, bool]:
    from vitsweep.evaluate import plot_confusion, write_confusion_csv
    from vitsweep.trainer import train

    cfg = promoted_config(c, epochs, s, patience, min_delta)
    seed = cfg.train.seed
    name = f"trial{c.number}-seed{seed}"
    run_dir = root / name
    key = run_key(cfg)
    _claim(run_dir, key, cfg)
    result_file = run_dir / "result.json"
    fresh = not result_file.is_file() and not (run_dir / "last.pt").is_file()
    run_id, published = ml.run_for(c, seed, cfg, key, run_dir, fresh)
    if result_file.is_file():
        rec = RunRecord.load(result_file)
        rec.mlflow_run_id = run_id
        out(f"{prefix}already finished ({rec.stop_reason} after {rec.epochs_run} epochs, test acc "
            f"{_pct(rec.test_acc)}); not retrained")
        if not published:
            ml.publish(run_id, rec, run_dir)
        return rec, False

    resuming = (run_dir / "last.pt").is_file()
    out(f"{prefix}{'resuming' if resuming else 'training'} {c.describe} in {run_dir}")
    ml.set_running(run_id)
    show = console.epoch_line(epochs, prefix)

    def on_epoch(epoch: int, m: dict[str, float]) -> None:
        ml.log_epoch(run_id, epoch, m)
        show(epoch, m)
        if hook is not None:
            hook(name, epoch, m)

    with _ending_run_on_error(ml, run_id, "interrupted (Ctrl-C); run the same command again to resume"):
        r = train(cfg, on_epoch, run_dir=run_dir, resume=True)
    with _ending_run_on_error(ml, run_id, "interrupted while recording; run the same command again to finish"):
        test = r.test
        rec = RunRecord(
            study=sel.study, trial=c.number, seed=seed, config_desc=c.describe, sweep_value=c.value,
            stop_reason=r.stop_reason, epochs_run=r.epochs_run, best_epoch=r.best_epoch, best_val_acc=r.best_val_acc,
            test_acc=test.acc if test else None, test_loss=test.loss if test else None,
            per_class_acc=list(test.per_class_acc) if test else [], confusion=test.confusion if test else [],
            classes=list(r.classes), history=[dict(h) for h in r.history],
            train_time_s=round(sum(float(h.get("epoch_time", 0.0)) for h in r.history), 3), key=key,
            config=cfg.to_dict(), mlflow_run_id=run_id, run_dir=str(run_dir))
        if test is not None:
            write_confusion_csv(test.confusion, rec.classes, run_dir / "confusion_matrix.csv")
            with contextlib.suppress(Exception):  # a picture is a nicety; the CSV is the record
                plot_confusion(test.confusion, rec.classes, run_dir / "confusion_matrix.png",
                               title=f"{sel.study} trial {c.number} seed {seed}: test top-1 {test.acc:.2%}")
        rec.save(result_file)
        out(f"{prefix}{r.stop_reason} after {r.epochs_run}/{epochs} epochs; best val acc {r.best_val_acc:.2%} "
            f"(epoch {r.best_epoch}); test acc {_pct(rec.test_acc)}, loss "
            f"{'-' if rec.test_loss is None else f'{rec.test_loss:.4f}'}")
        ml.publish(run_id, rec, run_dir)
    return rec, True


@contextlib.contextmanager
def _ending_run_on_error(ml: _Mlflow, run_id: str | None, interrupted: str) -> Iterator[None]:
    """End the MLflow run as KILLED (Ctrl-C, with ``interrupted`` as the reason) or FAILED if the
    body raises; the exception propagates."""
    try:
        yield
    except KeyboardInterrupt:
        ml.end(run_id, "KILLED", interrupted)
        raise
    except BaseException as e:
        ml.end(run_id, "FAILED", f"{type(e).__name__}: {' '.join(str(e).split())}")
        raise


def _claim(run_dir: Path, key: str, cfg: Config) -> None:
    """A run folder belongs to one config: refuse to resume it with another (e.g. other --epochs)."""
    marker = run_dir / "promote.json"
    if marker.is_file():
        old = json.loads(marker.read_text())
        if old.get("key") != key:
            before = {k: v for k, v in _flat_json(old.get("config", {})).items()}
            now = _flat_json(cfg.to_dict())
            diffs = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(now)
                              if before.get(k) != now.get(k) and k not in ("train.patience", "train.min_delta"))
            raise VitsweepError(f"{run_dir} holds a promoted run with another config ({diffs or 'unknown'}); run the "
                                f"command with the same --epochs, delete that folder, or use --out DIR")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"key": key, "config": cfg.to_dict()}, indent=1))


def _flat_json(d: dict[str, Any]) -> dict[str, Any]:
    from vitsweep.config import flatten

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in flatten(d).items()}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


# ---------------------------------------------------------------------------------------------
# Leaderboard


def leaderboard(records: list[RunRecord], sel: Selection):  # -> pandas.DataFrame
    """One row per config: test accuracy mean and sample std over seeds (NaN with one seed), sorted
    by mean test accuracy (then sweep rank)."""
    import pandas as pd

    rows = []
    for c in sel.picked:
        runs = [r for r in records if r.trial == c.number]
        if not runs:
            continue
        accs = [r.test_acc for r in runs if r.test_acc is not None]
        losses = [r.test_loss for r in runs if r.test_loss is not None]
        rows.append({
            "trial": c.number, "sweep_rank": c.rank, "config": c.describe, f"sweep_{sel.metric}": c.value,
            "test_acc_mean": statistics.fmean(accs) if accs else float("nan"),
            "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else float("nan"),
            "test_loss_mean": statistics.fmean(losses) if losses else float("nan"),
            "best_val_acc_mean": statistics.fmean(r.best_val_acc for r in runs),
            "seeds": len(runs),
            "epochs_run": ",".join(str(r.epochs_run) for r in runs),
            "stop_reason": ",".join(sorted({r.stop_reason for r in runs})),
            "wall_time_s": round(sum(r.train_time_s for r in runs), 2),
            "mlflow_run_ids": ",".join(r.mlflow_run_id or "" for r in runs),
        })
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values(["test_acc_mean", "sweep_rank"], ascending=[False, True], na_position="last")
        df = df.reset_index(drop=True)
        df.index = df.index + 1
        df.index.name = "place"
    return df


def write_leaderboard(board, records: list[RunRecord], root: Path, sel: Selection) -> dict[str, Path]:  # noqa: ANN001
    import pandas as pd
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    files = {"leaderboard": root / "leaderboard.csv", "runs": root / "runs.csv", "chart": root / "val_curves.html"}
    board.to_csv(files["leaderboard"])
    pd.DataFrame([{"trial": r.trial, "seed": r.seed, "config": r.config_desc, f"sweep_{sel.metric}": r.sweep_value,
                   "test_acc": r.test_acc, "test_loss": r.test_loss, "best_val_acc": r.best_val_acc,
                   "best_epoch": r.best_epoch, "epochs_run": r.epochs_run, "stop_reason": r.stop_reason,
                   "wall_time_s": r.train_time_s, "mlflow_run_id": r.mlflow_run_id or "", "run_dir": r.run_dir}
                  for r in records]).to_csv(files["runs"], index=False)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("validation accuracy", "validation loss"))
    for r in records:
        epochs = [int(h["epoch"]) for h in r.history]
        label = f"trial {r.trial} seed {r.seed}"
        hover = f"{label}<br>{r.config_desc}<br>test acc {_pct(r.test_acc)}"
        for col, k in ((1, "val_acc"), (2, "val_loss")):
            fig.add_trace(go.Scatter(x=epochs, y=[h[k] for h in r.history], mode="lines+markers", name=label,
                                     legendgroup=label, showlegend=col == 1, hovertext=hover), row=1, col=col)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title=f"promotion of study {sel.study}: validation curves", template="plotly_white")
    fig.write_html(files["chart"], include_plotlyjs=True)
    return files


def format_leaderboard(board, sel: Selection) -> str:  # noqa: ANN001
    if board is None or len(board) == 0:
        return "leaderboard: no runs"
    lines = [f"leaderboard (study {sel.study}; test accuracy of each run's best checkpoint, mean ± std over seeds)"]
    lines.append(f"{'#':>2}  {'trial':>5}  {'sweep ' + sel.metric:>14}  {'test acc':>16}  {'epochs':>8}  "
                 f"{'stop':<14}  {'time':>8}  config")
    for place, row in board.iterrows():
        std = row["test_acc_std"]
        acc = "-" if math.isnan(row["test_acc_mean"]) else (
            f"{row['test_acc_mean']:.2%}" + ("" if math.isnan(std) else f" ± {std:.2%}"))
        lines.append(f"{place:>2}  {int(row['trial']):>5}  {row[f'sweep_{sel.metric}']:>14.4f}  {acc:>16}  "
                     f"{row['epochs_run']:>8}  {row['stop_reason']:<14}  {row['wall_time_s']:>7.1f}s  {row['config']}")
    return "\n".join(lines)
