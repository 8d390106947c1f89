"""Schedules: where a run is at any step. The learning rate (a linear warmup, then one of
``SCHEDULES``), the image size (progressive resolution), and whether another epoch still fits the
time limit.

A schedule is sized to ``schedule.horizon`` epochs (default: ``train.epochs``) or, with
``schedule.by_time``, to ``train.time_limit`` seconds. A run shorter than its horizon is the first
part of the longer run, step for step: a sweep's trial with the horizon of the final run is
continued by ``vitsweep promote`` where it stopped.

``wsd`` (warmup-stable-decay; Hägele et al., NeurIPS 2024) holds the lr constant and cools down
over the last ``schedule.cooldown`` of the horizon. Its *branches* make a short run report what a
finished run would: after each epoch in ``schedule.branches`` a copy of the model and optimizer
cools down for ``cooldown`` x the steps so far and is validated (``cooldown_val_acc``); the trunk
goes on untouched (``vitsweep.train.loop``).

Adding a schedule is one entry in ``SCHEDULES``: a function of the decay progress (0 after the
warmup, 1 at the horizon) returning the lr as a fraction of ``optimizer.lr``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from vitsweep.train.config import Config, ModelConfig, ScheduleConfig

# Cooldown shapes: the fraction of the way from the lr to its floor still left at progress q in
# [0, 1] of a cooldown. (1 - sqrt) beats linear in Hägele et al.
COOLDOWN_SHAPES: dict[str, Callable[[float], float]] = {
    "1-sqrt": lambda q: 1 - math.sqrt(q),
    "linear": lambda q: 1 - q,
    "cosine": lambda q: 0.5 * (1 + math.cos(math.pi * q)),
}


def _floor(sc: ScheduleConfig, left: float) -> float:
    """An lr fraction ``left`` of the way from 1 down to ``min_lr_ratio``."""
    return sc.min_lr_ratio + (1 - sc.min_lr_ratio) * left


def _cosine(p: float, sc: ScheduleConfig) -> float:
    return _floor(sc, 0.5 * (1 + math.cos(math.pi * min(max(p, 0.0), 1.0))))


def _wsd(p: float, sc: ScheduleConfig) -> float:
    start = 1 - sc.cooldown
    if p < start or sc.cooldown <= 0:
        return 1.0
    return _floor(sc, COOLDOWN_SHAPES[sc.cooldown_shape](min(1.0, (p - start) / sc.cooldown)))


@dataclass(frozen=True)
class ScheduleKind:
    lr: Callable[[float, ScheduleConfig], float]  # decay progress -> lr / optimizer.lr
    branches: bool  # whether cooldown branches mean anything (a constant trunk to branch from)
    about: str


SCHEDULES: dict[str, ScheduleKind] = {
    "cosine": ScheduleKind(_cosine, False, "cosine from optimizer.lr to min_lr_ratio x lr over the horizon"),
    "wsd": ScheduleKind(_wsd, True, "constant lr, then a cooldown over the last `cooldown` of the horizon"),
}


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_ratio: float) -> float:
    """Linear warmup to ``base_lr`` over ``warmup_steps``, then cosine down to ``min_ratio * base_lr``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return cosine(base_lr, min_ratio, (step - warmup_steps) / max(1, total_steps - warmup_steps))


def cosine(base_lr: float, min_ratio: float, progress: float) -> float:
    """Cosine decay from ``base_lr`` (progress 0) to ``min_ratio * base_lr`` (progress >= 1)."""
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


class Schedule:
    """Where a run is at any step: its learning rate and image size, over the horizon (epochs) or,
    with ``schedule.by_time``, over ``train.time_limit`` seconds; and whether another epoch fits."""

    def __init__(self, config: Config, n_train: int, image_size: int):
        tc, sc = config.train, config.schedule
        self.config, self.n_train, self.full_size = config, n_train, image_size
        self.kind = SCHEDULES[sc.name]
        self.horizon = sc.horizon or tc.epochs  # epochs the schedules are sized to
        self.steps_per_epoch = math.ceil(n_train / tc.batch_size)
        self.total_steps = self.steps_per_epoch * self.horizon
        self.warmup_steps = round(sc.warmup_epochs * self.steps_per_epoch)
        self.by_time = sc.by_time
        self.patch = config.model.patch_size

    def progress(self, epoch: int, elapsed: float) -> float:
        """The fraction of the run done when ``epoch`` starts."""
        if self.by_time:
            return min(1.0, elapsed / self.config.train.time_limit)
        return (epoch - 1) / self.horizon

    def lr(self, step: int, elapsed: float = 0.0, warmup_end_s: float | None = None) -> float:
        """Linear warmup over ``warmup_epochs``, then the schedule's shape: over the remaining steps
        of the horizon, or (``by_time``) over the remaining seconds of the time limit."""
        base = self.config.optimizer.lr
        if step < self.warmup_steps:
            return base * (step + 1) / self.warmup_steps
        if self.by_time and warmup_end_s is not None:
            limit = self.config.train.time_limit
            p = (elapsed - warmup_end_s) / max(1e-9, limit - warmup_end_s)
        else:
            p = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return base * self.kind.lr(p, self.config.schedule)

    def branch_lrs(self, steps_done: int, lr_now: float) -> list[float]:
        """A cooldown branch after ``steps_done`` steps: ``cooldown`` x that many steps, the lr going
        from ``lr_now`` to its floor along the cooldown shape (the last step at the floor)."""
        sc = self.config.schedule
        n = max(1, round(sc.cooldown * steps_done))
        floor = self.config.optimizer.lr * sc.min_lr_ratio
        shape = COOLDOWN_SHAPES[sc.cooldown_shape]
        return [floor + (lr_now - floor) * shape((i + 1) / n) for i in range(n)]

    def image_size(self, progress: float) -> int:
        """Progressive resolution: ``res_start`` growing linearly to full size at ``res_until``
        (rounded down to a multiple of the patch size), then full size."""
        sc = self.config.schedule
        if sc.res_start is None or progress >= sc.res_until:
            return self.full_size
        size = sc.res_start + (self.full_size - sc.res_start) * progress / sc.res_until
        return max(sc.res_start, int(size) // self.patch * self.patch)

    def epoch_flops(self, m: ModelConfig, size: int, num_classes: int, n_val: int, n_train: int | None = None) -> float:
        """An epoch's compute: training steps (3x forward, patch dropout's fewer tokens) + validation."""
        from vitsweep.train.model import forward_flops, kept_tokens

        n_patches = (size // m.patch_size) ** 2
        train = 3 * forward_flops(m, size, num_classes, kept_tokens(n_patches, m.patch_dropout))
        n = self.n_train if n_train is None else n_train
        return n * train + n_val * forward_flops(m, self.full_size, num_classes)

    def _epoch_time(self, train_time: float, size: int, next_size: int) -> float:
        """Scale a measured epoch's training time to another image size by the FLOPs ratio."""
        from vitsweep.train.model import forward_flops

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
