"""Promotion: ``vitsweep promote`` retrains a study's best trials at full length and ranks them on the test set.

Short sweep trials pick candidates; promotion gives the honest answer:

1. **Select** the top-k COMPLETE trials by the study's metric and direction. Pruned, failed and
   running trials are skipped, and so is a trial whose trainer config is identical to a better
   ranked one (a duplicate). Equal values are ordered by trial number (the earlier trial wins).
2. **Retrain** each with its exact trial config (``vitsweep.sweep.study.trial_config``), with
   ``train.epochs = --epochs`` (the warmup and the lr schedule stretch to it). A trial of a sweep on
   a constant-lr trunk (``schedule.name: wsd``) kept its trunk: its run *continues* that trunk from
   the trial's last epoch and cools down at the end, instead of starting again (``--from-scratch``:
   start again; a trunk whose config differs from the promoted one, e.g. after ``--set
   data.train_limit=null``, is trained from scratch and says so). Early stopping on
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
   version on the leaderboard gets the alias ``champion``, and its full trainer config is written
   to ``<out>/<study>/champion.yaml`` (``vitsweep train champion.yaml`` retrains it).
5. **Fidelity in plain sight**: each config's sweep value sits beside its promoted value, and the
   summary says whether the sweep's order held (Spearman's rank correlation).

Resumable: ``result.json`` marks a finished run (it is neither retrained nor re-evaluated); an
unfinished run continues from its ``last.pt``; its MLflow run (found by the tag
``vitsweep.promote_key``, a hash of the run's config) is reused, so re-running the same command
after a kill or Ctrl-C creates no duplicate runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import yaml

from vitsweep import console, signals
from vitsweep.train.config import Config, flatten
from vitsweep.errors import VitsweepError, one_line
from vitsweep.trained.evaluate import plot_confusion, write_confusion_csv
from vitsweep.paths import PROMOTE_DIR, atomic_write, redact, storage_url, tracking_uri as resolve_tracking
from vitsweep.promote.results import (RESULT_FILE, RunRecord, fidelity_line, format_leaderboard, leaderboard, pct,
                                      write_leaderboard)
from vitsweep.promote.select import Candidate, Selection, choose_study, select_trials
from vitsweep.sweep.locks import exclusive
from vitsweep.tracking.client import check_tracking_server
from vitsweep.tracking.registry import Promotion
from vitsweep.tracking.tags import (CHAMPION, TAG_CONFIG, TAG_EPOCHS, TAG_MIN_DELTA, TAG_NOTE, TAG_PATIENCE, TAG_PICKED,
                                    TAG_RUN_DIR, TAG_SEED, TAG_SEEDS, TAG_SOURCE, TAG_STOP, TAG_SWEEP_VALUE, TAG_TOP,
                                    TAG_TRIAL)
from vitsweep.train.checkpoint import CONTINUE_CHANGES, RESUMABLE_CHANGES, check_resumable, load_checkpoint
from vitsweep.train.config import build_config
from vitsweep.train.loop import TrainResult, train

DEFAULT_OUT = PROMOTE_DIR
CHAMPION_FILE = "champion.yaml"
Out = Callable[[str], None]
EpochHook = Callable[[str, int, dict[str, float]], None]


def run_key(cfg: Config) -> str:
    """Identifies a promoted run: its config, less what may change on resume (patience, device...)."""
    flat = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.flat().items() if k not in RESUMABLE_CHANGES}
    return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def promoted_config(c: Candidate, epochs: int, seed_offset: int, patience: int | None,
                    min_delta: float | None, overrides: dict[str, Any] | None = None) -> Config:
    """The trial's config at full length; ``overrides`` (``--set``, e.g. ``data.train_limit=null``
    to promote on the full data after a sweep on a subset) apply first, promote's own keys last."""
    dotted: dict[str, Any] = {**(overrides or {}), "train.epochs": epochs, "train.test": True,
                              "train.checkpoint": True, "train.seed": c.config.train.seed + seed_offset,
                              "schedule.horizon": None, "schedule.branches": []}  # the cooldown at the end
    if patience is not None:
        dotted["train.patience"] = patience
    if min_delta is not None:
        dotted["train.min_delta"] = min_delta
    return c.config.replace(**dotted)


# ---------------------------------------------------------------------------------------------
# The command


@dataclass
class PromoteResult:
    study: str
    selection: Selection
    runs: list[RunRecord]
    leaderboard: pd.DataFrame  # one row per config
    files: dict[str, Path]
    parent_run_id: str | None
    wall_time: float
    trained: list[str] = field(default_factory=list)  # run folders trained (or resumed) this time
    skipped: list[str] = field(default_factory=list)  # run folders already finished


@dataclass
class _Plan:
    """One promotion: what to retrain, how, where, and its MLflow records."""

    sel: Selection
    epochs: int
    seeds: int
    patience: int | None
    min_delta: float | None
    root: Path
    ml: Promotion
    out: Out
    hook: EpochHook | None
    overrides: dict[str, Any] = field(default_factory=dict)
    from_scratch: bool = False


def promote(*, top: int, epochs: int, study: str | None = None, storage: str | None = None,
            tracking_uri: str | None = None, patience: int | None = None, min_delta: float | None = None,
            seeds: int = 1, out_dir: str | Path = DEFAULT_OUT, out: Out = console.say,
            on_epoch: EpochHook | None = None, overrides: dict[str, Any] | None = None,
            from_scratch: bool = False) -> PromoteResult:
    """``vitsweep promote``. ``on_epoch(run_name, epoch, metrics)`` is called after each epoch is
    recorded (tests interrupt a run from it). ``overrides``: ``--set`` keys for every promoted run."""
    t0 = time.perf_counter()
    _check_options(top, epochs, seeds, patience, min_delta)
    storage = storage_url(storage)
    st = choose_study(study, storage, out)
    sel = select_trials(st, top)
    overrides = dict(overrides or {})
    trial_epochs = {c.config.train.epochs for c in sel.picked}
    if not overrides and trial_epochs == {epochs}:
        raise VitsweepError(f"--epochs {epochs} is the trials' own length: promotion would train the same runs "
                            f"again; retrain longer (e.g. --epochs {epochs * 10}), or change the runs with --set "
                            f"(e.g. --set data.train_limit=null after a sweep on a subset)")
    # a bad --set fails here, before any folder or MLflow run exists
    limits = {promoted_config(c, epochs, 0, patience, min_delta, overrides).train.time_limit for c in sel.picked}
    uri = resolve_tracking(tracking_uri)
    check_tracking_server(uri)  # a tracking server that is down: exit 2 now, not a hang in the first run
    for line in sel.terminal_lines():
        out(line)
    root = Path(out_dir) / sel.study
    root.mkdir(parents=True, exist_ok=True)
    with exclusive(root / ".lock", f"another vitsweep promote is running for study {sel.study} ({root}/.lock); "
                                   f"wait for it to finish"):
        sweep = sel.sweep
        ml = Promotion(uri, sweep.tracking.experiment or sel.study, sweep.tracking.artifacts, sel.study)
        ml.start_parent({TAG_TOP: str(top), TAG_EPOCHS: str(epochs), TAG_SEEDS: str(seeds),
                         TAG_PATIENCE: str(patience), TAG_MIN_DELTA: str(min_delta),
                         TAG_PICKED: ",".join(str(c.number) for c in sel.picked), TAG_NOTE: "\n".join(sel.lines)})
        plan = _Plan(sel, epochs, seeds, patience, min_delta, root, ml, out, on_epoch, overrides, from_scratch)
        limit = max(limits - {None}, default=None)
        out(f"promoting {len(sel.picked)} config(s) x {seeds} seed(s) = {len(sel.picked) * seeds} run(s), up to "
            f"{epochs} epochs" + (f" or {limit:.0f} s of training" if limit else "") + " each"
            + (f", patience {patience}" if patience is not None else "")
            + f"; run folders in {root}" + (f"; MLflow {redact(uri)} run {ml.parent}" if ml.enabled else ""))
        records, trained, skipped, board, files = _run_all(plan)
        out("")
        out(format_leaderboard(board, sel.study, sel.metric))
        out(fidelity_line(board, sel.metric, sel.direction))
        for f in files.values():
            out(f"wrote {f}")
        top = board.iloc[0] if len(board) else None  # ranked by validation accuracy
        best = {"best_val_acc_mean": top["best_val_acc_mean"], "top_test_acc_mean": top["test_acc_mean"]} \
            if top is not None else {}
        ml.end_parent("FINISHED", {**best, "runs": len(records),
                                   "runs_trained": len(trained)}, list(files.values()))
        wall = time.perf_counter() - t0
        out(f"done in {wall:.1f}s: {len(trained)} run(s) trained, {len(skipped)} already finished"
            + (f"; MLflow parent run {ml.parent} (vitsweep ui)" if ml.parent else ""))
        return PromoteResult(sel.study, sel, records, board, files, ml.parent, wall, trained, skipped)


def _check_options(top: int, epochs: int, seeds: int, patience: int | None, min_delta: float | None) -> None:
    for name, v, low in (("--top", top, 1), ("--epochs", epochs, 1), ("--seeds", seeds, 1)):
        if v < low:
            raise VitsweepError(f"{name} {v}: must be >= {low}")
    if patience is not None and patience < 1:
        raise VitsweepError(f"--patience {patience}: must be >= 1 epoch")
    if min_delta is not None and not (0 <= min_delta < 1):
        raise VitsweepError(f"--min-delta {min_delta}: must be in [0, 1) (validation accuracy)")


def _run_all(p: _Plan) -> tuple[list[RunRecord], list[str], list[str], pd.DataFrame, dict[str, Path]]:
    """Every run of the plan, the leaderboard and its files, and the champion; the parent run ends
    KILLED (Ctrl-C) or FAILED when this does not finish."""
    runs = [(c, s) for c in p.sel.picked for s in range(p.seeds)]
    records: list[RunRecord] = []
    trained: list[str] = []
    skipped: list[str] = []
    status = "FAILED"
    try:
        for i, (c, s) in enumerate(runs, 1):
            rec, did_train = _run_one(p, c, s, f"[{i}/{len(runs)} trial {c.number} seed {c.config.train.seed + s}] ")
            records.append(rec)
            (trained if did_train else skipped).append(rec.run_dir)
        board = leaderboard(records, p.sel.picked, p.sel.metric)
        files = write_leaderboard(board, records, p.root, p.sel.study, p.sel.metric)
        _crown(p, board, records)
        if len(board):
            files["champion"] = write_champion(p.root, board, records)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if status != "FINISHED":
            p.ml.end_parent(status)
    return records, trained, skipped, board, files


def _crown(p: _Plan, board: pd.DataFrame, records: list[RunRecord]) -> None:
    """The champion alias goes to the run (seed) with the best validation accuracy of the config on
    top of the leaderboard (itself ranked by validation accuracy): the test set never chooses."""
    if not len(board):
        return
    champion = int(board.iloc[0]["trial"])
    best_runs = [r for r in records if r.trial == champion and r.mlflow_run_id and r.test_acc is not None]
    if best_runs:
        crowned = max(best_runs, key=lambda r: r.best_val_acc)
        version = p.ml.crown(crowned.mlflow_run_id)
        if version:
            p.out(f"registered model {p.ml.model_name}: version {version} of trial {champion} "
                  f"has the alias '{CHAMPION}'")
            p.out(f"champion: MLflow run {crowned.mlflow_run_id}, checkpoint {Path(crowned.run_dir) / 'best.pt'}; "
                  f"use it as models:/{p.ml.model_name}@{CHAMPION} (or --champion)")


def write_champion(root: Path, board: pd.DataFrame, records: list[RunRecord]) -> Path:
    """The champion's full trainer config (the best-validating seed of the config on top of the
    leaderboard), runnable as is: ``vitsweep train champion.yaml``."""
    champion = int(board.iloc[0]["trial"])
    best = max((r for r in records if r.trial == champion), key=lambda r: r.best_val_acc)
    path = root / CHAMPION_FILE
    header = (f"# The champion of study {best.study}: trial {best.trial} seed {best.seed}, best validation accuracy "
              f"{best.best_val_acc:.2%}" + (f", test {best.test_acc:.2%}" if best.test_acc is not None else "")
              + (f" (continued from the trial's trunk at epoch {best.continued_from})" if best.continued_from else "")
              + f".\n# Retrain it: vitsweep train {path}\n")
    cfg = build_config(best.config, source=str(path))
    atomic_write(path, lambda tmp: tmp.write_text(header + yaml.safe_dump(cfg.to_dict(), sort_keys=False)))
    return path


def _run_one(p: _Plan, c: Candidate, s: int, prefix: str) -> tuple[RunRecord, bool]:
    """Train (or resume, or skip when finished) one config and seed: (its record, trained now)."""
    cfg = promoted_config(c, p.epochs, s, p.patience, p.min_delta, p.overrides)
    seed = cfg.train.seed
    name = f"trial{c.number}-seed{seed}"
    run_dir = p.root / name
    trunk = _trunk_for(p, c, s, cfg, prefix)
    key = run_key(cfg) + ("-continued" if trunk else "")
    _claim(run_dir, key, cfg)
    result_file = run_dir / RESULT_FILE
    fresh = not result_file.is_file() and not (run_dir / "last.pt").is_file()
    run_id, published = p.ml.run_for(key, c.number, seed, cfg, _run_tags(c, run_dir), fresh)
    if result_file.is_file():
        rec = RunRecord.load(result_file)
        rec.mlflow_run_id = run_id
        p.out(f"{prefix}already finished ({rec.stop_reason} after {rec.epochs_run} epochs, test acc "
              f"{pct(rec.test_acc)}); not retrained")
        if not published:
            _publish(p.ml, run_id, rec, run_dir)
        return rec, False

    how = ("resuming" if (run_dir / "last.pt").is_file() else
           f"continuing trial {c.number}'s trunk from epoch {_epoch_of(trunk)}" if trunk else "training")
    p.out(f"{prefix}{how} {c.describe} in {run_dir}")
    p.ml.set_running(run_id)
    live = console.LiveLine()  # on a terminal, the epochs between two printed lines show here
    show = console.epoch_line(p.epochs, prefix, every=max(1, p.epochs // 20),  # ~20 lines a run, not 200
                              time_limit=cfg.train.time_limit, live=live)

    def on_epoch(epoch: int, m: dict[str, float]) -> None:
        p.ml.log_epoch(run_id, epoch, m)
        show(epoch, m)
        if p.hook is not None:
            p.hook(name, epoch, m)

    with _ending_run_on_error(p.ml, run_id, "; run the same command again to resume"):
        with live:
            r = train(cfg, on_epoch, run_dir=run_dir, resume=True, continue_from=trunk)
    with _ending_run_on_error(p.ml, run_id, " while recording; run the same command again to finish"):
        rec = _record(p.sel, c, seed, cfg, key, r, run_id, run_dir)
        rec.save(result_file)
        p.out(f"{prefix}{r.stop_reason} after {r.epochs_run}/{p.epochs} epochs; best val acc {r.best_val_acc:.2%} "
              f"(epoch {r.best_epoch}); test acc {pct(rec.test_acc)}, loss "
              f"{'-' if rec.test_loss is None else f'{rec.test_loss:.4f}'}")
        _publish(p.ml, run_id, rec, run_dir)
    return rec, True


def _trunk_for(p: _Plan, c: Candidate, s: int, cfg: Config, prefix: str) -> Path | None:
    """The trial's trunk this run continues: the trial's own seed, not --from-scratch, and a trunk
    whose config differs from the promoted one only in length (else from scratch, said why)."""
    if p.from_scratch or s != 0 or c.trunk is None:
        return None
    try:
        check_resumable(cfg, load_checkpoint(c.trunk), c.trunk.parent, CONTINUE_CHANGES)
    except VitsweepError as e:
        p.out(f"{prefix}trial {c.number}'s trunk cannot be continued ({str(e).split('(', 1)[-1].rstrip(');')}); "
              f"training from scratch")
        return None
    return c.trunk


def _epoch_of(trunk: Path) -> int:
    return int(load_checkpoint(trunk)["state"]["epoch"])


def _run_tags(c: Candidate, run_dir: Path) -> dict[str, str]:
    tags = {TAG_RUN_DIR: str(run_dir), TAG_SWEEP_VALUE: f"{c.value:.6g}", TAG_CONFIG: c.describe}
    if c.source_run_id:
        tags[TAG_SOURCE] = c.source_run_id
    return tags


def _record(sel: Selection, c: Candidate, seed: int, cfg: Config, key: str, r: TrainResult, run_id: str | None,
            run_dir: Path) -> RunRecord:
    """The finished run's record; with a test result, its confusion matrix as CSV and PNG too."""
    test = r.test
    rec = RunRecord(
        study=sel.study, trial=c.number, seed=seed, config_desc=c.describe, sweep_value=c.value,
        stop_reason=r.stop_reason, epochs_run=r.epochs_run, best_epoch=r.best_epoch, best_val_acc=r.best_val_acc,
        test_acc=test.acc if test else None, test_loss=test.loss if test else None,
        per_class_acc=list(test.per_class_acc) if test else [], confusion=test.confusion if test else [],
        classes=list(r.classes), history=[dict(h) for h in r.history],
        train_time_s=round(sum(float(h.get("epoch_time", 0.0)) for h in r.history), 3), key=key,
        config=cfg.to_dict(), mlflow_run_id=run_id, run_dir=str(run_dir), continued_from=r.continued_from)
    if test is not None:
        write_confusion_csv(test.confusion, rec.classes, run_dir / "confusion_matrix.csv")
        with contextlib.suppress(Exception):  # a picture is a nicety; the CSV is the record
            plot_confusion(test.confusion, rec.classes, run_dir / "confusion_matrix.png",
                           title=f"{sel.study} trial {c.number} seed {seed}: test top-1 {test.acc:.2%}")
    return rec


def _publish(ml: Promotion, run_id: str | None, rec: RunRecord, run_dir: Path) -> None:
    ml.publish(run_id, rec.history, rec.final_metrics(), rec.stop_reason, run_dir,
               {TAG_TRIAL: rec.trial, TAG_SEED: rec.seed, "test_acc": rec.test_acc, TAG_STOP: rec.stop_reason})


@contextlib.contextmanager
def _ending_run_on_error(ml: Promotion, run_id: str | None, then: str) -> Iterator[None]:
    """End the MLflow run as KILLED (Ctrl-C or SIGTERM: the reason says which, then ``then``) or
    FAILED if the body raises; the exception propagates."""
    try:
        yield
    except KeyboardInterrupt as e:
        ml.end(run_id, "KILLED", signals.describe(e) + then)
        raise
    except BaseException as e:
        ml.end(run_id, "FAILED", f"{type(e).__name__}: {one_line(e)}")
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
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in flatten(d).items()}
