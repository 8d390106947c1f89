"""Trials per minute with 8, 16 and 32 workers on one PostgreSQL-backed study, with a trivial
trainer, each worker on the database directly and through ``vitsweep storage-proxy``; and how
many connections the database holds meanwhile (the peak of ``pg_stat_activity``).

Each worker is a process running ``run_sweep`` (what ``vitsweep run`` does: study set-up under the
budget lock, the worker loop, TPE sampling, reports and pruning checks, heartbeats, MLflow when
asked) with ``train_fn=`` a trainer that sleeps ``--epoch-s`` per epoch and reports a made-up
val_acc. Sleeping costs no CPU, so what is left is orchestration: if it did not grow with workers,
trials/min would grow in proportion to the workers and the overhead per trial would stay flat.
Every count and mode gets a fresh database (created and dropped here); in proxy mode a
``vitsweep storage-proxy`` process on it serves the workers (``--storage grpc://127.0.0.1:PORT``).

The trainer imports nothing, but vitsweep's worker code imports torch and MLflow (about 1 GB a
process): the workers are forked from this process after it imported them once, so 32 of them
share those pages and fit in 24 GiB.

    python benchmarks/multiworker.py                                   # 8,16,32 workers, direct and proxy
    python benchmarks/multiworker.py --workers 1,4 --modes direct --trials-per-worker 10 --tracking sqlite
    python benchmarks/multiworker.py --pg postgresql+psycopg2://USER:PW@HOST:5432/postgres
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy
from sqlalchemy.pool import NullPool

EPOCHS = 3


def trivial_train(epoch_s: float):
    """A stand-in for ``vitsweep.train.loop.train``: same signature and result, no computing."""
    from vitsweep.train.loop import TrainResult

    def train(config, on_epoch=None, *, run_dir=None, resume=False, progress=False, data=None):
        t0 = time.perf_counter()
        history = []
        for epoch in range(1, config.train.epochs + 1):
            time.sleep(epoch_s)
            # best near lr = 1e-3, improving with epochs: something for TPE to act on
            acc = max(0.1, 0.9 - 0.25 * abs(math.log10(config.optimizer.lr) + 3)) * epoch / config.train.epochs
            m = {"epoch": float(epoch), "train_loss": 2.3 * (1 - acc), "val_loss": 2.3 * (1 - acc), "val_acc": acc,
                 "lr": config.optimizer.lr, "images_per_s": 0.0, "epoch_s": epoch_s}
            history.append(m)
            if on_epoch is not None:
                on_epoch(epoch, m)
        best = max(h["val_acc"] for h in history)
        return TrainResult(stop_reason="completed", epochs_run=len(history), best_val_acc=best,
                           best_epoch=len(history), history=history, test=None, run_dir=None, device="cpu",
                           precision="fp32", num_params=0, wall_time=time.perf_counter() - t0)

    return train


def _one_worker(sweep, epoch_s: float) -> None:
    from vitsweep.sweep.runner import run_sweep

    try:
        run_sweep(sweep, out=lambda line: None, train_fn=trivial_train(epoch_s))
    except Exception as e:  # noqa: BLE001 - reported by the parent (e.g. PostgreSQL's max_connections)
        (Path(os.environ["VITSWEEP_BENCH_ERRORS"]) / f"{os.getpid()}.txt").write_text(" ".join(str(e).split())[:300])
        sys.exit(1)


def _sweep(url: str, tracking: str, tmp: Path, n_trials: int, seed: int):
    from vitsweep.sweep.spec import build_sweep

    return build_sweep({
        "study": {"name": "bench", "n_trials": n_trials, "seed": seed},
        "sampler": {"name": "tpe", "n_startup_trials": 4},
        "pruner": {"name": "none"},  # every trial the same length (pruning checks still run each epoch)
        "storage": {"url": url, "heartbeat_interval": 5, "grace_period": 30},
        "tracking": {"uri": tracking, "artifacts": str(tmp / "mlartifacts")},
        "trials": {"dir": str(tmp / "trials")},
        "trainer": {"data": {"source": "synthetic", "synthetic_train": 60, "synthetic_test": 10, "val_size": 10},
                    "model": {"preset": "custom", "dim": 8, "depth": 1, "heads": 1, "patch_size": 8},
                    "train": {"epochs": EPOCHS, "device": "cpu", "checkpoint": False, "test": False}},
        "space": {"lr": {"path": "optimizer.lr", "low": 1e-5, "high": 1e-1, "log": True},
                  "wd": {"path": "optimizer.weight_decay", "low": 0.0, "high": 0.1}},
    }, source="benchmark")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Watch:
    """Samples, while the workers run, the database's connections (pg_stat_activity) and the
    memory the machine has in use (MemTotal - MemAvailable); keeps the peaks."""

    def __init__(self, admin: sqlalchemy.Engine, db: str):
        self.admin, self.db = admin, db
        self.connections = self.memory = 0
        self.full = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                with self.admin.connect() as c:
                    n = c.execute(sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d"),
                                  {"d": self.db}).scalar()
                self.connections = max(self.connections, int(n))
            except sqlalchemy.exc.OperationalError:  # every connection taken (max_connections): the workers have them
                self.full = True
            self.memory = max(self.memory, _memory_in_use())
            self.stop.wait(0.25)

    def __enter__(self) -> "_Watch":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)


def _max_connections(admin: sqlalchemy.Engine) -> int:
    with admin.connect() as c:
        return int(c.execute(sqlalchemy.text("SHOW max_connections")).scalar())


def _memory_in_use() -> int:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return (int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) * 1024


def _start_proxy(url: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    log = open(tmp / "proxy.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "vitsweep", "storage-proxy", "--storage", url, "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    grpc_url = f"grpc://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:  # listening once the storage is open; no gRPC here: this process forks the workers
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return proc, grpc_url
        except OSError:  # not up yet
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the storage proxy did not start: {(tmp / 'proxy.log').read_text()[-2000:]}")
            time.sleep(0.3)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _measure(admin: sqlalchemy.Engine, n: int, mode: str, args: argparse.Namespace) -> dict:
    from vitsweep.sweep.storage import load_study

    db = f"vs_bench_{uuid.uuid4().hex[:10]}"
    tmp = Path(tempfile.mkdtemp(prefix="vitsweep-mw-"))
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f"CREATE DATABASE {db}"))
    proxy = None
    try:
        url = admin.url.set(database=db).render_as_string(hide_password=False)
        worker_url = url
        if mode == "proxy":
            proxy, worker_url = _start_proxy(url, tmp)
        tracking = f"sqlite:///{tmp}/mlflow.db" if args.tracking == "sqlite" else "none"
        n_trials = n * args.trials_per_worker
        sweep = _sweep(worker_url, tracking, tmp, n_trials, seed=n)
        (tmp / "errors").mkdir()
        os.environ["VITSWEEP_BENCH_ERRORS"] = str(tmp / "errors")
        ctx = multiprocessing.get_context("fork")  # the imports above shared, not repeated per worker
        procs = [ctx.Process(target=_one_worker, args=(sweep, args.epoch_s)) for _ in range(n)]
        base_memory = _memory_in_use()
        proxy_cpu0 = _cpu_s(proxy.pid) if proxy is not None else 0.0
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        with _Watch(admin, db) as watch:
            for p in procs:
                p.join()
        wall = time.perf_counter() - t0
        proxy_cpu = _cpu_s(proxy.pid) - proxy_cpu0 if proxy is not None else None
        failed = [p for p in procs if p.exitcode]
        if failed:
            errors = sorted({f.read_text() for f in (tmp / "errors").glob("*.txt")})
            why = "; ".join(e.split("\n")[0][:160] for e in errors) or f"exit codes {[p.exitcode for p in failed]}"
            print(f"{n} workers, {mode}: {len(failed)} of {n} workers failed ({why}); database connections at "
                  f"most {watch.connections}{' and then all' if watch.full else ''} (max_connections "
                  f"{_max_connections(admin)})", flush=True)
            return {"workers": n, "mode": mode, "failed": len(failed), "why": why,
                    "connections": f"{watch.connections}{'+' if watch.full else ''}",
                    "memory_gib": (watch.memory - base_memory) / 2**30}
        trials = load_study("bench", url).get_trials()
        assert len(trials) == n_trials, (len(trials), n_trials)
        # in-trial overhead: a trial's duration minus the epochs it slept
        over = [t.duration.total_seconds() - len(t.intermediate_values) * args.epoch_s for t in trials]
        slept = sum(len(t.intermediate_values) for t in trials) * args.epoch_s
        # steady state: from the first trial's start to the last one's end (process start-up,
        # imports and study set-up excluded: they are paid once per worker, not per trial)
        span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
        r = {"workers": n, "mode": mode, "trials": len(trials), "wall_s": wall,
             "trials_per_min": 60 * len(trials) / span, "busy": slept / (span * n),
             "overhead_ms": 1000 * statistics.median(over), "connections": watch.connections,
             "memory_gib": (watch.memory - base_memory) / 2**30,
             "proxy_ms": None if proxy_cpu is None else 1000 * proxy_cpu / len(trials)}
        print(f"{n} workers, {mode}: {r['trials']} trials in {span:.1f}s ({wall:.1f}s with start-up), "
              f"{r['trials_per_min']:.1f} trials/min, median in-trial overhead {r['overhead_ms']:.0f} ms, "
              f"workers busy training {100 * r['busy']:.0f}%, database connections at most {r['connections']}, "
              f"memory +{r['memory_gib']:.1f} GiB"
              + (f", the proxy's CPU {r['proxy_ms']:.0f} ms a trial" if r["proxy_ms"] is not None else ""), flush=True)
        return r
    finally:
        if proxy is not None:
            _stop(proxy)
        with admin.connect() as c:
            c.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="8,16,32", help="comma-separated worker counts")
    ap.add_argument("--modes", default="direct,proxy", help="direct (PostgreSQL), proxy (vitsweep storage-proxy)")
    ap.add_argument("--trials-per-worker", type=int, default=8)
    ap.add_argument("--epoch-s", type=float, default=0.5, help="the trivial trainer's sleep per epoch")
    ap.add_argument("--pg", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres",
                    help="an admin URL: a database per worker count is created and dropped beside it")
    ap.add_argument("--tracking", choices=["none", "sqlite"], default="none",
                    help="MLflow too (a SQLite store per count), or Optuna only")
    args = ap.parse_args()
    counts = [int(c) for c in args.workers.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    if set(modes) - {"direct", "proxy"}:
        raise SystemExit(f"--modes {args.modes}: direct and/or proxy")

    import vitsweep.sweep.runner  # noqa: F401 - imported once, before the workers fork

    # NullPool: no connection of this process is open while workers fork (they would share it)
    admin = sqlalchemy.create_engine(args.pg, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    rows = [_measure(admin, n, mode, args) for n in counts for mode in modes]

    print(f"\n{'workers':>7} {'mode':>6} {'trials/min':>10} {'speed-up':>8} {'ideal':>6} {'overhead/trial':>15} "
          f"{'busy':>6} {'db conns':>8} {'memory':>8}")
    for r in rows:
        if r.get("failed"):
            print(f"{r['workers']:>7} {r['mode']:>6} {'failed':>10}: {r['failed']} of {r['workers']} workers ({r['why'][:70]}) "
                  f"{r['connections']:>8} {r['memory_gib']:>6.1f} G")
            continue
        base = next(b for b in rows if b["mode"] == r["mode"] and not b.get("failed"))
        print(f"{r['workers']:>7} {r['mode']:>6} {r['trials_per_min']:>10.1f} "
              f"{r['trials_per_min'] / base['trials_per_min']:>8.2f} {r['workers'] / base['workers']:>6.1f} "
              f"{r['overhead_ms']:>12.0f} ms {100 * r['busy']:>5.0f}% {r['connections']:>8} "
              f"{r['memory_gib']:>6.1f} G")
    print(f"(trivial trainer: {EPOCHS} epochs x {args.epoch_s}s asleep; tracking: {args.tracking}; trials/min from the "
          f"first trial's start to the last one's end; busy: the share of that time the workers spent in the trainer; "
          f"db conns: the most pg_stat_activity rows on the sweep's database; memory: the most the machine had in use "
          f"above the start; PostgreSQL max_connections {_max_connections(admin)}; {os.cpu_count()} CPU cores)")


if __name__ == "__main__":
    main()
