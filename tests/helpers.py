"""Helpers shared by several test modules (conftest.py holds the fixtures): tiny configs and
sweep files, running the CLI in-process or as a process, waiting for a process to do something and
tearing it down, and the tests that need PostgreSQL, Chromium or docker-compose."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest
from mlflow import MlflowClient

from vitsweep.train.checkpoint import load_checkpoint, save_atomic
from vitsweep.cli import main
from vitsweep.train.config import Config, build_config
from vitsweep.sweep.spec import load_sweep
from vitsweep.sweep.storage import load_study
from vitsweep.train.loop import TrainResult, train

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def variant(base: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    """A copy of the config dict ``base`` with some sections' keys replaced:
    ``variant(TINY, train={"epochs": 3})``."""
    out = copy.deepcopy(base)
    for name, keys in sections.items():
        out[name] = {**out.get(name, {}), **copy.deepcopy(keys)}
    return out


# The one tiny trainer config: a ViT that trains in well under a second per epoch on a CPU. Every
# other trainer config of the tests is a variant of it that overrides only what its tests need.
TINY: dict[str, Any] = {
    "data": {"source": "synthetic", "synthetic_train": 360, "synthetic_test": 100, "val_size": 100},
    "model": {"preset": "custom", "dim": 32, "depth": 2, "heads": 2, "patch_size": 8, "drop_path": 0.0},
    "optimizer": {"name": "adamw", "lr": 3e-3},
    "schedule": {"warmup_epochs": 0.5},
    "train": {"epochs": 2, "batch_size": 64, "device": "cpu", "eval_batch_size": 200},
}


def tiny_dict(**sections: dict[str, Any]) -> dict[str, Any]:
    """:data:`TINY` with some sections' keys replaced (see :func:`variant`)."""
    return variant(TINY, **sections)


def tiny_config(**dotted: Any) -> Config:
    """:data:`TINY` as a Config, with ``dotted`` overrides (``tiny_config(**{"train.epochs": 3})``)."""
    return build_config(TINY, dotted, source="tests")


# The trainer of sweep tests (3 epochs a trial): one block with a narrower MLP, less data, no warmup.
TRAINER: dict[str, Any] = tiny_dict(data={"synthetic_train": 300, "synthetic_test": 50},
                                    model={"depth": 1, "mlp_ratio": 2.0},
                                    schedule={"warmup_epochs": 0},
                                    train={"epochs": 3})


def trainer_dict(**sections: dict[str, Any]) -> dict[str, Any]:
    """:data:`TRAINER` with some sections' keys replaced: ``trainer_dict(train={"epochs": 2})``."""
    return variant(TRAINER, **sections)


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


# ---------------------------------------------------------------------------------------------
# Processes: a free port, starting one, waiting for it, tearing it down


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound to find it, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_cli(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    """``vitsweep ARGS`` as a process in a session of its own (``os.killpg`` reaches all of it).
    Tests start processes through the ``spawn`` fixture, which always tears them down."""
    return subprocess.Popen([sys.executable, "-m", "vitsweep", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid``, from /proc (children first, then theirs)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])  # after "PID (COMM) STATE"
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def kill_tree(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGKILL ``proc``, its process group, and every process below it with its group (vitsweep's
    sweep workers and the servers it starts run in groups of their own), and reap ``proc``. Once
    ``proc`` has been reaped its pid may be another's: then nothing is signalled."""
    if proc.returncode is None:  # not reaped: its pid and group id are still its own
        below = _descendants(proc.pid)
        groups = {proc.pid}
        for pid in below:
            try:
                groups.add(os.getpgid(pid))
            except ProcessLookupError:
                pass
        for group in groups - {os.getpgrp()}:  # never pytest's own group
            try:
                os.killpg(group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in below:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
    proc.wait(timeout)


def stop_group(proc: subprocess.Popen, sig: int, grace: float) -> None:
    """``sig`` to ``proc``'s process group (SIGINT: a terminal's Ctrl-C; SIGTERM: docker stop), then
    :func:`kill_tree` for whatever is left after ``grace`` seconds."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    kill_tree(proc)


class Spawned:
    """The processes a test starts, through the ``spawn`` fixture (conftest.py): each in a session
    of its own; when the test ends, passed or failed, :func:`kill_tree` for each."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        """``subprocess.Popen(argv, **kwargs)`` in a session of its own."""
        return self.add(subprocess.Popen(argv, start_new_session=True, **kwargs))

    def add(self, proc: subprocess.Popen) -> subprocess.Popen:
        self.procs.append(proc)
        return proc

    def cli(self, *args: str, cwd: Path | None = None) -> subprocess.Popen:
        """:func:`spawn_cli`."""
        return self.add(spawn_cli(*args, cwd=cwd))

    def sweep(self, sweep_file: Path, cwd: Path, epoch_s: float = 0.05, workers: int = 1) -> subprocess.Popen:
        """:func:`spawn_sweep`."""
        return self.add(spawn_sweep(sweep_file, cwd, epoch_s, workers))

    def tear_down(self) -> None:
        for proc in reversed(self.procs):
            try:
                kill_tree(proc)
            except subprocess.TimeoutExpired:
                pass
            if proc.stdout is not None:
                proc.stdout.close()


def _output(proc: subprocess.Popen, log: Path | None) -> str:
    if log is not None:
        return log.read_text()[-3000:]
    if proc.stdout is None:
        return ""
    try:
        return proc.communicate(timeout=10)[0]
    except subprocess.TimeoutExpired:  # something it started still holds the pipe
        return "(its output is still open)"


def wait_until(ready: Callable[[], T | None], what: str, proc: subprocess.Popen | None = None, timeout: float = 120,
               every: float = 0.1, log: Path | None = None) -> T:
    """Poll ``ready()`` until it returns something other than None, and return that. Fail saying
    that ``what`` did not happen, after ``timeout`` seconds or as soon as ``proc`` (the process
    that should make it happen) has exited, with its output (or the end of ``log``, its log file)."""
    deadline = time.time() + timeout
    while True:
        got = ready()
        if got is not None:
            return got
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process exited ({proc.returncode}) first:\n{_output(proc, log)}")
        if time.time() > deadline:
            pytest.fail(f"{what} (within {timeout:g} s)" + (f":\n{_output(proc, log)}" if log is not None else ""))
        time.sleep(every)


def wait_for_url(url: str, proc: subprocess.Popen, data: bytes | None = None, timeout: float = 120,
                 log: Path | None = None) -> bytes:
    """The body of the first 200 answer from ``url`` (a POST of JSON ``data``, if given), waiting
    for a server that ``proc`` starts."""

    def answer() -> bytes | None:
        try:
            req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.read() if r.status == 200 else None
        except OSError:
            return None

    return wait_until(answer, f"no answer from {url}", proc, timeout, every=0.5, log=log)


def wait_for_health(port: int, proc: subprocess.Popen, timeout: float = 120, log: Path | None = None) -> None:
    """Wait until an MLflow server on 127.0.0.1:``port`` answers ``/health``, while ``proc`` runs."""
    wait_for_url(f"http://127.0.0.1:{port}/health", proc, timeout=timeout, log=log)


def wait_for_trials(study: str, url: str, proc: subprocess.Popen, ready: Callable[[list], bool], what: str,
                    timeout: float = 120, every: float = 0.1) -> list:
    """Wait until ``ready(trials)`` holds for the study's trials, while ``proc`` (the sweep) is
    still running; fail saying ``what`` never happened. Returns those trials."""

    def trials() -> list | None:
        try:
            found = load_study(study, url).get_trials()
        except Exception:  # noqa: BLE001 - not created yet (or being created by the sweep)
            found = []
        return found if ready(found) else None

    return wait_until(trials, what, proc, timeout, every)


def wait_for_first_report(study: str, url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until the study's first trial has reported an epoch (so its checkpoint exists)."""
    wait_for_trials(study, url, proc, lambda ts: bool(ts and ts[0].intermediate_values),
                    "the trial never reported", timeout)


# ---------------------------------------------------------------------------------------------
# Tests that need PostgreSQL, Chromium, docker-compose, Slurm or grpcio (tests/cluster.py: need)

FEATURES = ("postgres", "chromium", "docker-compose", "slurm", "grpc")


def required_features() -> set[str]:
    """What $VITSWEEP_REQUIRE names (comma-separated; CI names every one of :data:`FEATURES`)."""
    return {f.strip() for f in os.environ.get("VITSWEEP_REQUIRE", "").split(",") if f.strip()}


def needs(feature: str, available: bool, reason: str) -> pytest.MarkDecorator:
    """A mark for a test (or a module's ``pytestmark``) that needs ``feature``, one of
    :data:`FEATURES`. Where the feature is missing the test skips with ``reason``, unless
    $VITSWEEP_REQUIRE names the feature: then it fails with ``reason`` (conftest.py's setup hook
    applies it), so CI cannot pass with those tests skipped."""
    assert feature in FEATURES, f"needs({feature!r}): not one of {', '.join(FEATURES)}"
    return pytest.mark.needs(feature=feature, available=available, reason=reason)


def check_needs(item: pytest.Item) -> None:
    """Skip or fail ``item`` for each :func:`needs` mark whose feature is missing."""
    for mark in item.iter_markers("needs"):
        if mark.kwargs["available"]:
            continue
        feature, reason = mark.kwargs["feature"], mark.kwargs["reason"]
        if feature in required_features():
            pytest.fail(f"{reason} (VITSWEEP_REQUIRE names {feature}: this test must run, not skip)", pytrace=False)
        raise pytest.skip.Exception(reason, _use_item_location=True)  # reported at the test, as skipif is


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = needs("chromium", CHROMIUM is not None,
                       "headless Chromium not installed (Debian: apt-get install chromium)")


def chromium(url: str, profile: Path, *args: str, budget_ms: int = 10000) -> str:
    """Headless Chromium on ``url`` (a fresh profile in ``profile``), after ``budget_ms`` of virtual
    time for its scripts; with no ``args``, the rendered DOM."""
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--virtual-time-budget={budget_ms}", f"--user-data-dir={profile}"]
    return subprocess.run([*flags, *(args or ("--dump-dom",)), url], check=True, capture_output=True, text=True,
                          timeout=180).stdout


def plotly_figures(page: str) -> dict[str, tuple[list[dict], dict]]:
    """Each figure of an HTML page written by plotly (``fig.to_html``/``write_html``) as the browser
    gets it: its div id -> (the traces, the layout), read from the ``Plotly.newPlot(id, data, layout)`` calls."""
    dec, out, at = json.JSONDecoder(), {}, 0
    while (at := page.find("Plotly.newPlot(", at)) >= 0:
        vals, pos = [], at + len("Plotly.newPlot(")
        for _ in range(3):
            while page[pos] in " \n\t,":
                pos += 1
            val, pos = dec.raw_decode(page, pos)
            vals.append(val)
        out[vals[0]] = (vals[1], vals[2])
        at = pos
    return out


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
