"""The proof (issue 20): does a vitsweep sweep find a config that beats the hand-tuned recipe?

One machine, one go, nothing else running on it (the comparison is time-based):

1. the sweep: ``vitsweep run SWEEP --workers 2`` (``sweeps/cifar10_cpu.yaml``: at most 60 minutes);
2. its champion: ``vitsweep best --study STUDY -o storage/proof/STUDY/champion.yaml``, the best
   trial's full trainer config, chosen on validation accuracy;
3. the champion and ``sweeps/cpu_recipe.yaml`` trained side by side at the same final budget: the
   full 45,000 training images, the same ``train.time_limit`` (the lr schedule and progressive
   resolution stretched to it: ``schedule.by_time``), each on a core of its own with one thread
   (``taskset -c N vitsweep train FILE --threads 1``). Each validates every epoch and measures the
   test set once, at the end.

It prints, for both, the best validation accuracy, the test accuracy and the minutes, and which won
on validation. When the champion wins (and is not the sweep file's enqueued starting point, which
the sweep only kept), its config is written as a candidate recipe
(``storage/proof/STUDY/cpu_recipe.yaml``, saying where it came from) to copy over
``sweeps/cpu_recipe.yaml``. The outcome is kept in ``storage/proof/STUDY/proof.json``.

    python benchmarks/proof.py                                  # sweep + 2 x 55 min side by side: ~2 hours
    python benchmarks/proof.py --skip-sweep                     # the study is already swept
    python benchmarks/proof.py --minutes 20 --sweep sweeps/cifar10_cpu_wsd.yaml

Budgets here are wall time, by design (the recipe's promise is "in 55 minutes"): run it alone on
the machine, and compare only the two arms of one run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path
from queue import Empty
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# What both arms share at the final budget, on top of their own configs.
FINAL = {"data.train_limit": None, "schedule.by_time": True, "schedule.horizon": None, "schedule.branches": [],
         "train.epochs": 1000, "train.test": True, "train.checkpoint": True, "train.patience": None,
         "train.target_acc": None}


def study_of(raw: dict[str, Any], sweep_file: Path) -> str:
    return (raw.get("study") or {}).get("name") or sweep_file.stem


def vitsweep(*args: str, stores: list[str]) -> list[str]:
    return [sys.executable, "-m", "vitsweep", *args, *stores]


def sweep(sweep_file: Path, workers: int, stores: list[str]) -> float:
    """Run the sweep (or resume it: a finished study starts no trial); its wall minutes."""
    t0 = time.perf_counter()
    print(f"== sweep: vitsweep run {sweep_file} --workers {workers}", flush=True)
    subprocess.run(vitsweep("run", str(sweep_file), "--workers", str(workers), stores=stores), check=True)
    return (time.perf_counter() - t0) / 60


def arm(name: str, config_file: Path, minutes: float, core: int | None, run_dir: Path, queue: Any) -> None:
    """One side of the comparison, in a process of its own on ``core`` with one torch thread."""
    if core is not None:
        os.sched_setaffinity(0, {core})
    import torch

    from vitsweep.train.config import load_config
    from vitsweep.train.loop import train

    torch.set_num_threads(1)
    sets = [f"{k}={json.dumps(v)}" for k, v in {**FINAL, "train.time_limit": minutes * 60}.items()]
    cfg = load_config(config_file, sets)

    def show(epoch: int, m: dict[str, float]) -> None:
        print(f"  {name:<9} epoch {epoch:>3}  {m['elapsed'] / 60:5.1f} min  val_acc {m['val_acc']:6.2%}", flush=True)

    r = train(cfg, show, run_dir=run_dir)
    queue.put({"arm": name, "config": str(config_file), "run_dir": str(run_dir), "best_val_acc": r.best_val_acc,
               "best_epoch": r.best_epoch, "test_acc": r.test.acc if r.test else None, "epochs": r.epochs_run,
               "minutes": r.wall_time / 60, "precision": r.precision, "stop_reason": r.stop_reason,
               "params": r.num_params})


def side_by_side(arms: dict[str, Path], minutes: float, out: Path) -> dict[str, dict[str, Any]]:
    """Train every arm at once, each pinned to its own core when there are enough of them."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = len(cores) >= len(arms)
    ctx = mp.get_context("spawn")  # a fresh interpreter per arm: no torch state shared
    queue = ctx.Queue()
    procs = []
    for i, (name, path) in enumerate(arms.items()):
        core = cores[i] if pin else None
        print(f"== {name}: " + (f"taskset -c {core} " if pin else "") + f"vitsweep train {path} --threads 1 "
              f"--set train.time_limit={minutes * 60:.0f} --set schedule.by_time=true --set data.train_limit=null",
              flush=True)
        run_dir = out / name
        if run_dir.exists():
            raise SystemExit(f"error: {run_dir} already holds a run: move it away, or give another --out")
        procs.append(ctx.Process(target=arm, args=(name, path, minutes, core, run_dir, queue)))
    for p in procs:
        p.start()
    results: dict[str, dict[str, Any]] = {}
    while len(results) < len(procs):
        try:
            r = queue.get(timeout=5)
            results[r["arm"]] = r
        except Empty:  # an arm that died (its traceback is above) never puts its result
            failed = [name for name, p in zip(arms, procs) if p.exitcode not in (None, 0) and name not in results]
            if failed:
                for p in procs:
                    p.terminate()
                raise SystemExit(f"error: the {', '.join(failed)} arm failed; see its error above") from None
    for p in procs:
        p.join()
    return results


def candidate_recipe(study: str, results: dict[str, dict[str, Any]], out: Path) -> Path:
    """The champion's config as a recipe file that says where it came from."""
    c, r = results["champion"], results["recipe"]
    head = (f"# The CPU recipe, found by vitsweep: the best trial of study {study} (benchmarks/proof.py,\n"
            f"# {dt.date.today()}), retrained on the full data beside the previous recipe for {c['minutes']:.0f} minutes\n"
            f"# each, one core each: {c['best_val_acc']:.2%} val / {_pct(c['test_acc'])} test against the previous\n"
            f"# recipe's {r['best_val_acc']:.2%} / {_pct(r['test_acc'])}; chosen on validation accuracy.\n")
    ran = Path(c["run_dir"]) / "config.yaml"  # what the champion arm trained: its final-budget settings included
    body = "".join(line for line in ran.read_text().splitlines(keepends=True) if not line.startswith("#"))
    path = out / "cpu_recipe.yaml"
    path.write_text(head + body)
    return path


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", type=Path, default=Path("sweeps/cifar10_cpu.yaml"))
    ap.add_argument("--recipe", type=Path, default=Path("sweeps/cpu_recipe.yaml"))
    ap.add_argument("--study", default=None, help="study name [default: the sweep file's]")
    ap.add_argument("--minutes", type=float, default=55.0, help="each arm's train.time_limit, in minutes")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-sweep", action="store_true", help="use the study as it is")
    ap.add_argument("--storage", default=None, help="Optuna storage [default: the sweep's, else storage/optuna.db]")
    ap.add_argument("--tracking-uri", default=None, help="MLflow store [default: the sweep's, else storage/mlflow.db]")
    ap.add_argument("--out", type=Path, default=None, help="[default: storage/proof/STUDY]")
    args = ap.parse_args(argv)

    from vitsweep.errors import VitsweepError
    from vitsweep.sweep.best import ENQUEUED
    from vitsweep.train.config import load_config, read_yaml

    try:  # both files checked before an hour of sweeping
        raw = read_yaml(args.sweep)
        load_config(args.recipe)
    except VitsweepError as e:
        raise SystemExit(f"error: {e}") from None
    swept = study_of(raw, args.sweep)  # the study the sweep file runs
    study = args.study or swept
    out = args.out or Path("storage/proof") / study
    out.mkdir(parents=True, exist_ok=True)
    if args.study and not args.skip_sweep and args.study != swept:
        raise SystemExit(f"error: --study {args.study}: the sweep file runs study {swept}; "
                         f"--study picks another study only with --skip-sweep")
    storage = args.storage or (raw.get("storage") or {}).get("url")  # where `vitsweep run` puts the study
    stores = ["--storage", storage] if storage else []
    t0 = time.perf_counter()
    sweep_min = None if args.skip_sweep else sweep(args.sweep, args.workers,
                                                   stores + (["--tracking-uri", args.tracking_uri] if args.tracking_uri else []))
    champion = out / "champion.yaml"
    subprocess.run(vitsweep("best", "--study", study, "-o", str(champion), stores=stores), check=True)
    enqueued = ENQUEUED in champion.read_text().partition("\n")[0]  # vitsweep best's header says so
    if enqueued:
        print("note: the champion is an enqueued point (the sweep file's enqueue:), not one the sampler found",
              flush=True)
    results = side_by_side({"champion": champion, "recipe": args.recipe}, args.minutes, out)

    print(f"\n{'arm':<10}{'best val':>10}{'test':>9}{'epochs':>8}{'minutes':>9}  precision  config")
    for name, r in results.items():
        print(f"{name:<10}{r['best_val_acc']:>10.2%}{_pct(r['test_acc']):>9}{r['epochs']:>8}{r['minutes']:>9.1f}  "
              f"{r['precision']:<9}  {r['config']}")
    gap = results["champion"]["best_val_acc"] - results["recipe"]["best_val_acc"]
    verdict = (f"the sweep's champion wins on validation by {gap * 100:.2f} points" if gap > 0 else
               f"the hand recipe wins on validation by {-gap * 100:.2f} points")
    if enqueued:
        verdict += (" (the champion is the sweep file's enqueued starting point, not a point the sweep found: "
                    "no win for the sweep, whichever arm is ahead)")
    print(f"\n{verdict} (sweep {'skipped' if sweep_min is None else f'{sweep_min:.1f} min'}, "
          f"{(time.perf_counter() - t0) / 60:.1f} min in all)")
    if gap > 0 and not enqueued:
        path = candidate_recipe(study, results, out)
        print(f"candidate recipe: {path} (cp {path} sweeps/cpu_recipe.yaml)")
    record = {"study": study, "sweep": str(args.sweep), "sweep_minutes": sweep_min, "minutes": args.minutes,
              "arms": results, "champion_enqueued": enqueued, "verdict": verdict, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes")}
    (out / "proof.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as e:  # vitsweep said what was wrong, above
        sys.exit(e.returncode)
