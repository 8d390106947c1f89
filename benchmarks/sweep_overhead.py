"""What the sweep layer (storage, sampling, pruning checks, MLflow) adds to trial wall time.

Runs N trials of a sweep through ``run_sweep`` (fresh SQLite stores in a temp folder, pruning off so
every trial trains all its epochs), then the same N configs bare: ``train(config_for_params(...))``
in the same process, with the same data already in memory. Prints both and the ratio.

    python benchmarks/sweep_overhead.py                      # sweeps/smoke.yaml, 4 trials
    python benchmarks/sweep_overhead.py --sweep sweeps/smoke.yaml --n-trials 6 --synthetic
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

from vitsweep.train.data import load_data
from vitsweep.train.device import resolve_device
from vitsweep.sweep.runner import run_sweep
from vitsweep.sweep.space import config_for_params
from vitsweep.sweep.spec import PrunerSpec, load_sweep
from vitsweep.sweep.storage import load_study
from vitsweep.train.loop import train


class TimedTrain:
    """``train`` as a sweep's ``train_fn``, timing each call and the ``on_epoch`` callbacks inside it
    (the sweep's own per-epoch work: MLflow writes, reports, pruning checks)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, float]] = []  # per trial: train_s (callbacks included), callbacks_s

    def __call__(self, config, on_epoch=None, **kwargs):
        clock = {"train_s": 0.0, "callbacks_s": 0.0}

        def timed(epoch, m):
            t = time.perf_counter()
            try:
                if on_epoch is not None:
                    on_epoch(epoch, m)
            finally:
                clock["callbacks_s"] += time.perf_counter() - t

        t0 = time.perf_counter()
        try:
            return train(config, timed, **kwargs)
        finally:
            clock["train_s"] = time.perf_counter() - t0
            self.calls.append(clock)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", default="sweeps/smoke.yaml")
    ap.add_argument("--n-trials", type=int, default=4)
    ap.add_argument("--synthetic", action="store_true", help="use generated data instead of the sweep's")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vitsweep-overhead-"))
    try:
        sweep = load_sweep(args.sweep).with_overrides(n_trials=args.n_trials, storage=f"sqlite:///{tmp}/optuna.db",
                                                      tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        base = sweep.base
        if args.synthetic:
            base = base.replace(**{"data.source": "synthetic", "data.synthetic_train": 1250, "data.val_size": 250})
        sweep = dataclasses.replace(sweep, base=base, pruner=PrunerSpec(name="none"),
                                    study=dataclasses.replace(sweep.study, name="overhead"),
                                    tracking=dataclasses.replace(sweep.tracking, artifacts=str(tmp / "art")),
                                    trials=dataclasses.replace(sweep.trials, dir=str(tmp / "trials")))
        load_data(base.data, resolve_device(base.train.device))  # both sides start with data in memory

        t0 = time.perf_counter()
        timed = TimedTrain()
        run_sweep(sweep, out=lambda line: print("  sweep " + line), train_fn=timed)
        sweep_wall = time.perf_counter() - t0
        trials = load_study("overhead", f"sqlite:///{tmp}/optuna.db").get_trials()
        trial_time = sum(t.duration.total_seconds() for t in trials)

        bare = []
        for t in trials:
            cfg = config_for_params(sweep, t.params)
            s = time.perf_counter()
            train(cfg, run_dir=tmp / "bare" / str(t.number) if cfg.train.checkpoint else None)
            bare.append(time.perf_counter() - s)
            print(f"  bare  trial {t.number}: {bare[-1]:.2f}s (in sweep: {t.duration.total_seconds():.2f}s)")
        bare_total = sum(bare)
        print(f"trials: {len(trials)}, {sweep.epochs} epochs each, data {base.data.source}")
        print(f"bare train() total:            {bare_total:8.2f}s")
        print(f"sweep, sum of trial durations: {trial_time:8.2f}s   ratio {trial_time / bare_total:.3f}")
        inside = trial_time  # each trial's duration in storage: the whole objective, and Optuna around it
        pure = sum(c["train_s"] - c["callbacks_s"] for c in timed.calls)
        print(f"measured inside the same trials (robust to a busy machine): trainer {pure:.2f}s, "
              f"whole objective {inside:.2f}s, orchestration {inside - pure:.2f}s, ratio {inside / pure:.3f}")
        print(f"sweep, whole run_sweep():      {sweep_wall:8.2f}s   ratio {sweep_wall / bare_total:.3f}  "
              f"(includes creating both stores and the MLflow parent run)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
