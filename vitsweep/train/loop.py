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
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from vitsweep.train.augment import BatchAugment
from vitsweep.train.checkpoint import load_checkpoint, save_atomic
from vitsweep.train.config import Config, ModelConfig, OptimizerConfig, TrainConfig, build_config, dump_config
from vitsweep.train.data import Dataset, load_data
from vitsweep.train.device import DTYPES, effective_precision, resolve_device, synchronize
from vitsweep.errors import VitsweepError, VitsweepWarning
from vitsweep.train.model import ViT, build_model, count_params, forward_flops, kept_tokens

OnEpoch = Callable[[int, dict[str, float]], None]

# Keys that may change between a killed run and its resume without changing what it computes.
RESUMABLE_CHANGES = {"train.device", "train.compile", "train.test", "train.patience", "train.min_delta",
                     "train.target_acc", "train.eval_batch_size", "train.micro_batch"}

# torch.compile's cost (seconds to compile the training step, per image size) and gain (the
# fraction of step time it saves). CPU: measured by benchmarks/train_throughput.py on this project's
# 2-core Zen 4 (14-16 s to compile; 0.96x fp32, 1.03x bf16: no gain), so auto stays eager on CPUs.
# CUDA: not measured here (no GPU was available): typical figures, to be replaced by measurements.
COMPILE_COST_S = {"cpu": 15.0, "cuda": 60.0}
COMPILE_GAIN = {"cpu": 0.0, "cuda": 0.15}
CPU_MICRO_BATCH = 128  # a cache-sized chunk; 32 to 256 measured within 10% of each other here (README)


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
    flops: float = 0.0  # training compute: an estimate of the FLOPs of every training step and validation pass
    compiled: bool = False  # whether the training forward ended up compiled (train.compile)


# One function on purpose (~100 lines): the epoch loop reads top to bottom as one training run
# (set-up, resume, epochs, checkpoints, stop reasons, test), the way the README describes it.
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
    forward = Forward(model, tc.compile)

    state = {"epoch": 0, "best_val_acc": -1.0, "best_epoch": 0, "ref_acc": -1.0, "bad_epochs": 0,
             "history": [], "stop_reason": None, "elapsed": 0.0, "flops": 0.0, "warmup_end_s": None}
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

    schedule = Schedule(config, len(data.train_y), data.image_size)
    clock = _Clock(t_start, state["elapsed"])
    step = _Step(model, forward, optimizer, scaler, augment, config, precision, device)
    epochs_left = tc.epochs - state["epoch"] if state["stop_reason"] is None else 0
    with _EpochBar(progress, schedule.steps_per_epoch) as bar:
        for epoch in range(state["epoch"] + 1, state["epoch"] + 1 + epochs_left):
            size = schedule.image_size(schedule.progress(epoch, clock.elapsed()))
            bar.start(f"epoch {epoch}/{tc.epochs}" + (f" ({size}px)" if size != data.image_size else ""))
            t0 = time.perf_counter()
            train_loss, lr = _train_epoch(step, schedule, data, epoch, size, clock, state, bar)
            train_time = time.perf_counter() - t0
            val = evaluate(model, data.val_x, data.val_y, augment, data.num_classes, tc.eval_batch_size, precision, device)
            state["flops"] += schedule.epoch_flops(config.model, size, data.num_classes, len(data.val_y))
            state["elapsed"] = clock.elapsed()
            metrics = {"epoch": epoch, "train_loss": train_loss, "val_loss": val.loss, "val_acc": val.acc, "lr": lr,
                       "images_per_sec": schedule.n_train / train_time, "epoch_time": time.perf_counter() - t0,
                       "elapsed": state["elapsed"], "image_size": size, "flops": state["flops"]}
            state["history"].append(metrics)
            state["epoch"] = epoch
            if not (math.isfinite(train_loss) and math.isfinite(val.loss)):
                state["stop_reason"] = "diverged"  # the weights are garbage now: keep the last good last.pt
                break
            improved = _bookkeep(state, val.acc, tc, schedule, metrics["epoch_time"] - train_time, size)
            if improved and run_dir is not None and tc.checkpoint:
                save_atomic(_best_payload(model, config, data, epoch, val.acc), run_dir / "best.pt")
            if run_dir is not None and tc.checkpoint:
                save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                             "config": config.to_dict(), "state": state}, run_dir / "last.pt")
            if on_epoch is not None:
                on_epoch(epoch, dict(metrics))  # may raise (pruning): checkpoint is already safe
            if state["stop_reason"] is not None:
                break
            if forward.undecided:
                forward.decide(compile_pays(device, train_time, *schedule.rest_of_run(state, train_time, size)))

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
        flops=state["flops"],
        compiled=forward.compiled is not None,
    )


def _train_epoch(step: _Step, schedule: Schedule, data: Dataset, epoch: int, size: int, clock: _Clock,
                 state: dict[str, Any], bar: _EpochBar) -> tuple[float, float]:
    """One pass over the training set at ``size`` pixels: (mean train loss, last lr). One host sync."""
    tc = step.config.train
    torch.manual_seed(tc.seed * 1_000_003 + epoch)  # same seed + epoch -> same batches
    step.model.train()
    perm = torch.randperm(schedule.n_train, device=step.device)
    loss_sum = torch.zeros((), device=step.device)
    lr = 0.0
    for i in range(schedule.steps_per_epoch):
        global_step = (epoch - 1) * schedule.steps_per_epoch + i
        if schedule.by_time and state["warmup_end_s"] is None and global_step >= schedule.warmup_steps:
            state["warmup_end_s"] = clock.elapsed()  # the time-stretched decay starts here
        lr = schedule.lr(global_step, clock.elapsed() if schedule.by_time else 0.0, state["warmup_end_s"])
        idx = perm[i * tc.batch_size : (i + 1) * tc.batch_size]
        loss_sum += step(data.train_x[idx], data.train_y[idx], lr, size)
        bar.advance()
    synchronize(step.device)
    return float(loss_sum) / schedule.n_train, lr  # the epoch's one host sync for training


class _Step:
    """One optimizer step on a batch: augment, resize, forward/backward in micro-batches with the
    gradients accumulated, clip, step. Returns the batch's summed loss as a device tensor."""

    def __init__(self, model: ViT, forward: Forward, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 augment: BatchAugment, config: Config, precision: str, device: torch.device):
        self.model, self.forward, self.optimizer, self.scaler = model, forward, optimizer, scaler
        self.augment, self.config, self.device = augment, config, device
        self.autocast = _autocast(device, precision)
        self.micro = micro_batch_size(config.train, device)

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, lr: float, size: int) -> torch.Tensor:
        cfg = self.config
        x, target = self.augment(xb, yb)
        if size != x.shape[-1]:  # progressive resolution: the augmented batch, downsampled
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        for xm, tm in zip(x.split(self.micro), target.split(self.micro)):
            with self.autocast:
                loss = F.cross_entropy(self.forward(xm), tm, label_smoothing=cfg.augment.label_smoothing)
            self.scaler.scale(loss * (len(xm) / len(x))).backward()  # the batch mean, accumulated
            loss_sum += loss.detach().float() * len(xm)
        if cfg.optimizer.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optimizer.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss_sum


def _bookkeep(state: dict[str, Any], val_acc: float, tc: TrainConfig, schedule: Schedule, eval_time: float,
              size: int) -> bool:
    """Best epoch, early stopping, target, completion and time limit, after an epoch's validation.
    Returns whether this epoch is the best so far."""
    epoch = state["epoch"]
    improved = val_acc > state["best_val_acc"]
    if improved:
        state["best_val_acc"], state["best_epoch"] = val_acc, epoch
    if val_acc > state["ref_acc"] + tc.min_delta:
        state["ref_acc"], state["bad_epochs"] = val_acc, 0
    else:
        state["bad_epochs"] += 1
    if tc.target_acc is not None and val_acc >= tc.target_acc:
        state["stop_reason"] = "target_reached"
    elif tc.patience is not None and state["bad_epochs"] >= tc.patience:
        state["stop_reason"] = "early_stopped"
    elif epoch == tc.epochs:
        state["stop_reason"] = "completed"
    elif tc.time_limit is not None and schedule.out_of_time(state, eval_time, size):
        state["stop_reason"] = "time_limit"
    return improved


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


def micro_batch_size(tc: TrainConfig, device: torch.device) -> int:
    """``train.micro_batch``, or auto: 128 on a CPU (cache-sized), the whole batch elsewhere."""
    if tc.micro_batch is not None:
        return tc.micro_batch
    return min(tc.batch_size, CPU_MICRO_BATCH) if device.type == "cpu" else tc.batch_size


def compile_pays(device: torch.device, epoch_train_s: float, epochs_left: float, sizes_left: int) -> bool:
    """``train.compile: auto``: compile when the rest of the run saves at least twice what compiling
    costs (one compile per image size still to come, plus one for a smaller last batch)."""
    if device.type not in COMPILE_COST_S or COMPILE_GAIN[device.type] <= 0:
        return False  # mps: torch.compile is experimental there; cpu: measured no faster
    saving = COMPILE_GAIN[device.type] * epoch_train_s * epochs_left
    return saving >= 2 * COMPILE_COST_S[device.type] * (sizes_left + 1)


class Forward:
    """The training forward: the model, or ``torch.compile(model)`` (``train.compile``). A compile
    error (no C++ compiler, an unsupported op) falls back to eager with a warning, never a failed run.
    With ``auto``, :meth:`decide` is called after the first epoch, with the measured verdict."""

    def __init__(self, model: nn.Module, mode: bool | str):
        self.model, self.compiled = model, None
        self.undecided = mode == "auto"
        if mode is True:
            self.decide(True)

    def decide(self, compile_: bool) -> None:
        self.undecided = False
        if compile_:
            self.compiled = torch.compile(self.model)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except Exception as e:  # noqa: BLE001 - any compiler failure: eager computes the same
                first = (str(e).strip().splitlines() or [""])[0][:200]
                warnings.warn(f"torch.compile failed ({type(e).__name__}: {first}); training continues in eager mode",
                              VitsweepWarning, stacklevel=2)
                self.compiled = None
        return self.model(x)


class _Clock:
    """Seconds the run has trained, over all of its sessions (a resumed run continues the count)."""

    def __init__(self, t_start: float, before: float):
        self.t_start, self.before = t_start, before

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.t_start


class Schedule:
    """Where a run is at any step: its learning rate and image size, over ``train.epochs`` or, with
    ``schedule.by_time``, over ``train.time_limit`` seconds; and whether another epoch still fits."""

    def __init__(self, config: Config, n_train: int, image_size: int):
        tc, sc = config.train, config.schedule
        self.config, self.n_train, self.full_size = config, n_train, image_size
        self.steps_per_epoch = math.ceil(n_train / tc.batch_size)
        self.total_steps = self.steps_per_epoch * tc.epochs
        self.warmup_steps = round(sc.warmup_epochs * self.steps_per_epoch)
        self.by_time = sc.by_time
        self.patch = config.model.patch_size

    def progress(self, epoch: int, elapsed: float) -> float:
        """The fraction of the run done when ``epoch`` starts."""
        if self.by_time:
            return min(1.0, elapsed / self.config.train.time_limit)
        return (epoch - 1) / self.config.train.epochs

    def lr(self, step: int, elapsed: float = 0.0, warmup_end_s: float | None = None) -> float:
        """Linear warmup over ``warmup_epochs``, then cosine to ``min_lr_ratio``: over the remaining
        steps, or (``by_time``) over the remaining seconds of the time limit."""
        o, sc = self.config.optimizer, self.config.schedule
        if not self.by_time or step < self.warmup_steps or warmup_end_s is None:
            return lr_at(step, self.total_steps, self.warmup_steps, o.lr, sc.min_lr_ratio)
        limit = self.config.train.time_limit
        return cosine(o.lr, sc.min_lr_ratio, (elapsed - warmup_end_s) / max(1e-9, limit - warmup_end_s))

    def image_size(self, progress: float) -> int:
        """Progressive resolution: ``res_start`` growing linearly to full size at ``res_until``
        (rounded down to a multiple of the patch size), then full size."""
        sc = self.config.schedule
        if sc.res_start is None or progress >= sc.res_until:
            return self.full_size
        size = sc.res_start + (self.full_size - sc.res_start) * progress / sc.res_until
        return max(sc.res_start, int(size) // self.patch * self.patch)

    def epoch_flops(self, m: ModelConfig, size: int, num_classes: int, n_val: int) -> float:
        """An epoch's compute: training steps (3x forward, patch dropout's fewer tokens) + validation."""
        n_patches = (size // m.patch_size) ** 2
        train = 3 * forward_flops(m, size, num_classes, kept_tokens(n_patches, m.patch_dropout))
        return self.n_train * train + n_val * forward_flops(m, self.full_size, num_classes)

    def _epoch_time(self, train_time: float, size: int, next_size: int) -> float:
        """Scale a measured epoch's training time to another image size by the FLOPs ratio."""
        m = self.config.model
        if next_size == size:
            return train_time
        return train_time * forward_flops(m, next_size, 10) / forward_flops(m, size, 10)

    def out_of_time(self, state: dict[str, Any], eval_time: float, size: int) -> bool:
        """Past ``train.time_limit``, or the next epoch (as long as the last, scaled to its image
        size) would end past it."""
        limit, elapsed = self.config.train.time_limit, state["elapsed"]
        train_time = state["history"][-1]["epoch_time"] - eval_time
        next_size = self.image_size(self.progress(state["epoch"] + 1, elapsed))
        return elapsed >= limit or elapsed + self._epoch_time(train_time, size, next_size) + eval_time > limit

    def rest_of_run(self, state: dict[str, Any], train_time: float, size: int) -> tuple[float, int]:
        """(epochs still to train, distinct image sizes among them), for the compile decision."""
        tc = self.config.train
        epochs = tc.epochs - state["epoch"]
        if tc.time_limit is not None:
            epochs = min(epochs, max(0.0, (tc.time_limit - state["elapsed"]) / max(train_time, 1e-9)))
        if self.by_time:  # every patch multiple from here to full size may come
            return epochs, (self.full_size - size) // self.patch + 1
        sizes = {self.image_size(self.progress(e, 0.0)) for e in range(state["epoch"] + 1, tc.epochs + 1)}
        return epochs, len(sizes)


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_ratio: float) -> float:
    """Linear warmup to ``base_lr`` over ``warmup_steps``, then cosine down to ``min_ratio * base_lr``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return cosine(base_lr, min_ratio, (step - warmup_steps) / max(1, total_steps - warmup_steps))


def cosine(base_lr: float, min_ratio: float, progress: float) -> float:
    """Cosine decay from ``base_lr`` (progress 0) to ``min_ratio * base_lr`` (progress >= 1)."""
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
