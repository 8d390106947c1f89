"""The GPU check's measurements (run it through ``bash benchmarks/gpu_check.sh``, which makes sure
vitsweep is importable first). Four sections, then a summary to copy into README:

1. trainer throughput: images/s of the mi300x preset and of the dim-512 ViT (the peers' model of
   benchmarks/train_throughput.py) in bf16 and fp32, eager and compiled, measured with
   train_throughput.py's own ``vitsweep_run`` and configuration (the best epoch of a few; the first
   epoch's extra time is compile and warm-up), on synthetic images (the speed does not depend on
   the pixels);
2. host waits: one short training run of the GPU recipe's model under torch.profiler: the share of
   the GPU's time spent idle waiting for the host to launch work, against kernel time, and the host
   syncs per step (the trainer is meant to have none in its hot loop);
3. workers: ``vitsweep run`` with ``--workers 1`` and ``--workers 2`` on one device, trials/hour of
   a short synthetic sweep (processes started like benchmarks/workers_cpu.py's);
4. time to accuracy: sweeps/gpu_recipe.yaml on the full CIFAR-10, with its time budget shortened to
   ``--tta-minutes`` (its own is 9 minutes; `vitsweep train sweeps/gpu_recipe.yaml` runs that), printed
   with benchmarks/time_to_accuracy.py's ``run`` and ``time_to``.

A time budget (``--budget-minutes``) keeps the whole under 8 minutes on one GPU: what no longer fits
is printed as skipped, with the command that measures it alone. ``--quick`` shrinks everything to
tiny models on synthetic data, so that the script runs end to end on a CPU in a minute or two
(tests/test_gpu_check.py); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the other benchmarks, reused: train_throughput, time_to_accuracy, workers_cpu

import time_to_accuracy  # noqa: E402
import train_throughput  # noqa: E402
import workers_cpu  # noqa: E402

from vitsweep.errors import VitsweepError  # noqa: E402
from vitsweep.train.config import MODEL_PRESETS, build_config, load_config  # noqa: E402
from vitsweep.train.data import Dataset, load_data  # noqa: E402
from vitsweep.train.device import cpu_native, device_name, effective_precision, resolve_device  # noqa: E402
from vitsweep.train.loop import train  # noqa: E402

RECIPE = HERE.parent / "sweeps" / "gpu_recipe.yaml"
TTA_TARGETS = (0.80, 0.85, 0.90)
QUICK_MODEL = {"dim": 32, "depth": 1, "heads": 2, "mlp_ratio": 1.0, "patch_size": 8}  # --quick: every model
# The CUDA runtime calls that block the host until the GPU has caught up (an .item(), a boolean
# mask's nonzero, a synchronous copy to the host all end in one of them).
SYNC_CALLS = {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy"}


class Budget:
    """The whole run's wall-clock budget."""

    def __init__(self, minutes: float):
        self.t0, self.seconds = time.monotonic(), minutes * 60

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed()


def say(line: str = "") -> None:
    print(line, flush=True)


def section(title: str) -> None:
    say(f"\n== {title} ==")


def find_data(given: str | None) -> Path | None:
    """CIFAR-10 class folders: --data, else ../shared/data/cifar10, else shared/data/cifar10 (where
    a machine lent with a copy of the checkout's shared/ has them)."""
    candidates = [Path(given)] if given else [HERE.parent.parent / "shared/data/cifar10", HERE.parent / "shared/data/cifar10"]
    for c in candidates:
        if (c / "train").is_dir() and (c / "test").is_dir():
            return c.resolve()
    if given:
        raise VitsweepError(f"--data {given}: no train/ and test/ class folders there")
    return None


def shrink(dotted: dict[str, Any], quick: bool) -> dict[str, Any]:
    return {**dotted, **({f"model.{k}": v for k, v in QUICK_MODEL.items()} | {"model.preset": "custom"} if quick else {})}


# --- 1. throughput -------------------------------------------------------------------------------

def throughput_config(args, device):
    """train_throughput.py's configuration (the peers' dim-512 ViT, batch 512, RandAugment(2, 14)), on
    synthetic images: the speed does not depend on the pixels, and decoding real ones costs budget."""
    return build_config({
        "data": {"source": "synthetic", "synthetic_train": args.images + 200, "synthetic_test": 100, "val_size": 200},
        "model": train_throughput.PEER_MODEL,
        "optimizer": {"name": "adam", "lr": 1e-4},
        "augment": {"policy": "randaugment", "randaugment_ops": 2, "randaugment_magnitude": 14},
        "train": {"epochs": args.epochs, "batch_size": 64 if args.quick else 512, "device": str(device),
                  "precision": "fp32", "compile": False, "test": False, "checkpoint": False},
    })


MODELS = {
    "mi300x preset": {"model.preset": "mi300x", **{f"model.{k}": v for k, v in MODEL_PRESETS["mi300x"].items()},
                      "augment.policy": "basic"},  # as train_throughput.py's mi300x rows: batch 128, basic
    "dim-512 ViT": {},  # train_throughput.py's PEER_MODEL, batch 512, RandAugment(2, 14)
}


def measure_throughput(args, device, cfg, data, budget: Budget, results: dict, compiled: bool, reserve: float) -> None:
    for precision in ("bf16", "fp32"):
        for model, dotted in MODELS.items():
            key = (model, precision, "compiled" if compiled else "eager")
            ran = "fp32" if device.type == "cpu" and not cpu_native(precision) else precision  # as the trainer decides
            label = f"  {model:<14} {precision} {key[2]:<8}"
            if compiled and args.quick:
                results[key] = None
                say(f"{label} skipped: --quick (compiling takes about a minute on a CPU)")
                continue
            if compiled and budget.left() < reserve + 75:
                results[key] = None
                say(f"{label} skipped: the time budget (alone: bash benchmarks/gpu_check.sh --only throughput)")
                continue
            dotted = shrink({**dotted, "train.precision": precision, "train.compile": compiled}, args.quick)
            if compiled:
                torch._dynamo.reset()  # each compiled run compiles afresh (and never meets dynamo's cache limit)
            if model == "mi300x preset":
                dotted["train.batch_size"] = 32 if args.quick else 128
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t0 = time.perf_counter()
                rate, first_extra = train_throughput.vitsweep_run(cfg, data, **dotted)
                took = time.perf_counter() - t0
            failed = [w for w in caught if "torch.compile failed" in str(w.message)]
            notes = []
            if compiled:
                notes.append(f"first epoch {first_extra:+.1f} s: compile" if not failed else "COMPILE FAILED: ran eager")
            if ran != precision:
                notes.append(f"ran as {ran}: no native {precision} on this CPU")
            results[key] = rate
            say(f"{label} {rate:10.1f} images/s  ({took:.0f} s{'; ' + '; '.join(notes) if notes else ''})")


# --- 2. host waits -------------------------------------------------------------------------------

def subset(data: Dataset, n_train: int, n_eval: int) -> Dataset:
    return dc_replace(data, train_x=data.train_x[:n_train], train_y=data.train_y[:n_train],
                      val_x=data.val_x[:n_eval], val_y=data.val_y[:n_eval],
                      test_x=data.test_x[:n_eval], test_y=data.test_y[:n_eval])


def host_waits(args, device, data: Dataset, results: dict) -> None:
    """Profile a short run of the recipe's model (eager, fixed size) and read the trace."""
    warm, active = (2, 6) if args.quick else (5, 20)
    cfg = load_config(RECIPE)
    batch = 32 if args.quick else cfg.train.batch_size
    dotted = shrink({"train.device": str(device), "train.epochs": 1, "train.batch_size": batch, "train.compile": False,
                     "train.test": False, "train.checkpoint": False, "train.time_limit": None,
                     "schedule.by_time": False, "schedule.warmup_epochs": 0.0}, args.quick)
    cfg = cfg.replace(**dotted)
    steps = warm + active
    if len(data.train_y) < steps * batch:
        raise VitsweepError(f"host waits: {steps * batch} training images needed, {len(data.train_y)} loaded (--images)")
    small = subset(data, steps * batch, 200)
    train(cfg, data=subset(data, 2 * batch, 100))  # warm-up: CUDA context, cuBLAS handles, allocator
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        train(cfg, data=small)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = [e for e in json.loads(path.read_text())["traceEvents"] if e.get("ph") == "X"]
    report = read_trace(events, warm, device.type == "cuda")
    results["host"] = report
    say(f"  model: {cfg.model.dim}x{cfg.model.depth} patch {cfg.model.patch_size}, batch {batch}, "
        f"{effective_precision(cfg.train.precision, device)}, {cfg.augment.policy}, eager; {report['steps']} steps "
        f"profiled after {warm} warm-up steps")
    say(f"  step time (host, under the profiler): {report['step_ms']:.2f} ms")
    if device.type != "cuda":
        say(f"  host syncs per step: n/a on {device.type} ({report['scalar_reads_per_step']:.1f} scalar reads "
            f"(aten::_local_scalar_dense) per step, of CPU tensors too: only those of GPU tensors would be syncs)")
        say(f"  GPU idle / kernel time: n/a on {device.type} (no GPU queue to starve; torch.profiler traces CUDA kernels only)")
        return
    say(f"  host syncs per step: {report['syncs_per_step']:.2f}  ({report['sync_detail'] or 'none'})")
    say(f"  GPU kernel time: {report['busy_pct']:.1f}% of the steps' GPU span ({report['busy_ms']:.2f} ms per step)")
    say(f"  GPU idle waiting on the host (nothing launched yet): {report['host_wait_pct']:.1f}%")
    say(f"  GPU idle, launched but not started (launch latency): {report['launch_pct']:.1f}%")


def read_trace(events: list[dict], warm: int, cuda: bool) -> dict[str, Any]:
    """Steps are delimited by the optimizer's own profiler scope (``Optimizer.step#AdamW.step``);
    the window runs from the end of the last warm-up step to the end of the last step."""
    ends = sorted(e["ts"] + e["dur"] for e in events
                  if e["name"].startswith("Optimizer.step#") and e.get("cat") in ("cpu_op", "user_annotation"))
    if len(ends) <= warm:
        raise VitsweepError(f"host waits: the trace shows {len(ends)} optimizer steps, expected more than {warm}")
    w0, w1, steps = ends[warm - 1], ends[-1], len(ends) - warm
    inside = [e for e in events if w0 <= e["ts"] <= w1]
    calls: dict[str, int] = {}  # the CUDA runtime's blocking calls: the host waiting for the GPU
    for e in inside:
        if e.get("cat") == "cuda_runtime" and e["name"] in SYNC_CALLS:
            calls[e["name"]] = calls.get(e["name"], 0) + 1
    scalar_reads = sum(1 for e in inside if e.get("cat") == "cpu_op" and e["name"] == "aten::_local_scalar_dense")
    report: dict[str, Any] = {"steps": steps, "step_ms": (w1 - w0) / steps / 1e3,
                              "syncs_per_step": sum(calls.values()) / steps, "scalar_reads_per_step": scalar_reads / steps,
                              "sync_detail": ", ".join(f"{k} x{v}" for k, v in sorted(calls.items()))}
    if not cuda:
        return report
    launches = {e["args"]["correlation"]: e["ts"] for e in events  # runtime (eager) or driver (Triton) launches
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    gpu = sorted((e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
                  and w0 <= launches.get(e.get("args", {}).get("correlation"), -1) <= w1), key=lambda e: e["ts"])
    if not gpu:
        raise VitsweepError("host waits: the trace has no GPU kernels (CUPTI unavailable?)")
    busy = host_wait = launch = 0.0
    end = gpu[0]["ts"]
    for e in gpu:
        start, stop = e["ts"], e["ts"] + e["dur"]
        if start > end:  # the GPU was idle from `end` to `start`
            issued = launches[e["args"]["correlation"]]
            waited = min(max(0.0, issued - end), start - end)
            host_wait += waited
            launch += start - end - waited
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    span = end - gpu[0]["ts"]
    report.update(busy_pct=100 * busy / span, host_wait_pct=100 * host_wait / span, launch_pct=100 * launch / span,
                  busy_ms=busy / steps / 1e3)
    return report


# --- 3. workers ----------------------------------------------------------------------------------

WORKER_SWEEP = """\
study: {{name: gpu_check_workers, direction: maximize, metric: val_acc, n_trials: {trials}, seed: 0}}
sampler: {{name: random}}
pruner: {{name: none}}
trainer:
  data: {{source: synthetic, synthetic_train: {images}, synthetic_test: 100, val_size: {val}}}
  model: {model}
  optimizer: {{name: adamw, lr: 0.001}}
  augment: {{policy: basic}}
  train: {{epochs: {epochs}, batch_size: {batch}, device: {device}, precision: {precision}, compile: false, test: false, checkpoint: false}}
space:
  lr: {{path: optimizer.lr, low: 3.0e-4, high: 3.0e-3, log: true}}
  weight_decay: {{path: optimizer.weight_decay, low: 0.0, high: 0.1}}
"""


def workers(args, device, results: dict) -> None:
    import optuna

    trials = 4 if args.quick else 8
    model = "{" + ", ".join(f"{k}: {v}" for k, v in ({"preset": "custom", **QUICK_MODEL} if args.quick else {"preset": "mi300x"}).items()) + "}"
    text = WORKER_SWEEP.format(trials=trials, images=300 if args.quick else 10_000, val=50 if args.quick else 1000,
                               model=model, epochs=1 if args.quick else 2, batch=32 if args.quick else 128,
                               device=f"cuda:{device.index or 0}" if device.type == "cuda" else device.type,
                               precision="fp32" if device.type == "cpu" else "bf16")
    say(f"  {trials} trials of {'a tiny ViT, 1 epoch on 250 images' if args.quick else 'the mi300x preset, 2 epochs on 9,000 images (bf16, batch 128, eager)'}"
        f", synthetic data, no pruning, no MLflow; {device_name(device)}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sweep = tmp / "sweep.yaml"
        sweep.write_text(text)
        for n in (1, 2):
            wall = workers_cpu.run(n, None, sweep, tmp, "gpu_check")
            study = optuna.load_study(study_name="gpu_check_workers", storage=f"sqlite:///{tmp / f'gpu_check-w{n}.db'}")
            done = [t for t in study.trials if t.datetime_complete is not None]
            span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
            results["workers", n] = (len(done) / span * 3600, len(done) / wall * 3600)
            say(f"  --workers {n}: {len(done)} trials, {span:6.1f} s from the first trial's start to the last one's end "
                f"({wall:.1f} s with start-up): {results['workers', n][0]:8.1f} trials/hour ({results['workers', n][1]:.1f} with start-up)")
    say(f"  --workers 2 / --workers 1: {results['workers', 2][0] / results['workers', 1][0]:.2f}x "
        f"({results['workers', 2][1] / results['workers', 1][1]:.2f}x with start-up)")


# --- 4. time to accuracy -------------------------------------------------------------------------

def tta_section(args, device, data_root: Path | None, budget: Budget, results: dict) -> None:
    cfg = load_config(RECIPE)
    if args.quick:
        cfg = cfg.replace(**shrink({"data.source": "synthetic", "data.synthetic_train": 600, "data.val_size": 100,
                                    "train.batch_size": 50, "train.compile": False, "train.epochs": 3,
                                    "schedule.by_time": False, "schedule.warmup_epochs": 1.0}, True))
        seconds = 60.0
    else:
        if data_root is None:
            results["tta"] = None
            say("  skipped: no CIFAR-10 class folders (../shared/data/cifar10 or shared/data/cifar10; or --data DIR)")
            return
        cfg = cfg.replace(**{"data.root": str(data_root)})
        if budget.left() < 150:
            results["tta"] = None
            say(f"  skipped: the time budget (alone: bash benchmarks/gpu_check.sh --only tta --tta-minutes {args.tta_minutes:g})")
            return
    cfg = cfg.replace(**{"train.device": str(device), "train.checkpoint": False})
    t0 = time.perf_counter()
    data = load_data(cfg.data, device)
    say(f"  data: {len(data.train_y)} train / {len(data.val_y)} validation / {len(data.test_y)} test images "
        f"({cfg.data.source}), loaded in {time.perf_counter() - t0:.1f} s (not counted)")
    if not args.quick:  # what is left of the budget, less the test pass and the summary
        seconds = min(args.tta_minutes * 60, budget.left() - 45)
        if seconds < 60:
            results["tta"] = None
            say(f"  skipped: the time budget (alone: bash benchmarks/gpu_check.sh --only tta --tta-minutes {args.tta_minutes:g})")
            return
    cfg = cfg.replace(**{"train.time_limit": seconds})
    if not args.quick:
        torch._dynamo.reset()
    say(f"  budget {seconds / 60:.1f} min (the recipe's own: {load_config(RECIPE).train.time_limit / 60:.0f} min of training, "
        f"goal 90% test within 10 minutes)")
    result = time_to_accuracy.run("gpu_recipe", cfg, data)
    results["tta"] = (result, seconds)
    reached = "   ".join(f"to {t:.0%}: {time_to_accuracy.time_to(result, t).strip()}" for t in TTA_TARGETS)
    test = f"{result.test.acc:.2%}" if result.test else "-"
    say(f"  {reached}   best val {result.best_val_acc:.2%}   test {test}   {result.epochs_run} epochs, "
        f"{result.wall_time / 60:.1f} min wall ({result.precision}, {'compiled' if result.compiled else 'eager'})")


# --- main ----------------------------------------------------------------------------------------

SECTIONS = ("throughput", "host", "workers", "tta")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bash benchmarks/gpu_check.sh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (a GPU if there is one), cuda, cuda:N, mps or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny models on synthetic data: a CPU run in a minute or two")
    ap.add_argument("--data", help="CIFAR-10 class folders [../shared/data/cifar10, else shared/data/cifar10]")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {','.join(SECTIONS)}")
    ap.add_argument("--tta-minutes", type=float, default=2.5, help="the time-to-accuracy run's budget (the recipe's own: 9)")
    ap.add_argument("--budget-minutes", type=float,
                    help="the whole run's; what does not fit is skipped [7.5; --only tta: the run's budget + 1.5]")
    ap.add_argument("--images", type=int, help="training images per throughput epoch [20480; --quick 384]")
    ap.add_argument("--epochs", type=int, help="epochs per throughput measurement, the best counts [3; --quick 2]")
    args = ap.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in args.only if s not in SECTIONS]
    if bad or not args.only:
        ap.error(f"--only {','.join(bad) or '(empty)'}: the sections are {', '.join(SECTIONS)}")
    for name in ("tta_minutes", "budget_minutes", "images", "epochs"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            ap.error(f"--{name.replace('_', '-')} {value:g}: must be positive")
    if args.budget_minutes is None:
        args.budget_minutes = max(7.5, args.tta_minutes + 1.5) if args.only == ["tta"] else 7.5
    args.images = args.images or (384 if args.quick else 20480)
    args.epochs = args.epochs or (2 if args.quick else 3)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_minutes)
    try:
        device = resolve_device(args.device)
        if device.type == "cpu" and not args.quick:
            raise VitsweepError("no GPU here (or --device cpu): the full sizes take hours on a CPU; add --quick for the "
                                "end-to-end check on tiny models")
        data_root = find_data(args.data)
        header(args, device, data_root)
        results: dict[Any, Any] = {}
        cfg = data = None
        if {"throughput", "host"} & set(args.only):
            cfg = throughput_config(args, device)
            t0 = time.perf_counter()
            data = load_data(cfg.data, device)
            say(f"\n(throughput and profile data: {len(data.train_y)} {cfg.data.source} images, loaded in "
                f"{time.perf_counter() - t0:.1f} s)")
        # Order: the cheap measurements first, then the compiled columns with what the time-to-accuracy
        # run leaves, then that run.
        tta_reserve = (args.tta_minutes * 60 + 60) if "tta" in args.only and not args.quick else 0.0
        if "throughput" in args.only:
            section("1. trainer throughput (images/s, best epoch; eager first, compiled after sections 2 and 3)")
            measure_throughput(args, device, cfg, data, budget, results, compiled=False, reserve=0.0)
        if "host" in args.only:
            section("2. host waits (torch.profiler, the GPU recipe's model)")
            host_waits(args, device, data, results)
        if "workers" in args.only:
            section("3. vitsweep run --workers 1 against --workers 2 on one device (trials/hour)")
            workers(args, device, results)
        if "throughput" in args.only:
            section("1. trainer throughput, compiled (torch.compile; the first epoch includes compiling)")
            measure_throughput(args, device, cfg, data, budget, results, compiled=True, reserve=tta_reserve)
        if "tta" in args.only:
            section(f"4. time to accuracy: sweeps/gpu_recipe.yaml{' (quick: a tiny model on synthetic data)' if args.quick else ''}")
            tta_section(args, device, data_root, budget, results)
        summary(args, device, results, budget)
    except VitsweepError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


def header(args, device, data_root: Path | None) -> None:
    cuda = torch.cuda.is_available()
    say(f"device: {device_name(device)}{' (--quick: tiny models, synthetic data; the figures mean nothing)' if args.quick else ''}")
    say(f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}, GPUs visible: {torch.cuda.device_count() if cuda else 0}, "
        f"float32 matmul precision {torch.get_float32_matmul_precision()}, CPU threads {torch.get_num_threads()}, "
        f"native CPU bf16: {cpu_native('bf16')}")
    if device.type == "cuda":
        say(f"GPU: {torch.cuda.get_device_name(device)}, bf16 {torch.cuda.is_bf16_supported()}, "
            f"{torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB")
    say("CIFAR-10 (time to accuracy): " + ("not used (--quick: synthetic data)" if args.quick else
                                            str(data_root or "not found: that section is skipped (--data DIR)")))
    say(f"sections: {', '.join(args.only)}; budget {args.budget_minutes:g} min")


def summary(args, device, results: dict, budget: Budget) -> None:
    section("summary")
    name = device_name(device)
    say(f"{name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, {budget.elapsed() / 60:.1f} min in all"
        + (" -- QUICK RUN ON TINY MODELS: NOT A MEASUREMENT" if args.quick else ""))
    if any(isinstance(k, tuple) and len(k) == 3 for k in results):
        say("| model | bf16 eager | bf16 compiled | fp32 eager | fp32 compiled |")
        for model in MODELS:
            cells = [results.get((model, p, m)) for p in ("bf16", "fp32") for m in ("eager", "compiled")]
            say(f"| {model} | " + " | ".join("skipped" if c is None else f"{c:,.0f}" for c in cells) + " |")
        mi = results.get(("mi300x preset", "bf16", "eager"))
        if mi and not args.quick:
            say(f"mi300x preset, bf16 eager: {mi / 3200:.1f}x the seed's ~3.2k images/s on an MI300X")
    if "host" in results:
        h = results["host"]
        if "busy_pct" in h:
            say(f"host waits: {h['syncs_per_step']:.2f} host syncs per step; of the GPU's time per step, kernels "
                f"{h['busy_pct']:.1f}%, idle waiting on the host {h['host_wait_pct']:.1f}%, launch latency {h['launch_pct']:.1f}%")
        else:
            say(f"host waits: n/a on {device.type} (a GPU measure); step {h['step_ms']:.1f} ms under the profiler")
    if ("workers", 1) in results:
        w1, w2 = results["workers", 1][0], results["workers", 2][0]
        say(f"workers: --workers 1 {w1:,.0f} trials/hour, --workers 2 {w2:,.0f} trials/hour on one device: {w2 / w1:.2f}x")
    if "tta" in results:
        if results["tta"] is None:
            say("time to accuracy: skipped")
        else:
            r, seconds = results["tta"]
            test = f"{r.test.acc:.2%}" if r.test else "-"
            say(f"time to accuracy (gpu_recipe, {seconds / 60:.1f}-min budget): "
                + ", ".join(f"{t:.0%} {time_to_accuracy.time_to(r, t).strip()}" for t in TTA_TARGETS)
                + f"; best val {r.best_val_acc:.2%}, test {test}, {r.epochs_run} epochs")


if __name__ == "__main__":
    sys.exit(main())
