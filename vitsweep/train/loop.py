"""The one trainer every trial and promoted run uses.

``train(config, on_epoch) -> TrainResult``. It knows nothing of Optuna or MLflow: callers observe
it through ``on_epoch(epoch, metrics)``, and an exception raised there (e.g. Optuna's
TrialPruned) stops training cleanly, after the epoch's checkpoint is written, and propagates.

The hot loop keeps data on the device as uint8, augments whole batches there, and syncs with the
host once per epoch (loss and accuracy are accumulated on the device). Its parts live by concept:
``schedules`` (lr, resolution, time), ``optimizers``, ``evaluate``, ``checkpoint`` (what the run
folder holds), ``compile`` (the compile policy).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from vitsweep.train import checkpoint as ckpt_io
from vitsweep.train.augment import BatchAugment
from vitsweep.train.compile import Forward, compile_pays
from vitsweep.train.config import Config, TrainConfig, dump_config
from vitsweep.train.data import Dataset, load_data
from vitsweep.train.device import autocast, effective_precision, resolve_device, synchronize
from vitsweep.train.evaluate import EvalResult, evaluate
from vitsweep.train.model import ViT, build_model, count_params
from vitsweep.train.optimizers import build_optimizer
from vitsweep.train.schedules import Schedule

OnEpoch = Callable[[int, dict[str, float]], None]

CPU_MICRO_BATCH = 128  # a cache-sized chunk; 32 to 256 measured within 10% of each other here (README)


@dataclass
class TrainResult:
    stop_reason: str  # completed | early_stopped | target_reached | diverged | time_limit
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
    continued_from: int = 0  # the epoch a continued run started from (0: trained from scratch)


def train(
    config: Config,
    on_epoch: OnEpoch | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    data: Dataset | None = None,
    continue_from: str | Path | None = None,
) -> TrainResult:
    """Train a ViT as ``config`` says. With ``run_dir``, write ``last.pt``/``best.pt`` there each
    epoch; with ``resume``, continue from its ``last.pt`` (or start fresh if there is none). With
    ``continue_from`` (another run's ``last.pt``), a run whose folder has no ``last.pt`` yet starts
    where that run stopped and trains on to ``train.epochs`` (its config may differ only in length)."""
    run = _Run(config, Path(run_dir) if run_dir is not None else None, data)
    if resume and run.run_dir is not None and (run.run_dir / ckpt_io.LAST).is_file():
        run.load(run.run_dir / ckpt_io.LAST, ckpt_io.RESUMABLE_CHANGES)
    elif continue_from is not None:
        run.load(Path(continue_from), ckpt_io.CONTINUE_CHANGES)
        run.state["stop_reason"] = None  # it ended at its own length: this run is longer
        run.continued_from = run.state["epoch"]
    if run.saving:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(config, run.run_dir / "config.yaml")
    with _EpochBar(progress, run.schedule.steps_per_epoch) as bar:
        for epoch in run.epochs_left():
            metrics = run.epoch(epoch, bar)
            if on_epoch is not None:
                on_epoch(epoch, dict(metrics))  # may raise (pruning): checkpoint is already safe
            if run.state["stop_reason"] is not None:
                break
            run.maybe_compile(metrics)
    return run.finish()


class _Run:
    """One training run's objects and state, built from its config (set-up, resume, epochs,
    checkpoints, stop reasons, test), in the order the README describes them."""

    def __init__(self, config: Config, run_dir: Path | None, data: Dataset | None):
        self.t_start = time.perf_counter()
        self.config, self.run_dir, tc = config, run_dir, config.train
        self.device = resolve_device(tc.device)
        self.precision = effective_precision(tc.precision, self.device)
        self.data = data if data is not None else load_data(config.data, self.device)
        self.saving = run_dir is not None and tc.checkpoint
        torch.manual_seed(tc.seed)
        self.model = build_model(config.model, self.data.image_size, self.data.num_classes).to(self.device)
        self.optimizer = build_optimizer(self.model, config.optimizer)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.augment = BatchAugment(config.augment, self.data.num_classes, self.data.mean, self.data.std, self.device)
        self.forward = Forward(self.model, tc.compile)
        self.state: dict[str, Any] = {"epoch": 0, "best_val_acc": -1.0, "best_epoch": 0, "ref_acc": -1.0,
                                      "bad_epochs": 0, "history": [], "stop_reason": None, "elapsed": 0.0,
                                      "flops": 0.0, "warmup_end_s": None}
        self.schedule = Schedule(config, len(self.data.train_y), self.data.image_size)
        self.continued_from = 0
        self.clock = _Clock(self.t_start, 0.0)

    def load(self, path: Path, allowed: frozenset[str]) -> None:
        ckpt = ckpt_io.load_checkpoint(path, map_location=self.device)
        ckpt_io.check_resumable(self.config, ckpt, path.parent, allowed)
        self.state.update(ckpt_io.restore(ckpt, self.model, self.optimizer, self.scaler))
        self.continued_from = int(self.state.get("continued_from", 0))
        self.clock = _Clock(self.t_start, self.state["elapsed"])

    def epochs_left(self) -> range:
        start = self.state["epoch"] + 1
        return range(start, self.config.train.epochs + 1) if self.state["stop_reason"] is None else range(0)

    def epoch(self, epoch: int, bar: _EpochBar) -> dict[str, float]:
        """Train one epoch, validate, run its cooldown branch if it has one, keep the books and the
        checkpoints; returns the epoch's metrics."""
        tc, sched, data, state = self.config.train, self.schedule, self.data, self.state
        size = sched.image_size(sched.progress(epoch, self.clock.elapsed()))
        bar.start(f"epoch {epoch}/{tc.epochs}" + (f" ({size}px)" if size != data.image_size else ""))
        step = _Step(self.model, self.forward, self.optimizer, self.scaler, self.augment, self.config,
                     self.precision, self.device)
        t0 = time.perf_counter()
        train_loss, lr = _train_epoch(step, sched, data, epoch, size, self.clock, state, bar)
        train_time = self._train_time = time.perf_counter() - t0
        val = self._validate(self.model)
        state["flops"] += sched.epoch_flops(self.config.model, size, data.num_classes, len(data.val_y))
        metrics = {"epoch": epoch, "train_loss": train_loss, "val_loss": val.loss, "val_acc": val.acc, "lr": lr,
                   "images_per_sec": sched.n_train / train_time, "image_size": size}
        if epoch in self.config.schedule.branches and sched.kind.branches:
            metrics.update(self._branch(step, epoch, lr))
        state["elapsed"] = self.clock.elapsed()
        metrics.update(epoch_time=time.perf_counter() - t0, elapsed=state["elapsed"], flops=state["flops"])
        state["history"].append(metrics)
        state["epoch"] = epoch
        if not (math.isfinite(train_loss) and math.isfinite(val.loss)):
            state["stop_reason"] = "diverged"  # the weights are garbage now: keep the last good last.pt
            return metrics
        improved = _bookkeep(state, val.acc, tc, sched, metrics["epoch_time"] - train_time, size)
        if self.saving:
            if improved:
                ckpt_io.save_best(self.run_dir, self.model, self.config, data, epoch, val.acc)
            ckpt_io.save_last(self.run_dir, self.model, self.optimizer, self.scaler, self.config,
                              {**state, "continued_from": self.continued_from})
        return metrics

    def _validate(self, model: nn.Module) -> EvalResult:
        d = self.data
        return evaluate(model, d.val_x, d.val_y, self.augment, d.num_classes, self.config.train.eval_batch_size,
                        self.precision, self.device)

    def _branch(self, trunk: _Step, epoch: int, lr_now: float) -> dict[str, float]:
        """A cooldown branch after ``epoch``: a copy of the model and optimizer cools down at full
        resolution for ``schedule.cooldown`` x the steps so far, and is validated. The trunk's
        weights, optimizer state and random streams are untouched (each epoch re-seeds its own)."""
        sched, data, tc = self.schedule, self.data, self.config.train
        model = copy.deepcopy(self.model)
        optimizer = build_optimizer(model, self.config.optimizer)
        optimizer.load_state_dict(copy.deepcopy(self.optimizer.state_dict()))  # no tensor shared with the trunk
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.scaler.is_enabled())
        if scaler.is_enabled():
            scaler.load_state_dict(self.scaler.state_dict())
        step = _Step(model, Forward(model, False), optimizer, scaler, self.augment, self.config, self.precision,
                     self.device)
        lrs = sched.branch_lrs(epoch * sched.steps_per_epoch, lr_now)
        torch.manual_seed(tc.seed * 1_000_003 + epoch + 500_000_000)  # the branch's own batches
        n_images = len(lrs) * tc.batch_size
        order = torch.cat([torch.randperm(sched.n_train, device=self.device)
                           for _ in range(math.ceil(n_images / sched.n_train))])
        model.train()
        for i, lr in enumerate(lrs):
            idx = order[i * tc.batch_size:(i + 1) * tc.batch_size]
            step(data.train_x[idx], data.train_y[idx], lr, data.image_size)
        val = self._validate(model)
        self.state["flops"] += sched.epoch_flops(self.config.model, data.image_size, data.num_classes,
                                                 len(data.val_y), n_train=n_images)
        return {"cooldown_val_acc": val.acc, "cooldown_val_loss": val.loss, "cooldown_steps": len(lrs)}

    def maybe_compile(self, metrics: dict[str, float]) -> None:
        if self.forward.undecided:
            size = int(metrics["image_size"])
            self.forward.decide(compile_pays(self.device, self._train_time,
                                             *self.schedule.rest_of_run(self.state, self._train_time, size)))

    def finish(self) -> TrainResult:
        """Test the best checkpoint once (or the final model when nothing was saved)."""
        tc, state, d = self.config.train, self.state, self.data
        test = None
        if tc.test and state["best_epoch"] > 0:
            if self.saving and (self.run_dir / ckpt_io.BEST).is_file():
                self.model.load_state_dict(ckpt_io.load_checkpoint(self.run_dir / ckpt_io.BEST,
                                                                   map_location=self.device)["model"])
            test = evaluate(self.model, d.test_x, d.test_y, self.augment, d.num_classes, tc.eval_batch_size,
                            self.precision, self.device)
        return TrainResult(
            stop_reason=state["stop_reason"] or "completed", epochs_run=state["epoch"],
            best_val_acc=max(state["best_val_acc"], 0.0), best_epoch=state["best_epoch"], history=state["history"],
            test=test, run_dir=self.run_dir, device=str(self.device), precision=self.precision,
            num_params=count_params(self.model), wall_time=time.perf_counter() - self.t_start, classes=d.classes,
            flops=state["flops"], compiled=self.forward.compiled is not None, continued_from=self.continued_from)


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
        self.autocast = autocast(device, precision)
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


def micro_batch_size(tc: TrainConfig, device: torch.device) -> int:
    """``train.micro_batch``, or auto: 128 on a CPU (cache-sized), the whole batch elsewhere."""
    if tc.micro_batch is not None:
        return tc.micro_batch
    return min(tc.batch_size, CPU_MICRO_BATCH) if device.type == "cpu" else tc.batch_size


class _Clock:
    """Seconds the run has trained, over all of its sessions (a resumed run continues the count)."""

    def __init__(self, t_start: float, before: float):
        self.t_start, self.before = t_start, before

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.t_start


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
