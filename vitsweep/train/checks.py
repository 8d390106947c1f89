"""The trainer config's range and cross-field checks: each message names the key and what is
allowed. Flat lists of independent one-line checks, a function per group of sections, so that a
check is easy to find and to add."""

from __future__ import annotations

import os
import re
from typing import Callable

from vitsweep.errors import ConfigError
from vitsweep.inputs import brief
from vitsweep.train.config import Config
from vitsweep.train.optimizers import OPTIMIZERS
from vitsweep.train.schedules import SCHEDULES

Need = Callable[[bool, str], None]

MAX_IMAGE_SIZE = 4096  # pixels a side: a ViT's tokens grow with its square (CIFAR-10: 32, ImageNet: 224)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_threads(threads: int | None) -> int | None:
    """``--threads N``: None (torch's choice) or 1 to the usable cores, else a ConfigError."""
    cores = usable_cores()
    if threads is not None and not 1 <= threads <= cores:
        raise ConfigError(f"--threads {threads}: must be between 1 and this machine's {cores} CPU core(s)")
    return threads


def check_config(cfg: Config) -> list[str]:
    """Every problem of ``cfg`` that its types alone do not rule out."""
    errors: list[str] = []

    def need(ok: bool, msg: str) -> None:
        if not ok:
            errors.append(msg)

    _data_model(cfg, need, errors)
    _optimizer_schedule(cfg, need, errors)
    _augment_train(cfg, need)
    return errors


def _data_model(cfg: Config, need: Need, e: list[str]) -> None:
    d, m = cfg.data, cfg.model
    need(1 <= d.image_size <= MAX_IMAGE_SIZE,
         f"data.image_size = {d.image_size}: must be in [1, {MAX_IMAGE_SIZE}] (pixels a side)")
    need(d.val_size >= 1, f"data.val_size = {d.val_size}: must be >= 1 (trials and early stopping need it)")
    need(d.train_limit is None or d.train_limit >= 1, f"data.train_limit = {d.train_limit}: must be >= 1 or null")
    need(d.test_limit is None or d.test_limit >= 1, f"data.test_limit = {d.test_limit}: must be >= 1 or null")
    need(d.synthetic_classes >= 2, f"data.synthetic_classes = {d.synthetic_classes}: must be >= 2")
    need(d.synthetic_train > d.val_size or d.source != "synthetic",
         f"data.synthetic_train = {d.synthetic_train}: must exceed data.val_size ({d.val_size})")
    need(d.synthetic_test >= 1, f"data.synthetic_test = {d.synthetic_test}: must be >= 1")

    if m.patch_size < 1 or d.image_size % m.patch_size:
        # The divisors are listed for a size that passes the check above only: range(1, image_size + 1)
        # of data.image_size=1000000000001 would never end.
        divisors = [p for p in range(1, d.image_size + 1) if d.image_size % p == 0] \
            if 1 <= d.image_size <= MAX_IMAGE_SIZE else []
        e.append(f"model.patch_size = {m.patch_size}: must divide data.image_size ({d.image_size})"
                 + (f"; allowed: {', '.join(map(str, divisors))}" if divisors else ""))
    need(m.dim >= 1, f"model.dim = {m.dim}: must be >= 1")
    need(m.depth >= 1, f"model.depth = {m.depth}: must be >= 1")
    if m.heads < 1 or m.dim % m.heads:
        divisors = [h for h in range(1, min(m.dim, 64) + 1) if m.dim % h == 0]
        e.append(f"model.heads = {m.heads}: must divide model.dim ({m.dim}); allowed: {', '.join(map(str, divisors))}")
    need(m.mlp_ratio > 0, f"model.mlp_ratio = {m.mlp_ratio}: must be > 0")
    for k in ("dropout", "attn_dropout", "drop_path", "patch_dropout"):
        v = getattr(m, k)
        need(0 <= v < 1, f"model.{k} = {v}: must be in [0, 1)")


def _optimizer_schedule(cfg: Config, need: Need, e: list[str]) -> None:
    d, m, o, s, t = cfg.data, cfg.model, cfg.optimizer, cfg.schedule, cfg.train
    need(o.lr > 0, f"optimizer.lr = {o.lr}: must be > 0")
    need(o.eps > 0, f"optimizer.eps = {o.eps}: must be > 0")
    need(o.weight_decay >= 0, f"optimizer.weight_decay = {o.weight_decay}: must be >= 0")
    need(o.grad_clip is None or o.grad_clip > 0, f"optimizer.grad_clip = {o.grad_clip}: must be > 0 or null")
    defaults = OPTIMIZERS[o.name].betas
    if o.betas is None or len(o.betas) != len(defaults):
        e.append(f"optimizer.betas = {brief(list(o.betas or []))}: {o.name} takes {len(defaults)} betas, "
                 f"e.g. {list(defaults)}")
    elif not all(0 < b < 1 for b in o.betas):
        e.append(f"optimizer.betas = {brief(list(o.betas))}: each beta must be in (0, 1)")

    need(s.warmup_epochs >= 0, f"schedule.warmup_epochs = {s.warmup_epochs}: must be >= 0")
    need(not s.by_time or t.time_limit is not None,
         "schedule.by_time = true: needs train.time_limit (the seconds the schedules stretch over)")
    if s.res_start is not None:
        need(m.patch_size <= s.res_start <= d.image_size and s.res_start % m.patch_size == 0,
             f"schedule.res_start = {s.res_start}: must be a multiple of model.patch_size ({m.patch_size}) "
             f"in [{m.patch_size}, data.image_size ({d.image_size})], or null (off)")
    need(0 < s.res_until <= 1, f"schedule.res_until = {s.res_until}: must be in (0, 1] (a fraction of the run)")
    need(0 <= s.min_lr_ratio <= 1, f"schedule.min_lr_ratio = {s.min_lr_ratio}: must be in [0, 1]")
    need(s.horizon is None or s.horizon >= t.epochs,
         f"schedule.horizon = {s.horizon}: must be >= train.epochs ({t.epochs}) or null (= train.epochs)")
    need(0 < s.cooldown <= 1, f"schedule.cooldown = {s.cooldown}: must be in (0, 1] (a fraction of the run)")
    if s.branches:
        with_branches = [n for n, k in SCHEDULES.items() if k.branches]
        need(SCHEDULES[s.name].branches,
             f"schedule.branches = {brief(list(s.branches))}: cooldown branches need a constant-lr trunk: "
             f"schedule.name {' or '.join(with_branches)}, or no branches")
        need(all(1 <= b <= t.epochs for b in s.branches),
             f"schedule.branches = {brief(list(s.branches))}: each must be an epoch in [1, train.epochs ({t.epochs})]")


def _augment_train(cfg: Config, need: Need) -> None:
    d, a, t = cfg.data, cfg.augment, cfg.train
    need(0 <= a.crop_padding <= d.image_size, f"augment.crop_padding = {a.crop_padding}: must be in [0, image_size]")
    need(0 <= a.jitter < 1, f"augment.jitter = {a.jitter}: must be in [0, 1)")
    need(0 <= a.rotation <= 180, f"augment.rotation = {a.rotation}: must be in [0, 180] degrees")
    need(0 <= a.erasing <= 1, f"augment.erasing = {a.erasing}: must be in [0, 1]")
    need(a.randaugment_ops >= 1, f"augment.randaugment_ops = {a.randaugment_ops}: must be >= 1")
    need(0 <= a.randaugment_magnitude <= 30,
         f"augment.randaugment_magnitude = {a.randaugment_magnitude}: must be in [0, 30]")
    need(a.mixup >= 0, f"augment.mixup = {a.mixup}: must be >= 0 (0 disables)")
    need(a.cutmix >= 0, f"augment.cutmix = {a.cutmix}: must be >= 0 (0 disables)")
    need(0 <= a.label_smoothing < 1, f"augment.label_smoothing = {a.label_smoothing}: must be in [0, 1)")

    need(t.epochs >= 1, f"train.epochs = {t.epochs}: must be >= 1")
    need(t.batch_size >= 1, f"train.batch_size = {t.batch_size}: must be >= 1")
    need(t.eval_batch_size >= 1, f"train.eval_batch_size = {t.eval_batch_size}: must be >= 1")
    need(t.micro_batch is None or 1 <= t.micro_batch <= t.batch_size,
         f"train.micro_batch = {t.micro_batch}: must be in [1, train.batch_size ({t.batch_size})] or null (auto)")
    need(t.time_limit is None or t.time_limit > 0, f"train.time_limit = {t.time_limit}: must be > 0 seconds or null")
    need(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", t.device) is not None,
         f"train.device = {brief(t.device)}: must be one of auto, cpu, cuda, cuda:N, mps")
    need(t.patience is None or t.patience >= 1, f"train.patience = {t.patience}: must be >= 1 or null")
    need(t.min_delta >= 0, f"train.min_delta = {t.min_delta}: must be >= 0")
    need(t.target_acc is None or 0 < t.target_acc <= 1,
         f"train.target_acc = {t.target_acc}: must be in (0, 1] (a fraction, e.g. 0.8) or null")
