"""Trials per hour of a short real sweep with ``--workers 1`` and ``--workers 2`` on this CPU.

Each run is a fresh study (SQLite storage, no MLflow) of 8 random-sampled trials that all train the
same number of epochs (no pruning), so the trials are comparable and trials/hour is the measure.
``--baseline-src DIR`` also runs the same sweeps with the vitsweep source in DIR (e.g. a checkout
of the commit before the worker placement plan: ``git worktree add /tmp/old e6369a2``), in this run.

    python benchmarks/workers_cpu.py [--baseline-src /tmp/old] [--trials 8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWEEP = """\
study: {{name: workers, direction: maximize, metric: val_acc, n_trials: {trials}, seed: 0}}
sampler: {{name: random}}
pruner: {{name: none}}
trainer:
  data: {data}
  model: {{preset: custom, dim: 96, depth: 4, heads: 3, mlp_ratio: 2.0, patch_size: 4, drop_path: 0.0}}
  optimizer: {{name: adamw, lr: 0.001}}
  augment: {{policy: basic}}
  train: {{epochs: 2, batch_size: 128, precision: fp32, compile: {compile}, test: false, checkpoint: false}}
space:
  lr: {{path: optimizer.lr, low: 3.0e-4, high: 3.0e-3, log: true}}
  weight_decay: {{path: optimizer.weight_decay, low: 0.0, high: 0.1}}
"""


def run(workers: int, src: Path | None, sweep: Path, tmp: Path, label: str) -> float:
    db = tmp / f"{label}-w{workers}.db"
    env = {**os.environ, **({"PYTHONPATH": str(src)} if src else {})}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vitsweep", "run", str(sweep), "--workers", str(workers),
                           "--storage", f"sqlite:///{db}", "--tracking-uri", "none"],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{label} --workers {workers} failed:\n{proc.stdout}\n{proc.stderr}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/cifar10")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--baseline-src", type=Path, help="a vitsweep checkout to compare with, in the same run")
    args = ap.parse_args()
    data = (f"{{source: imagefolder, root: {Path(args.data).resolve()}, train_limit: 3000, val_size: 500, test_limit: 100}}"
            if Path(args.data, "train").is_dir() else "{source: synthetic, synthetic_train: 3500, val_size: 500}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"{args.trials} trials of 2 epochs (ViT dim 96 depth 4 patch 4 on 3,000 images), {os.cpu_count()} cores",
              flush=True)
        for label, src in ([("baseline", args.baseline_src)] if args.baseline_src else []) + [("this", None)]:
            sweep = tmp / f"{label}.yaml"
            # the baseline's trainer config has no "auto" compile: keep both eager
            sweep.write_text(SWEEP.format(trials=args.trials, data=data, compile="false"))
            rates = {}
            for workers in (1, 2):
                wall = run(workers, src, sweep, tmp, label)
                rates[workers] = args.trials / wall * 3600
                print(f"{label:>8} --workers {workers}: {wall:6.1f} s, {rates[workers]:6.1f} trials/hour", flush=True)
            print(f"{label:>8} workers 2 / workers 1: {rates[2] / rates[1]:.2f}x", flush=True)


if __name__ == "__main__":
    main()
