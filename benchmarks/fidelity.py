"""Fidelity: do short trials rank configs the way the final budget does?

A fixed panel of configs from ``sweeps/cifar10_cpu.yaml``'s space (below, with their seeds) is
trained at the *final* budget (``FINAL_EPOCHS`` epochs on the full 45,000 training images, cosine
schedule, the way ``vitsweep promote`` trains) and at each candidate fidelity. Budgets are counted
in epochs and images, never seconds, so a result does not depend on the machine's speed or on
other load; only the cost column (CPU-minutes, the process's CPU time) does.

Every finished run is cached in ``benchmarks/fidelity_runs.json`` (committed): its config, budget,
per-epoch curve, CPU model, precision and date. The panel is built up over several sessions:
``run`` trains only what the cache lacks, and a new fidelity is measured without rerunning the
finals. Several ``run`` processes may work on one cache at once (each claims a run under a file
lock), e.g. one per core:

    python benchmarks/fidelity.py plan                              # what is cached, what is left
    taskset -c 0 python benchmarks/fidelity.py run --threads 1 &    # one worker per core
    taskset -c 1 python benchmarks/fidelity.py run --threads 1 &
    python benchmarks/fidelity.py report                            # the table, from the cache

Readings (the rows of the report): a fidelity's value for a config is the best validation
accuracy the run had reached by a given epoch (a trial's value), read at each Hyperband rung.
For each reading the report prints Spearman's and Kendall's rank correlation with the final
ranking, top-1 regret (the final accuracy of the reading's pick minus the panel's best), top-3
recall, and the mean cost in CPU-minutes of one config's reading. Validation accuracy only: the
test set is never touched here.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("VITSWEEP_FIDELITY_CACHE", ROOT / "benchmarks" / "fidelity_runs.json"))
WORK = ROOT / "storage" / "fidelity"  # claims and the lock: local, not committed

FINAL_EPOCHS = 8

# sweeps/cifar10_cpu.yaml's trainer section as of 2026-12-01 (frozen here so that the panel does not
# move when the sweep file does), on the full training split, fp32 on every CPU (bf16 exists on
# some of this project's CPUs and not on others: one precision keeps runs from different sessions
# comparable).
BASE: dict[str, Any] = {
    "data": {"source": "imagefolder", "root": "../shared/data/cifar10", "val_size": 5000},
    "model": {"preset": "custom", "dim": 192, "depth": 6, "heads": 4, "mlp_ratio": 2.0, "patch_size": 4,
              "pool": "mean", "drop_path": 0.0},
    "optimizer": {"name": "adamw", "lr": 0.002},
    "schedule": {"warmup_epochs": 0.5},
    "augment": {"policy": "basic"},
    "train": {"epochs": FINAL_EPOCHS, "batch_size": 128, "precision": "fp32", "compile": False,
              "test": False, "checkpoint": False},
}

# The panel: points of cifar10_cpu.yaml's space spread over width, depth, patch size, optimizer and
# lr (dotted keys on top of BASE), each with the training seed it runs with. p0 is the hand-tuned
# CPU recipe's model and optimizer; p1 the sweep's 3-epoch favourite kind (small, no augmentation);
# p0/p8 and p3/p9 differ only in lr (short horizons are known to favour small ones).
PANEL: dict[str, dict[str, Any]] = {
    "p0": {"seed": 0, "set": {"optimizer.name": "adan", "optimizer.lr": 2.1e-3, "optimizer.betas": [0.045, 0.12, 0.02],
                              "optimizer.weight_decay": 0.08, "schedule.res_start": 16, "model.patch_dropout": 0.25}},
    "p1": {"seed": 0, "set": {"model.dim": 128, "model.depth": 4, "optimizer.name": "adan", "optimizer.lr": 3e-3,
                              "optimizer.betas": [0.04, 0.1, 0.02], "optimizer.weight_decay": 0.05,
                              "augment.policy": "none"}},
    "p2": {"seed": 0, "set": {"model.dim": 256, "model.depth": 8, "optimizer.lr": 1e-3, "optimizer.betas": [0.9, 0.99],
                              "optimizer.weight_decay": 0.05, "schedule.res_start": 16, "model.patch_dropout": 0.5}},
    "p3": {"seed": 0, "set": {"model.patch_size": 8, "optimizer.lr": 5e-3, "optimizer.betas": [0.9, 0.98],
                              "optimizer.weight_decay": 0.1, "augment.policy": "none"}},
    "p4": {"seed": 0, "set": {"model.dim": 256, "model.depth": 6, "optimizer.name": "adam", "optimizer.lr": 6e-4,
                              "optimizer.betas": [0.85, 0.995], "optimizer.weight_decay": 0.0,
                              "augment.policy": "randaugment", "augment.label_smoothing": 0.1,
                              "schedule.res_start": 16, "model.patch_dropout": 0.5}},
    "p5": {"seed": 0, "set": {"model.dim": 128, "model.depth": 8, "optimizer.lr": 2e-3, "optimizer.betas": [0.9, 0.999],
                              "optimizer.weight_decay": 0.05, "schedule.res_start": 16}},
    "p6": {"seed": 0, "set": {"model.depth": 4, "model.patch_size": 8, "optimizer.name": "adan", "optimizer.lr": 8e-3,
                              "optimizer.betas": [0.02, 0.08, 0.01], "optimizer.weight_decay": 0.02,
                              "augment.policy": "randaugment"}},
    "p7": {"seed": 0, "set": {"model.dim": 256, "model.depth": 4, "optimizer.lr": 3e-3, "optimizer.betas": [0.88, 0.99],
                              "optimizer.weight_decay": 0.08, "train.batch_size": 256, "model.patch_dropout": 0.5}},
    "p8": {"seed": 0, "set": {"optimizer.name": "adan", "optimizer.lr": 6e-4, "optimizer.betas": [0.045, 0.12, 0.02],
                              "optimizer.weight_decay": 0.08, "schedule.res_start": 16, "model.patch_dropout": 0.25}},
    "p9": {"seed": 0, "set": {"model.patch_size": 8, "optimizer.lr": 1e-3, "optimizer.betas": [0.9, 0.98],
                              "optimizer.weight_decay": 0.1, "augment.policy": "none"}},
}

# Candidate fidelities: dotted keys on top of a panel config, and the epochs at which the report
# reads them (Hyperband's rungs with min_resource 1 and reduction factor 3: 1, 3, 9).
FIDELITIES: dict[str, dict[str, Any]] = {
    "final": {"what": f"the final budget: {FINAL_EPOCHS} epochs on 45,000 images, cosine",
              "set": {}, "read": [FINAL_EPOCHS]},
    # (a) today's trials: 3 epochs on a 10,000-image subset, the cosine sized to 3 epochs
    "subset3": {"what": "(a) 3 epochs on 10,000 images, cosine sized to 3 epochs",
                "set": {"data.train_limit": 10000, "train.epochs": 3}, "read": [1, 3]},
    # (b) a complete short run on the full data: the final run's shape, only shorter
    "full2": {"what": "(b) 2 epochs on 45,000 images, cosine sized to 2 epochs",
              "set": {"train.epochs": 2}, "read": [1, 2]},
    # (b) at half the cost: one complete epoch (no rung to prune at, so twice the trials of full2)
    "full1": {"what": "(b) 1 epoch on 45,000 images, cosine sized to 1 epoch",
              "set": {"train.epochs": 1}, "read": [1]},
    # (c) warmup-stable-decay: a constant-lr trunk sized to the final horizon, and at each rung a
    # cooldown branch (20% of the steps so far, (1 - sqrt) shape) whose value the trial reports
    "wsd3": {"what": "(c) 3 epochs of a wsd trunk (horizon 8) on 45,000 images, cooldown branches at epochs 1, 3",
             "set": {"train.epochs": 3, "schedule.name": "wsd", "schedule.horizon": FINAL_EPOCHS,
                     "schedule.branches": [1, 3]}, "read": [1, 3]},
    # the wsd trunk run to the final budget, its own cooldown in the last 20%: against cosine there
    "wsd_final": {"what": f"wsd over the final budget ({FINAL_EPOCHS} epochs, cooldown the last 20%), branches at 1, 3",
                  "set": {"schedule.name": "wsd", "schedule.branches": [1, 3]}, "read": [1, 3, FINAL_EPOCHS]},
}
# Where wsd and cosine are compared at the final budget, with two seeds each.
PARITY = (("p3", (0, 1)), ("p0", (0, 1)))

# The order runs are taken in: config by config (each finished config adds a point to the table),
# cheapest first, so that a session that ends mid-panel leaves whole configs behind.
ORDER = ("p6", "p3", "p9", "p1", "p0", "p8", "p5", "p7", "p2", "p4")


def plan() -> list[tuple[str, str, int]]:
    panel = [(c, f, PANEL[c]["seed"]) for c in ORDER for f in ("subset3", "wsd3", "full2", "final", "full1")]
    parity = [(c, f, seed) for c, seeds in PARITY for seed in seeds for f in ("wsd_final", "final")]
    return panel + [item for item in parity if item not in panel]


def key_of(config: str, fidelity: str, seed: int) -> str:
    return f"{config}/{fidelity}/seed{seed}"


def trainer_dict(config: str, fidelity: str, seed: int) -> dict[str, Any]:
    """The full trainer config of one panel run (validated by vitsweep's own config builder)."""
    from vitsweep.train.config import build_config

    dotted = {**PANEL[config]["set"], **FIDELITIES[fidelity]["set"], "train.seed": seed}
    return build_config(BASE, dotted, source=f"panel {config}").to_dict()


# ---------------------------------------------------------------------------------------------
# The cache


@contextlib.contextmanager
def locked() -> Iterator[None]:
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_cache() -> dict[str, dict[str, Any]]:
    if not CACHE.is_file():
        return {}
    return {r["key"]: r for r in json.loads(CACHE.read_text())["runs"]}


def save_cache(records: dict[str, dict[str, Any]]) -> None:
    body = {"about": "benchmarks/fidelity.py's finished runs; add to it with `python benchmarks/fidelity.py run`",
            "runs": [records[k] for k in sorted(records)]}
    tmp = CACHE.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    os.replace(tmp, CACHE)


def _claims() -> dict[str, int]:
    path = WORK / "claims.json"
    claims = json.loads(path.read_text()) if path.is_file() else {}
    return {k: pid for k, pid in claims.items() if _alive(pid)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _set_claims(claims: dict[str, int]) -> None:
    (WORK / "claims.json").write_text(json.dumps(claims))


def claim_next(wanted: list[tuple[str, str, int]]) -> tuple[str, str, int] | None:
    with locked():
        done, claims = load_cache(), _claims()
        for item in wanted:
            key = key_of(*item)
            if key not in done and key not in claims:
                _set_claims({**claims, key: os.getpid()})
                return item
        return None


def release(key: str) -> None:
    with locked():
        claims = _claims()
        claims.pop(key, None)
        _set_claims(claims)


# ---------------------------------------------------------------------------------------------
# Running


def cpu_model() -> str:
    """The CPU as lscpu would name it, with family/model and the bf16 features that matter here."""
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            info.setdefault(k.strip(), v.strip())
    flags = set(info.get("flags", "").split())
    feats = ([f for f in ("avx512_bf16", "amx_bf16") if f in flags]
             or [next((f for f in ("avx512f", "avx2") if f in flags), "no avx2")])
    name = info.get("model name", platform.processor() or platform.machine())
    if info.get("cpu family") == "25":  # AMD: family 25 is Zen 3 (models 0-15) and Zen 4 (16 and up)
        name += " Zen 3" if int(info.get("model", "0")) < 16 else " Zen 4"
    return f"{name} (family {info.get('cpu family', '?')} model {info.get('model', '?')}; {', '.join(feats)})"


def run_one(config: str, fidelity: str, seed: int, threads: int | None) -> dict[str, Any]:
    import torch

    from vitsweep.train.config import build_config
    from vitsweep.train.loop import train

    if threads:
        torch.set_num_threads(threads)
    raw = trainer_dict(config, fidelity, seed)
    cfg = build_config(raw, source=key_of(config, fidelity, seed))
    curve: list[dict[str, float]] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()

    def on_epoch(epoch: int, m: dict[str, float]) -> None:
        curve.append({"epoch": epoch, "val_acc": m["val_acc"], "val_loss": m["val_loss"],
                      "train_loss": m["train_loss"], "lr": m["lr"], "image_size": m["image_size"],
                      "cpu_s": round(time.process_time() - cpu0, 1), "wall_s": round(time.perf_counter() - wall0, 1),
                      **{k: v for k, v in m.items() if k.startswith("cooldown_")}})
        print(f"  {key_of(config, fidelity, seed)} epoch {epoch}/{cfg.train.epochs}: val_acc {m['val_acc']:.2%} "
              f"({curve[-1]['cpu_s'] / 60:.1f} CPU-min)", flush=True)

    result = train(cfg, on_epoch)
    n_train = 45000 if cfg.data.train_limit is None else min(45000, cfg.data.train_limit)
    return {"key": key_of(config, fidelity, seed), "config": config, "fidelity": fidelity, "seed": seed,
            "set": PANEL[config]["set"], "trainer": raw,
            "budget": {"epochs": cfg.train.epochs, "train_images": n_train, "images_seen": n_train * result.epochs_run},
            "curve": curve, "stop_reason": result.stop_reason, "precision": result.precision,
            "threads": torch.get_num_threads(), "cpu": cpu_model(), "torch": torch.__version__,
            "cpu_minutes": round(curve[-1]["cpu_s"] / 60, 2) if curve else 0.0,
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def cmd_run(args: argparse.Namespace) -> None:
    wanted = [i for i in plan() if (not args.configs or i[0] in args.configs)
              and (not args.fidelities or i[1] in args.fidelities)]
    deadline = time.time() + args.hours * 3600 if args.hours else None
    while (item := claim_next(wanted)) is not None:
        key = key_of(*item)
        if (deadline is not None and time.time() > deadline) or (WORK / "STOP").exists():
            release(key)
            print(f"stopping: past --hours {args.hours}" if deadline and time.time() > deadline
                  else f"stopping: {WORK / 'STOP'} exists", flush=True)
            break
        print(f"{key}: starting ({FIDELITIES[item[1]]['what']})", flush=True)
        try:
            record = run_one(*item, args.threads)
        finally:
            release(key)
        with locked():
            records = load_cache()
            records[key] = record
            save_cache(records)
        print(f"{key}: done, best val_acc {max(c['val_acc'] for c in record['curve']):.2%} in "
              f"{record['cpu_minutes']:.1f} CPU-min", flush=True)


def cmd_plan(args: argparse.Namespace) -> None:
    done, claims = load_cache(), (_claims() if (WORK / "claims.json").is_file() else {})
    for item in plan():
        key = key_of(*item)
        status = (f"done {done[key]['cpu_minutes']:.0f} CPU-min, {done[key]['cpu']}" if key in done
                  else f"running (pid {claims[key]})" if key in claims else "to do")
        print(f"{key:<24} {status}")


# ---------------------------------------------------------------------------------------------
# Reporting


def reading(record: dict[str, Any], epoch: int) -> tuple[float, float] | None:
    """(the value a trial would have reported by ``epoch``: its best epoch, an epoch with a cooldown
    branch counting the branch's accuracy; CPU-minutes to get there), or None if the run is shorter."""
    upto = [c for c in record["curve"] if c["epoch"] <= epoch]
    if not upto or upto[-1]["epoch"] < epoch:
        return None
    return max(c.get("cooldown_val_acc", c["val_acc"]) for c in upto), upto[-1]["cpu_s"] / 60


def trunk_final(record: dict[str, Any]) -> float | None:
    """A final-budget run's own best validation accuracy (its trunk: branches not counted)."""
    curve = record["curve"]
    return max(c["val_acc"] for c in curve) if curve and curve[-1]["epoch"] >= FINAL_EPOCHS else None


def panel_finals(records: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each config's final-budget value, from its panel seed (a parity seed's final is not the panel's)."""
    return {r["config"]: got[0] for r in records.values()
            if r["fidelity"] == "final" and r["seed"] == PANEL[r["config"]]["seed"]
            and (got := reading(r, FINAL_EPOCHS))}


def table(records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    from vitsweep.stats import kendall, spearman

    finals = panel_finals(records)
    rows = []
    for name, fid in FIDELITIES.items():
        if name == "final":
            continue  # the ranking every reading is compared with
        for epoch in fid["read"]:
            got = {r["config"]: reading(r, epoch) for r in records.values()
                   if r["fidelity"] == name and r["seed"] == PANEL[r["config"]]["seed"] and r["config"] in finals}
            got = {c: v for c, v in got.items() if v is not None}
            configs = sorted(got)
            if len(configs) < 2:
                continue
            low = [got[c][0] for c in configs]
            high = [finals[c] for c in configs]
            pick = max(configs, key=lambda c: got[c][0])
            top3 = set(sorted(configs, key=lambda c: -finals[c])[:3])
            picked3 = set(sorted(configs, key=lambda c: -got[c][0])[:3])
            rows.append({"reading": f"{name}@{epoch}", "what": fid["what"], "n": len(configs),
                         "spearman": spearman(low, high), "kendall": kendall(low, high),
                         "regret": finals[pick] - max(high), "top3": len(top3 & picked3) / min(3, len(configs)),
                         "cpu_min": sum(got[c][1] for c in configs) / len(configs), "pick": pick})
    return rows


def cmd_report(args: argparse.Namespace) -> None:
    records = load_cache()
    cpus = sorted({r["cpu"] for r in records.values()})
    print(f"fidelity panel: {len(records)} cached runs; CPUs: {'; '.join(cpus) or '-'}")
    finals = panel_finals(records)
    print(f"final budget: {FINAL_EPOCHS} epochs x 45,000 images; finals cached for {len(finals)} of "
          f"{len(PANEL)} configs: " + ", ".join(f"{c} {v:.2%}" for c, v in sorted(finals.items())))
    rows = table(records)
    if not rows:
        print("no fidelity has a final to compare with yet: run `python benchmarks/fidelity.py run`")
        return
    print(f"\n{'reading':<12}{'configs':>8}{'Spearman':>10}{'Kendall':>9}{'regret':>9}{'top-3':>7}{'CPU-min':>9}  pick")
    for r in rows:
        print(f"{r['reading']:<12}{r['n']:>8}{r['spearman']:>10.2f}{r['kendall']:>9.2f}{r['regret'] * 100:>8.2f}p"
              f"{r['top3']:>7.2f}{r['cpu_min']:>9.1f}  {r['pick']}")
    print("\nregret: final val accuracy of the reading's pick minus the panel's best, in points; "
          "CPU-min: one config's reading, averaged over the configs")
    parity(records)


def parity(records: dict[str, dict[str, Any]]) -> None:
    """wsd (constant lr, cooldown in the last 20%) against cosine at the final budget, per seed."""
    lines = []
    for config, seeds in PARITY:
        for seed in seeds:
            cos, wsd = records.get(key_of(config, "final", seed)), records.get(key_of(config, "wsd_final", seed))
            if cos and wsd and trunk_final(cos) is not None and trunk_final(wsd) is not None:
                a, b = trunk_final(cos), trunk_final(wsd)
                lines.append(f"  {config} seed {seed}: cosine {a:.2%}, wsd {b:.2%} ({(b - a) * 100:+.2f} points)")
    print("\nwsd against cosine at the final budget (best val accuracy):")
    print("\n".join(lines) if lines else "  not measured yet")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="train the panel runs the cache lacks")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 per worker, one worker per core)")
    run.add_argument("--configs", nargs="*", help="only these panel configs (default: all)")
    run.add_argument("--fidelities", nargs="*", choices=sorted(FIDELITIES), help="only these fidelities")
    run.add_argument("--hours", type=float, default=None, help="start no run after this many hours")
    sub.add_parser("plan", help="what is cached and what is left")
    sub.add_parser("report", help="the fidelity table, from the cache")
    args = ap.parse_args(argv)
    {"run": cmd_run, "plan": cmd_plan, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
