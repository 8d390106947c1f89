"""``vitsweep bench``: inference latency and throughput of a trained model by batch size.

Each batch size gets warm-up calls (not measured), then timed forward passes, each bracketed by a
device synchronise so GPU work is really finished. The number of timed passes adapts to the speed:
enough to fill ``min_time`` seconds, at least ``min_iters`` and at most ``max_iters``, so CPU runs
stay short and fast GPUs still get a stable median. Inputs are random normalized images of the
model's size (latency does not depend on pixel values).

Writes ``bench.json`` and ``bench.html`` (plotly, self-contained: opens offline).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitsweep.train.device import device_name, resolve_device, set_threads, synchronize
from vitsweep.errors import VitsweepError
from vitsweep.paths import BENCH_DIR
from vitsweep.trained.inference import load_ref

DEFAULT_BATCH_SIZES = (1, 4, 16, 64, 128)


@dataclass
class BenchResult:
    out_dir: Path
    report: dict[str, Any]
    files: list[Path]


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise VitsweepError(f"--batch-sizes {text!r}: expected comma-separated positive integers, e.g. 1,4,16,64,128") from None
    if not sizes or any(s < 1 for s in sizes):
        raise VitsweepError(f"--batch-sizes {text!r}: expected comma-separated positive integers, e.g. 1,4,16,64,128")
    return sorted(set(sizes))


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    v = sorted(values)
    pos = (len(v) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


@torch.inference_mode()
def time_batch(model: torch.nn.Module, x: torch.Tensor, device: torch.device, *, warmup: int = 3,
               min_time: float = 1.0, min_iters: int = 5, max_iters: int = 200) -> list[float]:
    """Seconds per forward pass of ``x`` (one entry per timed pass), warm-up excluded."""
    start = time.perf_counter()
    for _ in range(max(1, warmup)):  # at least one call; slow batches stop warming up after min_time
        model(x)
        synchronize(device)
        if time.perf_counter() - start > min_time:
            break
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - start < min_time):
        synchronize(device)
        t0 = time.perf_counter()
        model(x)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def run_bench(ref: str, batch_sizes: list[int] | tuple[int, ...] = DEFAULT_BATCH_SIZES, device: str = "auto",
              out: str | Path | None = None, tracking_uri: str | None = None, min_time: float = 1.0,
              warmup: int = 3, max_iters: int = 200, threads: int | None = None) -> BenchResult:
    dev = resolve_device(device)
    if not (0 <= min_time < float("inf")):
        raise VitsweepError(f"--min-time {min_time}: must be a number of seconds >= 0")
    before = torch.get_num_threads()
    set_threads(threads)  # 1..cores, or a ConfigError
    try:
        return _bench(ref, batch_sizes, dev, out, tracking_uri, min_time, warmup, max_iters)
    finally:
        torch.set_num_threads(before)


def _bench(ref: str, batch_sizes, dev: torch.device, out, tracking_uri, min_time, warmup, max_iters) -> BenchResult:  # noqa: ANN001
    loaded = load_ref(ref, dev, tracking_uri)
    out_dir = Path(out) if out is not None else BENCH_DIR / loaded.name
    model, size = loaded.model.eval(), loaded.image_size
    gen = torch.Generator().manual_seed(0)
    rows = []
    for b in sorted(set(batch_sizes)):
        x = torch.randn(b, 3, size, size, generator=gen).to(dev)
        try:
            times = time_batch(model, x, dev, warmup=warmup, min_time=min_time, max_iters=max_iters)
        except torch.OutOfMemoryError:
            raise VitsweepError(f"batch size {b} does not fit in {device_name(dev)} memory; "
                                f"leave it out of --batch-sizes") from None
        median = statistics.median(times)
        rows.append({"batch_size": b, "iterations": len(times),
                     "latency_median_ms": median * 1e3, "latency_p90_ms": percentile(times, 90) * 1e3,
                     "latency_mean_ms": statistics.fmean(times) * 1e3, "latency_min_ms": min(times) * 1e3,
                     "images_per_sec": b / median})
    base = next((r for r in rows if r["batch_size"] == 1), None)
    for r in rows:
        if base is not None:
            # speedup: throughput relative to batch size 1; efficiency: speedup / batch size
            # (1.0 = perfect scaling, i.e. a batch of B takes as long as one image).
            r["speedup_vs_bs1"] = r["images_per_sec"] / base["images_per_sec"]
            r["scaling_efficiency"] = r["speedup_vs_bs1"] / r["batch_size"]
    info = loaded.info()
    report = {
        "ref": loaded.ref, "checkpoint": str(loaded.path), "name": loaded.name,
        "device": str(dev), "device_name": device_name(dev), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "precision": "fp32", "mode": "torch.inference_mode, eager",
        "image_size": size, "num_params": info["num_params"],
        "model": {k: v for k, v in info["config"]["model"].items()},
        "timing": {"warmup_calls": warmup, "min_time_s": min_time, "max_iters": max_iters,
                   "synchronized": True, "input": "random normalized float32"},
        "results": rows,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "bench.json", out_dir / "bench.html"]
    files[0].write_text(json.dumps(report, indent=2) + "\n")
    write_chart(report, files[1])
    return BenchResult(out_dir=out_dir, report=report, files=files)


def write_chart(report: dict[str, Any], path: Path) -> None:
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    rows = report["results"]
    bs = [r["batch_size"] for r in rows]
    labels = [str(b) for b in bs]
    fig = make_subplots(rows=1, cols=3, subplot_titles=("throughput (images/s)", "latency per batch (ms)",
                                                         "scaling efficiency vs batch size 1"))
    fig.add_trace(go.Scatter(x=labels, y=[r["images_per_sec"] for r in rows], mode="lines+markers",
                             name="images/s"), row=1, col=1)
    fig.add_trace(go.Scatter(x=labels, y=[r["latency_median_ms"] for r in rows], mode="lines+markers",
                             name="median"), row=1, col=2)
    fig.add_trace(go.Scatter(x=labels, y=[r["latency_p90_ms"] for r in rows], mode="lines+markers",
                             name="p90", line={"dash": "dot"}), row=1, col=2)
    if all("scaling_efficiency" in r for r in rows):
        fig.add_trace(go.Bar(x=labels, y=[r["scaling_efficiency"] for r in rows], name="efficiency",
                             text=[f"{r['speedup_vs_bs1']:.1f}x" for r in rows], textposition="outside",
                             hovertemplate="batch %{x}: efficiency %{y:.2f}, speedup %{text}<extra></extra>"),
                      row=1, col=3)
        fig.update_yaxes(title_text="speedup / batch size (1 = linear)", row=1, col=3)
    for col in (1, 2, 3):
        fig.update_xaxes(title_text="batch size", type="category", row=1, col=col)
    m = report["model"]
    fig.update_layout(
        title=f"{report['name']}: ViT dim {m.get('dim')} depth {m.get('depth')} patch {m.get('patch_size')} "
              f"({report['num_params'] / 1e6:.2f}M params) on {report['device_name']}, {report['precision']}",
        height=480, width=1400, template="plotly_white")
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)


def format_summary(r: BenchResult) -> str:
    lines = [f"{r.report['device_name']} · {r.report['precision']} · {r.report['num_params'] / 1e6:.2f}M params",
             f"{'batch':>6} {'median ms':>10} {'p90 ms':>9} {'images/s':>10} {'efficiency':>11}"]
    for row in r.report["results"]:
        eff = f"{row['scaling_efficiency']:.2f}" if "scaling_efficiency" in row else "-"
        lines.append(f"{row['batch_size']:>6} {row['latency_median_ms']:>10.2f} {row['latency_p90_ms']:>9.2f} "
                     f"{row['images_per_sec']:>10,.0f} {eff:>11}")
    lines.append(f"wrote {r.out_dir}/: " + ", ".join(p.name for p in r.files))
    return "\n".join(lines)
