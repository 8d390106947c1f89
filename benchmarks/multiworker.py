"""Trials per minute with 1, 2, 4, 8 workers on one PostgreSQL-backed study, with a trivial trainer.

Each worker is a process running ``run_sweep`` (what ``vitsweep run`` does: study set-up under the
budget lock, the worker loop, TPE sampling, reports and pruning checks, MLflow when asked) with
``train_fn=`` a trainer that sleeps ``--epoch-s`` per epoch and reports
a made-up val_acc. Sleeping costs no CPU, so what is left is orchestration: if it did not grow
with workers, trials/min would grow in proportion to the workers and the overhead per trial
would stay flat. Every count gets a fresh database (created and dropped here).

    python benchmarks/multiworker.py                                   # 1,2,4,8 workers
    python benchmarks/multiworker.py --workers 1,4 --trials-per-worker 10 --tracking sqlite
    python benchmarks/multiworker.py --pg postgresql+psycopg2://USER:PW@HOST:5432/postgres
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy

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

    run_sweep(sweep, out=lambda line: None, train_fn=trivial_train(epoch_s))


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,4,8", help="comma-separated worker counts")
    ap.add_argument("--trials-per-worker", type=int, default=8)
    ap.add_argument("--epoch-s", type=float, default=0.5, help="the trivial trainer's sleep per epoch")
    ap.add_argument("--pg", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres",
                    help="an admin URL: a database per worker count is created and dropped beside it")
    ap.add_argument("--tracking", choices=["none", "sqlite"], default="none",
                    help="MLflow too (a SQLite store per count), or Optuna only")
    args = ap.parse_args()
    counts = [int(c) for c in args.workers.split(",")]

    admin = sqlalchemy.create_engine(args.pg, isolation_level="AUTOCOMMIT")
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for n in counts:
        db = f"vs_bench_{uuid.uuid4().hex[:10]}"
        tmp = Path(tempfile.mkdtemp(prefix="vitsweep-mw-"))
        with admin.connect() as c:
            c.execute(sqlalchemy.text(f"CREATE DATABASE {db}"))
        try:
            url = admin.url.set(database=db).render_as_string(hide_password=False)
            tracking = f"sqlite:///{tmp}/mlflow.db" if args.tracking == "sqlite" else "none"
            n_trials = n * args.trials_per_worker
            sweep = _sweep(url, tracking, tmp, n_trials, seed=n)
            procs = [ctx.Process(target=_one_worker, args=(sweep, args.epoch_s)) for _ in range(n)]
            t0 = time.perf_counter()
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            wall = time.perf_counter() - t0
            if any(p.exitcode for p in procs):
                raise SystemExit(f"{n} workers: a worker exited with {[p.exitcode for p in procs]}")
            from vitsweep.sweep.storage import load_study

            trials = load_study("bench", url).get_trials()
            assert len(trials) == n_trials, (len(trials), n_trials)
            # in-trial overhead: a trial's duration minus the epochs it slept
            over = [t.duration.total_seconds() - len(t.intermediate_values) * args.epoch_s for t in trials]
            slept = sum(len(t.intermediate_values) for t in trials) * args.epoch_s
            # steady state: from the first trial's start to the last one's end (process start-up,
            # imports and study set-up excluded: they are paid once per worker, not per trial)
            span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
            rows.append({"workers": n, "trials": len(trials), "wall_s": wall, "trials_per_min": 60 * len(trials) / span,
                         "busy": slept / (span * n), "overhead_ms": 1000 * statistics.median(over)})
            r = rows[-1]
            print(f"{n} workers: {r['trials']} trials in {span:.1f}s ({wall:.1f}s with start-up), "
                  f"{r['trials_per_min']:.1f} trials/min, median in-trial overhead {r['overhead_ms']:.0f} ms, "
                  f"workers busy training {100 * r['busy']:.0f}%", flush=True)
        finally:
            with admin.connect() as c:
                c.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            shutil.rmtree(tmp, ignore_errors=True)

    base = rows[0]
    print(f"\n{'workers':>7} {'trials/min':>10} {'speed-up':>8} {'ideal':>6} {'overhead/trial':>15} {'busy':>6}")
    for r in rows:
        print(f"{r['workers']:>7} {r['trials_per_min']:>10.1f} {r['trials_per_min'] / base['trials_per_min']:>8.2f} "
              f"{r['workers'] / base['workers']:>6.1f} {r['overhead_ms']:>12.0f} ms {100 * r['busy']:>5.0f}%")
    print(f"(trivial trainer: {EPOCHS} epochs x {args.epoch_s}s asleep; "
          f"tracking: {args.tracking}; trials/min from the first trial's start to the last one's end; "
          f"busy: the share of that time the workers spent in the trainer; {os.cpu_count()} CPU cores)")


if __name__ == "__main__":
    main()
