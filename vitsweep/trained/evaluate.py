"""``vitsweep evaluate``: a trained model on the test split, in numbers and pictures.

Writes into the output folder:
  metrics.json            top-1, loss, per-class accuracy and support, confusion matrix, (FP8 result)
  confusion_matrix.csv    rows: true class, columns: predicted class (counts)
  confusion_matrix.png    row-normalised, with counts
  per_class_accuracy.csv  class, accuracy, support
  predictions.png         a grid of test images titled true / predicted (red when wrong)
"""

from __future__ import annotations

import copy
import csv
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitsweep.train.augment import BatchAugment
from vitsweep.train.data import load_data
from vitsweep.train.device import device_name, resolve_device
from vitsweep.errors import VitsweepError, VitsweepWarning
from vitsweep.trained.inference import Loaded, load_ref
from vitsweep.paths import EVAL_DIR
from vitsweep.train.evaluate import EvalResult, evaluate as evaluate_split

FP8_E4M3_MAX = 448.0  # largest finite torch.float8_e4m3fn value


@dataclass
class EvaluateResult:
    out_dir: Path
    metrics: dict[str, Any]
    files: list[Path]


def run_evaluate(ref: str, out: str | Path | None = None, device: str = "auto", fp8: bool = False,
                 tracking_uri: str | None = None, grid: int = 32) -> EvaluateResult:
    """Evaluate ``ref`` (checkpoint path or MLflow run id) once on the test split of its own data."""
    dev = resolve_device(device)
    loaded = load_ref(ref, dev, tracking_uri)
    out_dir = Path(out) if out is not None else EVAL_DIR / loaded.name
    with warnings.catch_warnings():  # the train split is not used here: its size does not matter
        warnings.filterwarnings("ignore", message="data.train_limit", category=VitsweepWarning)
        data = load_data(loaded.config.data, dev)
    classes = loaded.classes
    if list(data.classes) != classes:
        raise VitsweepError(f"checkpoint {loaded.path}: it was trained on classes {classes}, but its data config "
                            f"({loaded.config.data.source}:{loaded.config.data.root}) now gives {data.classes}; "
                            f"the data changed since training")
    if data.image_size != loaded.image_size:
        raise VitsweepError(f"checkpoint {loaded.path}: trained on {loaded.image_size}px images, "
                            f"its data now gives {data.image_size}px")
    mean = tuple(loaded.meta.get("mean") or data.mean)  # the training split's stats, as trained
    std = tuple(loaded.meta.get("std") or data.std)
    augment = BatchAugment(loaded.config.augment, len(classes), mean, std, dev)
    batch = loaded.config.train.eval_batch_size

    t0 = time.perf_counter()
    full = evaluate_split(loaded.model, data.test_x, data.test_y, augment, len(classes), batch, "fp32", dev)
    eval_time = time.perf_counter() - t0
    metrics: dict[str, Any] = {
        "ref": loaded.ref, "checkpoint": str(loaded.path), "split": "test", "num_images": len(data.test_y),
        "device": device_name(dev), "precision": "fp32", "eval_time_s": round(eval_time, 3),
        "checkpoint_epoch": loaded.meta.get("epoch"), "checkpoint_val_acc": loaded.meta.get("val_acc"),
        **_summary(full, classes, data.test_y),
    }
    if fp8:
        q_model, n_layers = quantize_fp8_weights(loaded.model)
        q = evaluate_split(q_model, data.test_x, data.test_y, augment, len(classes), batch, "fp32", dev)
        metrics["fp8"] = {
            "scheme": "simulated FP8 E4M3 weights (torch.float8_e4m3fn round trip, per-tensor scale "
                      "amax/448) for every Linear and Conv2d layer; activations fp32",
            "layers_quantized": n_layers,
            "acc": q.acc, "loss": q.loss,
            "acc_drop": full.acc - q.acc,  # positive: accuracy lost to FP8
            "loss_increase": q.loss - full.loss,
            "per_class_acc": dict(zip(classes, q.per_class_acc)),
            "confusion": q.confusion,
        }
        del q_model

    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "metrics.json", out_dir / "confusion_matrix.csv", out_dir / "per_class_accuracy.csv",
             out_dir / "confusion_matrix.png", out_dir / "predictions.png"]
    files[0].write_text(json.dumps(metrics, indent=2) + "\n")
    write_confusion_csv(full.confusion, classes, files[1])
    with files[2].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "accuracy", "support"])
        for c, acc, n in zip(classes, full.per_class_acc, metrics["per_class_support"].values()):
            w.writerow([c, f"{acc:.6f}", n])
    plot_confusion(full.confusion, classes, files[3], title=f"{loaded.name}: test top-1 {full.acc:.2%}")
    plot_predictions(loaded, data.test_x, data.test_y, augment, classes, files[4], n=grid)
    return EvaluateResult(out_dir=out_dir, metrics=metrics, files=files)


def _summary(r: EvalResult, classes: list[str], y: torch.Tensor) -> dict[str, Any]:
    support = torch.bincount(y.cpu(), minlength=len(classes)).tolist()
    return {"acc": r.acc, "loss": r.loss,
            "per_class_acc": dict(zip(classes, r.per_class_acc)),
            "per_class_support": dict(zip(classes, support)),
            "classes": classes, "confusion": r.confusion}


# ---------------------------------------------------------------------------------------------
# FP8


def fp8_round_trip(w: torch.Tensor) -> torch.Tensor:
    """``w`` through float8 E4M3 and back with one per-tensor scale (amax maps to 448)."""
    amax = w.detach().abs().max().float()
    if amax == 0 or not torch.isfinite(amax):
        return w.clone()
    scale = amax / FP8_E4M3_MAX
    q = (w.float() / scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return (q.float() * scale).to(w.dtype)


@torch.no_grad()
def quantize_fp8_weights(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` whose Linear/Conv weights went through FP8 E4M3 (biases, norms untouched)."""
    q = copy.deepcopy(model)
    n = 0
    for m in q.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            m.weight.copy_(fp8_round_trip(m.weight))
            n += 1
    return q.eval(), n


# ---------------------------------------------------------------------------------------------
# Files


def write_confusion_csv(confusion: list[list[int]], classes: list[str], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *classes])
        for c, row in zip(classes, confusion):
            w.writerow([c, *row])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str = "") -> None:
    plt = _pyplot()
    conf = torch.tensor(confusion, dtype=torch.float64)
    norm = conf / conf.sum(1, keepdim=True).clamp_min(1)
    k = len(classes)
    size = max(5.0, 0.55 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if conf[i, j] > 0:
                    ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def plot_predictions(loaded: Loaded, x: torch.Tensor, y: torch.Tensor, augment: BatchAugment,
                     classes: list[str], path: Path, n: int = 32) -> None:
    """``n`` test images spread over the split, titled true / predicted; wrong ones in red."""
    plt = _pyplot()
    n = max(1, min(n, len(y)))
    idx = torch.linspace(0, len(y) - 1, n).round().long().to(x.device)
    probs = loaded.model(augment.normalize(x[idx])).float().softmax(1)
    conf, pred = probs.max(1)
    cols = min(8, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.95 * rows), squeeze=False)
    images = x[idx].permute(0, 2, 3, 1).cpu().numpy()
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        t, p = int(y[idx[k]]), int(pred[k])
        ax.imshow(images[k], interpolation="nearest")
        ax.set_title(f"{classes[t]}\n→ {classes[p]} {float(conf[k]):.0%}", fontsize=7,
                     color="black" if t == p else "red")
    fig.suptitle("test images: true → predicted (confidence); red = wrong", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_summary(r: EvaluateResult) -> str:
    m = r.metrics
    worst = sorted(m["per_class_acc"].items(), key=lambda kv: kv[1])[:3]
    lines = [f"test top-1: {m['acc']:.2%}  loss {m['loss']:.4f}  ({m['num_images']} images, {m['device']})",
             "weakest classes: " + ", ".join(f"{c} {a:.1%}" for c, a in worst)]
    if "fp8" in m:
        q = m["fp8"]
        lines.append(f"FP8 E4M3 weights: top-1 {q['acc']:.2%} (drop {q['acc_drop'] * 100:+.2f} points), "
                     f"loss {q['loss']:.4f}")
    lines.append(f"wrote {r.out_dir}/: " + ", ".join(p.name for p in r.files))
    return "\n".join(lines)


__all__ = ["EvaluateResult", "run_evaluate", "quantize_fp8_weights", "fp8_round_trip", "format_summary"]
