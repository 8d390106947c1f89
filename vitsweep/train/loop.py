"""The one trainer every trial and promoted run uses.

``train(config, on_epoch) -> TrainResult``. It knows nothing of Optuna or MLflow: callers observe
it through ``on_epoch(epoch, metrics)``, and an exception raised there (e.g. Optuna's
TrialPruned) stops training cleanly, after the epoch's checkpoint is written, and propagates.

The hot loop keeps data on the device as uint8, augments whole batches there, and syncs with the
host once per epoch (loss and accuracy are accumulated on the device).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from vitsweep.train.augment import BatchAugment
from vitsweep.train.checkpoint import load_checkpoint, save_atomic
from vitsweep.train.config import Config, OptimizerConfig, build_config, dump_config
from vitsweep.train.data import Dataset, load_data
from vitsweep.train.device import DTYPES, effective_precision, resolve_device, synchronize
from vitsweep.errors import VitsweepError
from vitsweep.train.model import ViT, build_model, count_params

OnEpoch = Callable[[int, dict[str, float]], None]

# Keys that may change between a killed run and its resume without changing what it computes.
RESUMABLE_CHANGES = {"train.device", "train.compile", "train.test", "train.patience", "train.min_delta",
                     "train.target_acc", "train.eval_batch_size"}


@dataclass
class EvalResult:
    loss: float
    acc: float
    per_class_acc: list[float]
    confusion: list[list[int]]  # rows: true class, columns: predicted


@dataclass
class TrainResult:
    stop_reason: str  # completed | early_stopped | target_reached | diverged
    epochs_run: int
    best_val_acc: float
    best_epoch: int
    history: list[dict[str, float]]
    test: EvalResult | None
    run_dir: Path | None
    device: str
    precision: str  # what really ran (fp32 when a reduced precision was asked for on a CPU)
    num_params: int
    wall_time: float
    classes: list[str] = field(default_factory=list)


def train(
    config: Config,
    on_epoch: OnEpoch | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    data: Dataset | None = None,
) -> TrainResult:
    """Train a ViT as ``config`` says. With ``run_dir``, write ``last.pt``/``best.pt`` there each
    epoch; with ``resume``, continue from ``last.pt`` (or start fresh if there is none)."""
    t_start = time.perf_counter()
    tc = config.train
    device = resolve_device(tc.device)
    precision = effective_precision(tc.precision, device)
    run_dir = Path(run_dir) if run_dir is not None else None
    data = data if data is not None else load_data(config.data, device)

    torch.manual_seed(tc.seed)
    model = build_model(config.model, data.image_size, data.num_classes).to(device)
    optimizer = build_optimizer(model, config.optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    augment = BatchAugment(config.augment, data.num_classes, data.mean, data.std, device)
    forward = torch.compile(model) if tc.compile else model

    state = {"epoch": 0, "best_val_acc": -1.0, "best_epoch": 0, "ref_acc": -1.0, "bad_epochs": 0,
             "history": [], "stop_reason": None}
    if resume and run_dir is not None and (run_dir / "last.pt").is_file():
        ckpt = load_checkpoint(run_dir / "last.pt", map_location=device)
        _check_resumable(config, ckpt, run_dir)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        state.update(ckpt["state"])
    if run_dir is not None and tc.checkpoint:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(config, run_dir / "config.yaml")

    n_train = len(data.train_y)
    steps_per_epoch = math.ceil(n_train / tc.batch_size)
    total_steps = steps_per_epoch * tc.epochs
    warmup_steps = round(config.schedule.warmup_epochs * steps_per_epoch)
    autocast = _autocast(device, precision)
    epochs_left = tc.epochs - state["epoch"] if state["stop_reason"] is None else 0

    with _EpochBar(progress, steps_per_epoch) as bar:
        for epoch in range(state["epoch"] + 1, state["epoch"] + 1 + epochs_left):
            t0 = time.perf_counter()
            torch.manual_seed(tc.seed * 1_000_003 + epoch)  # same seed + epoch -> same batches
            model.train()
            perm = torch.randperm(n_train, device=device)
            loss_sum = torch.zeros((), device=device)
            bar.start(f"epoch {epoch}/{tc.epochs}")
            for i in range(steps_per_epoch):
                idx = perm[i * tc.batch_size : (i + 1) * tc.batch_size]
                x, target = augment(data.train_x[idx], data.train_y[idx])
                lr = lr_at((epoch - 1) * steps_per_epoch + i, total_steps, warmup_steps,
                           config.optimizer.lr, config.schedule.min_lr_ratio)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with autocast:
                    loss = F.cross_entropy(forward(x), target, label_smoothing=config.augment.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.optimizer.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), config.optimizer.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                loss_sum += loss.detach().float() * len(idx)
                bar.advance()
            synchronize(device)
            train_time = time.perf_counter() - t0
            train_loss = float(loss_sum) / n_train  # the epoch's one host sync for training
            val = evaluate(forward, data.val_x, data.val_y, augment, data.num_classes, tc.eval_batch_size, precision, device)
            metrics = {"epoch": epoch, "train_loss": train_loss, "val_loss": val.loss, "val_acc": val.acc, "lr": lr,
                       "images_per_sec": n_train / train_time, "epoch_time": time.perf_counter() - t0,
                       "elapsed": time.perf_counter() - t_start}
            state["history"].append(metrics)
            state["epoch"] = epoch
            if not (math.isfinite(train_loss) and math.isfinite(val.loss)):
                state["stop_reason"] = "diverged"  # the weights are garbage now: keep the last good last.pt
                break

            if val.acc > state["best_val_acc"]:
                state["best_val_acc"], state["best_epoch"] = val.acc, epoch
                if run_dir is not None and tc.checkpoint:
                    save_atomic(_best_payload(model, config, data, epoch, val.acc), run_dir / "best.pt")
            if val.acc > state["ref_acc"] + tc.min_delta:
                state["ref_acc"], state["bad_epochs"] = val.acc, 0
            else:
                state["bad_epochs"] += 1
            if tc.target_acc is not None and val.acc >= tc.target_acc:
                state["stop_reason"] = "target_reached"
            elif tc.patience is not None and state["bad_epochs"] >= tc.patience:
                state["stop_reason"] = "early_stopped"
            elif epoch == tc.epochs:
                state["stop_reason"] = "completed"
            if run_dir is not None and tc.checkpoint:
                save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                             "config": config.to_dict(), "state": state}, run_dir / "last.pt")
            if on_epoch is not None:
                on_epoch(epoch, dict(metrics))  # may raise (pruning): checkpoint is already safe
            if state["stop_reason"] is not None:
                break

    test = None
    if tc.test and state["best_epoch"] > 0:
        if run_dir is not None and tc.checkpoint and (run_dir / "best.pt").is_file():
            model.load_state_dict(load_checkpoint(run_dir / "best.pt", map_location=device)["model"])
        test = evaluate(model, data.test_x, data.test_y, augment, data.num_classes, tc.eval_batch_size, precision, device)
    return TrainResult(
        stop_reason=state["stop_reason"] or "completed",
        epochs_run=state["epoch"],
        best_val_acc=max(state["best_val_acc"], 0.0),
        best_epoch=state["best_epoch"],
        history=state["history"],
        test=test,
        run_dir=run_dir,
        device=str(device),
        precision=precision,
        num_params=count_params(model),
        wall_time=time.perf_counter() - t_start,
        classes=data.classes,
    )


@torch.no_grad()
def evaluate(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, augment: BatchAugment,
             num_classes: int, batch_size: int, precision: str, device: torch.device) -> EvalResult:
    """Loss, accuracy, per-class accuracy and confusion matrix over uint8 images; one host sync."""
    if isinstance(model, nn.Module):
        model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.long)
    with _autocast(device, precision):
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            logits = model(augment.normalize(xb)).float()
            loss_sum += F.cross_entropy(logits, yb, reduction="sum")
            confusion += torch.bincount(yb * num_classes + logits.argmax(1), minlength=num_classes**2)
    conf = confusion.view(num_classes, num_classes).cpu()
    total = max(int(conf.sum()), 1)
    return EvalResult(
        loss=float(loss_sum) / total,
        acc=float(conf.diag().sum()) / total,
        per_class_acc=(conf.diag().double() / conf.sum(1).clamp_min(1)).tolist(),
        confusion=conf.tolist(),
    )


def build_optimizer(model: ViT, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Decay only weight matrices: norms, biases, position embedding and cls token get none."""
    no_decay = model.no_decay_names()
    params = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in params if n not in no_decay], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in params if n in no_decay], "weight_decay": 0.0},
    ]
    betas = tuple(cfg.betas or ())
    if cfg.name == "adan":
        from adan_pytorch import Adan  # paper convention: betas (0.02, 0.08, 0.01), not 1 - beta

        return Adan(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_ratio: float) -> float:
    """Linear warmup to ``base_lr`` over ``warmup_steps``, then cosine down to ``min_ratio * base_lr``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[ViT, Config, dict[str, Any]]:
    """A trained model from a ``best.pt``/``last.pt`` checkpoint, with its config and metadata."""
    ckpt = load_checkpoint(path, map_location=device)
    config = build_config(ckpt["config"], source=str(path))
    meta = ckpt.get("meta") or {}
    n_classes = len(meta.get("classes") or []) or int(ckpt["model"]["head.weight"].shape[0])
    model = build_model(config.model, int(meta.get("image_size", config.data.image_size)), n_classes)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), config, meta


def _best_payload(model: ViT, config: Config, data: Dataset, epoch: int, val_acc: float) -> dict[str, Any]:
    return {"model": model.state_dict(), "config": config.to_dict(),
            "meta": {"epoch": epoch, "val_acc": val_acc, "classes": data.classes, "image_size": data.image_size,
                     "mean": list(data.mean), "std": list(data.std)}}


def _check_resumable(config: Config, ckpt: dict[str, Any], run_dir: Path) -> None:
    saved = build_config(ckpt["config"], source=str(run_dir / "last.pt")).flat()
    now = config.flat()
    changed = sorted(k for k in now if now[k] != saved.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise VitsweepError(f"cannot resume {run_dir}: the config differs from the checkpoint's ({diffs}); "
                            f"resume with the same config, or start a new run directory")


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


class _EpochBar:
    """A transient per-epoch progress bar on stderr (steps), or nothing."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.progress, self.task = enabled, total, None, None

    def __enter__(self) -> _EpochBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self.progress.start()
        return self

    def start(self, description: str) -> None:
        if self.progress is not None:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(description, total=self.total)

    def advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
