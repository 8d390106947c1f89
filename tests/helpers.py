"""Helpers shared by several test modules (conftest.py holds the fixtures): tiny configs and
sweep files, running the CLI in-process or as a process, and waiting for a sweep's first trial."""

from __future__ import annotations

import copy
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest
from mlflow import MlflowClient

from vitsweep.train.checkpoint import load_checkpoint, save_atomic
from vitsweep.cli import main
from vitsweep.train.config import Config, build_config
from vitsweep.sweep.spec import load_sweep
from vitsweep.sweep.storage import load_study
from vitsweep.train.loop import TrainResult, train

REPO = Path(__file__).resolve().parents[1]

TINY: dict[str, Any] = {
    "data": {"source": "synthetic", "synthetic_train": 360, "synthetic_test": 100, "val_size": 100},
    "model": {"preset": "custom", "dim": 32, "depth": 2, "heads": 2, "patch_size": 8, "drop_path": 0.0},
    "optimizer": {"name": "adamw", "lr": 3e-3},
    "schedule": {"warmup_epochs": 0.5},
    "train": {"epochs": 2, "batch_size": 64, "device": "cpu", "eval_batch_size": 200},
}


def tiny_config(**dotted: Any) -> Config:
    """A config that trains in well under a second per epoch on a CPU."""
    return build_config(TINY, dotted, source="tests")


# The trainer config of sweep tests (3 epochs a trial).
TRAINER: dict[str, Any] = {
    "data": {"source": "synthetic", "synthetic_train": 300, "synthetic_test": 50, "val_size": 100},
    "model": {"preset": "custom", "dim": 32, "depth": 1, "heads": 2, "patch_size": 8, "mlp_ratio": 2.0,
              "drop_path": 0.0},
    "optimizer": {"name": "adamw", "lr": 3e-3},
    "schedule": {"warmup_epochs": 0},
    "train": {"epochs": 3, "batch_size": 64, "device": "cpu"},
}


def trainer_dict(**sections: dict[str, Any]) -> dict[str, Any]:
    """:data:`TRAINER` with some sections' keys replaced: ``trainer_dict(train={"epochs": 2})``."""
    out = copy.deepcopy(TRAINER)
    for name, keys in sections.items():
        out[name] = {**out.get(name, {}), **keys}
    return out

SPACE = {
    "optimizer": {"path": "optimizer.name", "choices": ["adan", "adamw"]},
    "lr": {"path": "optimizer.lr", "low": 3e-4, "high": 1e-2, "log": True},
    "b3": {"path": "optimizer.betas[2]", "low": 0.005, "high": 0.03, "step": 0.005, "when": {"optimizer": "adan"}},
}


def sweep_dict(root: Path, name: str = "s", n_trials: int = 6, space: dict | None = None, **over: Any) -> dict:
    raw = {
        "study": {"name": name, "n_trials": n_trials, "seed": 0},
        "sampler": {"name": "tpe", "n_startup_trials": 2},
        "pruner": {"name": "hyperband", "min_resource": 1, "reduction_factor": 2},
        "storage": {"url": f"sqlite:///{root}/optuna.db", "heartbeat_interval": 1, "grace_period": 3},
        "tracking": {"uri": f"sqlite:///{root}/mlflow.db", "artifacts": str(root / "mlartifacts")},
        "trials": {"dir": str(root / "trials")},
        "trainer": copy.deepcopy(TRAINER),
        "space": copy.deepcopy(space or SPACE),
    }
    for k, v in over.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return raw


def mlflow_runs(root: Path, study: str) -> dict[int, Any]:
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name(study)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`vitsweep.kind` = 'trial'")
    return {int(r.data.tags["optuna.trial_number"]): r for r in runs}


def killed_then_resumed(cfg: Config, tmp_path: Path) -> tuple[TrainResult, TrainResult]:
    """(an uninterrupted run of ``cfg``, the same run interrupted after epoch 2 and resumed)."""
    full = train(cfg, run_dir=tmp_path / "full")

    def kill_after_2(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, kill_after_2, run_dir=tmp_path / "part")
    return full, train(cfg, run_dir=tmp_path / "part", resume=True)


def cli(*args: str, capsys) -> tuple[int, str, str]:  # noqa: ANN001
    """Run ``vitsweep ARGS`` in-process the way the console script does: (exit code, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["vitsweep", *args]
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def spawn_cli(*args: str, cwd: Path) -> subprocess.Popen:
    """``vitsweep ARGS`` as a process in a session of its own (``os.killpg`` reaches all of it)."""
    return subprocess.Popen([sys.executable, "-m", "vitsweep", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for_trials(study: str, url: str, proc: subprocess.Popen, ready: Callable[[list], bool], what: str,
                    timeout: float = 120) -> None:
    """Wait until ``ready(trials)`` holds for the study's trials, while ``proc`` (the sweep) is
    still running; fail saying ``what`` never happened."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.1)
        try:
            trials = load_study(study, url).get_trials()
        except Exception:  # noqa: BLE001 - not created yet
            trials = []
        if ready(trials):
            return
        assert proc.poll() is None, proc.communicate()[0]
    pytest.fail(what)


def wait_for_first_report(study: str, url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until the study's first trial has reported an epoch (so its checkpoint exists)."""
    wait_for_trials(study, url, proc, lambda ts: bool(ts and ts[0].intermediate_values),
                    "the trial never reported", timeout)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")


def chromium(url: str, profile: Path, *args: str, budget_ms: int = 10000) -> str:
    """Headless Chromium on ``url`` (a fresh profile in ``profile``), after ``budget_ms`` of virtual
    time for its scripts; with no ``args``, the rendered DOM."""
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--virtual-time-budget={budget_ms}", f"--user-data-dir={profile}"]
    return subprocess.run([*flags, *(args or ("--dump-dom",)), url], check=True, capture_output=True, text=True,
                          timeout=180).stdout


def wait_for_health(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until an MLflow server on 127.0.0.1:``port`` answers ``/health``, while ``proc`` runs."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return
        except OSError:
            assert time.time() < deadline and proc.poll() is None, proc.stdout.read() if proc.poll() is not None else ""
            time.sleep(0.5)


# ---------------------------------------------------------------------------------------------
# A stand-in trainer for sweep tests that are about orchestration (kills, retries, workers)


class PacedTrain:
    """``vitsweep.train.loop.train``'s signature and result without computing: each epoch sleeps
    ``epoch_s`` and reports a val_acc that depends on the lr and grows with epochs. With a
    ``run_dir`` it writes ``last.pt`` each epoch as the trainer does (model and config inside, the
    epochs so far in ``state``), and ``resume`` continues from it. Picklable, for worker processes."""

    def __init__(self, epoch_s: float = 0.05):
        self.epoch_s = epoch_s

    def __call__(self, config: Config, on_epoch: Any = None, *, run_dir: Any = None, resume: bool = False,
                 progress: bool = False, data: Any = None) -> TrainResult:
        t0 = time.perf_counter()
        run_dir = Path(run_dir) if run_dir is not None else None
        history: list[dict[str, float]] = []
        if resume and run_dir is not None and (run_dir / "last.pt").is_file():
            history = [dict(m) for m in load_checkpoint(run_dir / "last.pt")["state"]["history"]]
        epochs = config.train.epochs
        for epoch in range(len(history) + 1, epochs + 1):
            time.sleep(self.epoch_s)
            acc = max(0.1, 0.9 - 0.25 * abs(math.log10(config.optimizer.lr) + 3)) * epoch / epochs
            m = {"epoch": float(epoch), "train_loss": 2.3 * (1 - acc), "val_loss": 2.3 * (1 - acc), "val_acc": acc,
                 "lr": config.optimizer.lr, "images_per_sec": 0.0, "epoch_time": self.epoch_s}
            history.append(m)
            if run_dir is not None:
                save_atomic({"model": {}, "config": config.to_dict(), "state": {"epoch": epoch, "history": history}},
                            run_dir / "last.pt")
            if on_epoch is not None:
                on_epoch(epoch, m)
        best = max(history, key=lambda h: h["val_acc"])
        return TrainResult(stop_reason="completed", epochs_run=len(history), best_val_acc=best["val_acc"],
                           best_epoch=int(best["epoch"]), history=history, test=None, run_dir=run_dir, device="cpu",
                           precision="fp32", num_params=0, wall_time=time.perf_counter() - t0)


def run_paced(sweep_file: str, epoch_s: str = "0.05", workers: str = "1") -> None:
    """``vitsweep run SWEEP_FILE`` with :class:`PacedTrain` as the trainer (see :func:`spawn_sweep`),
    signals handled as the CLI handles them (SIGTERM like Ctrl-C; exit 130 or 143)."""
    from vitsweep import signals
    from vitsweep.sweep.runner import run_sweep

    signals.install()
    try:
        run_sweep(load_sweep(sweep_file), workers=int(workers), train_fn=PacedTrain(float(epoch_s)))
    except KeyboardInterrupt as e:
        sys.exit(signals.exit_code(e))


def spawn_sweep(sweep_file: Path, cwd: Path, epoch_s: float = 0.05, workers: int = 1) -> subprocess.Popen:
    """Like ``spawn_cli("run", SWEEP_FILE)``, with :class:`PacedTrain` as the trainer: a sweep that
    is killed mid-trial without training real models for many epochs."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from tests.helpers import run_paced; run_paced(*sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", code, str(sweep_file), str(epoch_s), str(workers)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
