"""Time to accuracy on the full CIFAR-10 split: a config against a baseline in the same wall budget.

Trains ``--config`` (default: the CPU recipe) on 45,000 training images, validating on 5,000 every
epoch, then, in the same run and with the same wall budget, a baseline in the style of the CPU
ViT-Tiny project (dim 192, depth 12, 3 heads, patch 4, AdamW lr 1e-3, wd 0.05, warmup ~10% of
the run, batch 64, AutoAugment's CIFAR-10 policy, fp32, its cosine schedule stretched to the
budget). Prints, for each: the wall time to 60 / 70 / 75 / 80% validation accuracy (or "not
reached"), the best validation accuracy, the test accuracy of the final model (measured once, at
the end; with the cosine schedule run to its end, the last epoch is the best or within noise of
it), and the curve.

    python benchmarks/time_to_accuracy.py                          # 55-minute budget each: ~2 hours
    python benchmarks/time_to_accuracy.py --minutes 10 --no-baseline
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vitsweep.train.config import build_config, load_config
from vitsweep.train.data import load_data
from vitsweep.train.device import resolve_device
from vitsweep.train.loop import TrainResult, train

TARGETS = (0.60, 0.70, 0.75, 0.80)

BASELINE = {  # the CPU ViT-Tiny project's recipe
    "model": {"preset": "custom", "dim": 192, "depth": 12, "heads": 3, "mlp_ratio": 4.0, "patch_size": 4,
              "drop_path": 0.1},
    "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
    "schedule": {"warmup_epochs": 0.4, "by_time": True},  # ~10% of the ~4 epochs it fits in 55 min here
    "augment": {"policy": "autoaugment"},
    "train": {"epochs": 100, "batch_size": 64, "precision": "fp32", "compile": False},
}


def time_to(result: TrainResult, target: float) -> str:
    for h in result.history:
        if h["val_acc"] >= target:
            return f"{h['elapsed'] / 60:5.1f} min"
    return "not reached"


def run(name: str, cfg, data) -> TrainResult:
    print(f"\n== {name}: {cfg.model.dim}x{cfg.model.depth} patch {cfg.model.patch_size}, {cfg.optimizer.name} "
          f"lr {cfg.optimizer.lr:g}, batch {cfg.train.batch_size}, {cfg.augment.policy}, {cfg.train.precision}, "
          f"time limit {cfg.train.time_limit:.0f} s", flush=True)

    def show(epoch: int, m: dict[str, float]) -> None:
        print(f"  epoch {epoch:>3}  {m['elapsed'] / 60:5.1f} min  {int(m['image_size'])}px  val_acc {m['val_acc']:6.2%}  "
              f"{m['images_per_sec']:6.0f} img/s  {m['flops'] / 1e15:6.2f} PFLOP", flush=True)

    return train(cfg, show, data=data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="sweeps/cpu_recipe.yaml")
    ap.add_argument("--minutes", type=float, default=55.0, help="wall budget of each run (train.time_limit)")
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    limit = {"train.time_limit": args.minutes * 60, "train.checkpoint": False}
    cfg = load_config(args.config).replace(**limit)
    data = load_data(cfg.data, resolve_device(cfg.train.device))
    runs = {Path(args.config).stem: cfg}
    if not args.no_baseline:
        runs["baseline (CPU ViT-Tiny style)"] = build_config({**BASELINE, "data": cfg.to_dict()["data"]}, limit)
    results = {name: run(name, c, data) for name, c in runs.items()}

    print(f"\n{'run':<32}" + "".join(f"{f'to {t:.0%}':>13}" for t in TARGETS) + f"{'best val':>10}{'test':>9}{'epochs':>8}")
    for name, r in results.items():
        test = f"{r.test.acc:.2%}" if r.test else "-"
        print(f"{name:<32}" + "".join(f"{time_to(r, t):>13}" for t in TARGETS)
              + f"{r.best_val_acc:>10.2%}{test:>9}{r.epochs_run:>8}   ({r.wall_time / 60:.1f} min wall)")


if __name__ == "__main__":
    main()
