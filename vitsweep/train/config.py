"""The trainer's config: typed, frozen, validated once.

A config is built from plain dicts (YAML, ``--set key=value`` overrides, a trial's sampled params)
in one place, :func:`build_config`, which reports every problem at once, naming the dotted key and
what is allowed. Everything downstream takes a :class:`Config` and never re-checks it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vitsweep.errors import ConfigError
from vitsweep.inputs import brief, brief_path, error_list, is_finite, load_yaml, read_text
from vitsweep.paths import CACHE_DIR, DATA_ROOT

# ---------------------------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class DataConfig:
    source: Literal["cifar10", "imagefolder", "synthetic"] = "cifar10"
    root: str = DATA_ROOT  # cifar10: torchvision's folder; imagefolder: has train/, test/
    download: bool = True  # cifar10 only
    image_size: int = 32  # imagefolder images are resized to this on first decode
    val_size: int = 5000  # held out of the training set, stratified, for trials and early stopping
    split_seed: int = 0  # fixes the validation split, independent of train.seed
    train_limit: int | None = None  # use at most this many training images (after the val split)
    test_limit: int | None = None
    synthetic_train: int = 600  # synthetic source: training pool size (val split included)
    synthetic_test: int = 200
    synthetic_classes: int = 10
    cache_dir: str = CACHE_DIR  # decoded uint8 tensors of imagefolder data


@dataclass(frozen=True)
class ModelConfig:
    preset: Literal["tiny", "small", "mi300x", "custom"] = "tiny"
    patch_size: int = 4
    dim: int = 192
    depth: int = 12
    heads: int = 3
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.1
    pool: Literal["cls", "mean"] = "cls"
    patch_dropout: float = 0.0  # training only: fraction of each image's patch tokens dropped (0 = off)


# Presets fill the model fields that the user did not set explicitly.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"dim": 192, "depth": 12, "heads": 3, "mlp_ratio": 4.0},
    "small": {"dim": 384, "depth": 12, "heads": 6, "mlp_ratio": 4.0},
    # The published "84% in 13 minutes" MI300X run: dim 384, depth 8, 6 heads, patch 4.
    "mi300x": {"dim": 384, "depth": 8, "heads": 6, "mlp_ratio": 4.0, "patch_size": 4},
    "custom": {},
}

# Default betas in each optimizer's own convention (see README, "Adan's betas").
DEFAULT_BETAS: dict[str, tuple[float, ...]] = {
    "adan": (0.02, 0.08, 0.01),  # adan-pytorch / the paper: m = (1-b1) m + b1 g
    "adamw": (0.9, 0.999),
    "adam": (0.9, 0.999),
}


@dataclass(frozen=True)
class OptimizerConfig:
    name: Literal["adan", "adamw", "adam"] = "adamw"
    lr: float = 1e-3
    # Adan: three betas in adan-pytorch's (paper) convention, e.g. (0.02, 0.08, 0.01);
    # Adam/AdamW: two, e.g. (0.9, 0.999). Left out: the optimizer's default.
    betas: tuple[float, ...] | None = None
    eps: float = 1e-8
    weight_decay: float = 0.05  # never applied to norms, biases, position embedding, cls token
    grad_clip: float | None = 1.0  # max global grad norm; null disables


@dataclass(frozen=True)
class ScheduleConfig:
    warmup_epochs: float = 1.0  # linear warmup, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.01
    # The run's length that the schedules follow: train.epochs, or train.time_limit seconds of wall
    # time (the lr and resolution schedules then stretch to the time budget; warmup is the same
    # fraction of the run as warmup_epochs / epochs).
    by_time: bool = False
    # Progressive resolution: train at res_start pixels first, growing linearly to the full image
    # size by res_until (a fraction of the run); the rest at full size. null = off.
    res_start: int | None = None
    res_until: float = 0.5


@dataclass(frozen=True)
class AugmentConfig:
    policy: Literal["none", "basic", "extended", "randaugment", "autoaugment"] = "basic"
    crop_padding: int = 4  # random crop with this zero padding (all policies but none)
    flip: bool = True  # random horizontal flip (all policies but none)
    jitter: float = 0.4  # extended: brightness/contrast/saturation strength
    rotation: float = 15.0  # extended: max degrees
    erasing: float = 0.25  # extended: probability of random erasing per image
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    mixup: float = 0.0  # Beta(alpha, alpha); 0 disables
    cutmix: float = 0.0
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 500
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "fp32"
    # torch.compile the training forward: true, false, or auto (compile after the first epoch when
    # the measured epoch time says the rest of the run repays the compile time; see README).
    compile: Literal["auto", True, False] = "auto"
    micro_batch: int | None = None  # compute each batch in chunks of this many images, gradients
    # accumulated (same result up to float rounding); null = auto (128 on a CPU, the whole batch
    # elsewhere)
    time_limit: float | None = None  # seconds: stop at the first epoch end past it (or at one whose
    # next epoch would end past it); stop reason "time_limit"
    patience: int | None = None  # early stopping: epochs without a min_delta val-acc gain
    min_delta: float = 0.0
    target_acc: float | None = None  # stop as soon as val accuracy reaches this (0..1)
    test: bool = True  # evaluate the best checkpoint on the test set at the end
    checkpoint: bool = True  # write last.pt / best.pt into the run directory


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists): YAML/JSON-safe and `build_config`-able."""
        return _plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """``{"optimizer.lr": 0.001, ...}``: every leaf, dotted. Betas stay a tuple."""
        return flatten(self.to_dict())

    def replace(self, **dotted: Any) -> Config:
        """A new validated config with dotted keys replaced: ``cfg.replace(**{"train.epochs": 3})``.

        Changing ``optimizer.name`` without giving ``optimizer.betas`` takes the new optimizer's
        default betas (Adan has three, Adam/AdamW two)."""
        if "optimizer.name" in dotted and "optimizer.betas" not in dotted:
            dotted = {**dotted, "optimizer.betas": None}
        return build_config(self.to_dict(), dotted)


_SECTION_TYPES = {
    "data": DataConfig,
    "model": ModelConfig,
    "optimizer": OptimizerConfig,
    "schedule": ScheduleConfig,
    "augment": AugmentConfig,
    "train": TrainConfig,
}


def config_keys() -> list[str]:
    """Every dotted key a config has, e.g. ``optimizer.lr``."""
    return [f"{s}.{f.name}" for s, cls in _SECTION_TYPES.items() for f in dataclasses.fields(cls)]


# ---------------------------------------------------------------------------------------------
# Building


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a trainer config YAML and apply ``key=value`` overrides."""
    raw = read_yaml(path)
    return build_config(raw, parse_overrides(overrides or []), source=str(path))


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    text = read_text(p)  # refused above vitsweep.inputs.MAX_BYTES, before parsing
    name = brief_path(p)
    try:
        raw = load_yaml(text, name) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a mapping of sections (data, model, ...), got {type(raw).__name__}")
    return raw


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["model.patch_size=8", "optimizer.betas=[0.9,0.99]"]`` -> dotted dict (YAML-typed values)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {brief(item)}: expected key=value, e.g. --set optimizer.lr=0.001")
        try:
            out[key.strip()] = load_yaml(value, f"--set {brief(key.strip(), plain=True)}") if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def build_config(raw: dict[str, Any], overrides: dict[str, Any] | None = None, source: str = "config") -> Config:
    """Validate a nested dict plus dotted overrides into a :class:`Config`; all errors at once."""
    raw = copy.deepcopy(raw or {})
    errors: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections")
    for key in raw:
        if key not in _SECTION_TYPES:
            errors.append(_unknown(str(key), list(_SECTION_TYPES)))
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        if section not in _SECTION_TYPES or not name:
            errors.append(_unknown(key, config_keys()))
            continue
        sec = raw.setdefault(section, {})
        if not isinstance(sec, dict):
            errors.append(f"{section}: expected a mapping, got {brief(sec)}")
            continue
        sec[name] = value
    if errors:
        raise ConfigError(_format(source, errors))

    sections: dict[str, Any] = {}
    for section, cls in _SECTION_TYPES.items():
        given = raw.get(section) or {}
        if not isinstance(given, dict):
            errors.append(f"{section}: expected a mapping, got {brief(given)}")
            continue
        given = dict(given)
        if section == "model":
            given = _apply_preset(given, errors)
        if section == "optimizer" and given.get("betas") is None:
            name = given.get("name", OptimizerConfig.name)
            if name in DEFAULT_BETAS:
                given["betas"] = DEFAULT_BETAS[name]
        sections[section] = _build_section(section, cls, given, errors)
    if len(sections) == len(_SECTION_TYPES):
        cfg = Config(**sections)  # fields that failed to parse hold their defaults here
        bad_keys = {msg.split(" ", 1)[0] for msg in errors}
        errors.extend(msg for msg in _check(cfg) if msg.split(" ", 1)[0] not in bad_keys)
        if not errors:
            return cfg
    raise ConfigError(_format(source, errors))


def _apply_preset(given: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    preset = given.get("preset", ModelConfig.preset)
    if preset not in MODEL_PRESETS:
        return given  # reported as a bad literal by _build_section
    return {**MODEL_PRESETS[preset], **given}


def _build_section(section: str, cls: type, given: dict[str, Any], errors: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in given.items():
        if key not in names:
            errors.append(_unknown(f"{section}.{key}", [f"{section}.{n}" for n in names]))
            continue
        try:
            kwargs[key] = _coerce(value, hints[key])
        except ValueError as e:
            errors.append(f"{section}.{key} = {brief(value)}: {e}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - guarded by the name check above
        errors.append(f"{section}: {e}")
        return cls()


def _coerce(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0])
    if origin is Literal:
        if value not in args:
            raise ValueError(f"must be one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in re.split(r"[,\s]+", value.strip("()[] ")) if v]
        if not isinstance(value, (list, tuple)):
            raise ValueError("must be a list of numbers, e.g. [0.9, 0.999]")
        return tuple(_coerce(v, args[0]) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError("must be true or false")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError("must be an integer")
        if abs(value) >= 2**63:
            raise ValueError("must be an integer between -2**63 and 2**63 - 1")
        return value
    if hint is float:
        if isinstance(value, bool):
            raise ValueError("must be a number")
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ValueError("must be a number") from None
        if not is_finite(value):
            raise ValueError("must be a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return value
    raise ValueError(f"unsupported type {hint}")  # pragma: no cover


# One function on purpose: a flat list of independent range checks, one line each, is easier to
# scan and extend than the same checks spread over helpers.
def _check(cfg: Config) -> list[str]:
    """Cross-field and range checks; each message names the key and what is allowed."""
    e: list[str] = []
    d, m, o, s, a, t = cfg.data, cfg.model, cfg.optimizer, cfg.schedule, cfg.augment, cfg.train

    def need(ok: bool, msg: str) -> None:
        if not ok:
            e.append(msg)

    need(d.image_size >= 1, f"data.image_size = {d.image_size}: must be >= 1")
    need(d.val_size >= 1, f"data.val_size = {d.val_size}: must be >= 1 (trials and early stopping need it)")
    need(d.train_limit is None or d.train_limit >= 1, f"data.train_limit = {d.train_limit}: must be >= 1 or null")
    need(d.test_limit is None or d.test_limit >= 1, f"data.test_limit = {d.test_limit}: must be >= 1 or null")
    need(d.synthetic_classes >= 2, f"data.synthetic_classes = {d.synthetic_classes}: must be >= 2")
    need(d.synthetic_train > d.val_size or d.source != "synthetic",
         f"data.synthetic_train = {d.synthetic_train}: must exceed data.val_size ({d.val_size})")
    need(d.synthetic_test >= 1, f"data.synthetic_test = {d.synthetic_test}: must be >= 1")

    if m.patch_size < 1 or d.image_size % m.patch_size:
        divisors = [p for p in range(1, d.image_size + 1) if d.image_size % p == 0]
        e.append(f"model.patch_size = {m.patch_size}: must divide data.image_size ({d.image_size}); "
                 f"allowed: {', '.join(map(str, divisors))}")
    need(m.dim >= 1, f"model.dim = {m.dim}: must be >= 1")
    need(m.depth >= 1, f"model.depth = {m.depth}: must be >= 1")
    if m.heads < 1 or m.dim % m.heads:
        divisors = [h for h in range(1, min(m.dim, 64) + 1) if m.dim % h == 0]
        e.append(f"model.heads = {m.heads}: must divide model.dim ({m.dim}); allowed: {', '.join(map(str, divisors))}")
    need(m.mlp_ratio > 0, f"model.mlp_ratio = {m.mlp_ratio}: must be > 0")
    for k in ("dropout", "attn_dropout", "drop_path", "patch_dropout"):
        v = getattr(m, k)
        need(0 <= v < 1, f"model.{k} = {v}: must be in [0, 1)")

    need(o.lr > 0, f"optimizer.lr = {o.lr}: must be > 0")
    need(o.eps > 0, f"optimizer.eps = {o.eps}: must be > 0")
    need(o.weight_decay >= 0, f"optimizer.weight_decay = {o.weight_decay}: must be >= 0")
    need(o.grad_clip is None or o.grad_clip > 0, f"optimizer.grad_clip = {o.grad_clip}: must be > 0 or null")
    n_betas = len(DEFAULT_BETAS[o.name])
    if o.betas is None or len(o.betas) != n_betas:
        e.append(f"optimizer.betas = {brief(list(o.betas or []))}: {o.name} takes {n_betas} betas, "
                 f"e.g. {list(DEFAULT_BETAS[o.name])}")
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
    return e


# ---------------------------------------------------------------------------------------------
# Helpers


def _unknown(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    section = key.partition(".")[0]
    same = [k for k in allowed if k.startswith(section + ".")]
    listing = ", ".join(same or allowed)
    return f"unknown key {brief(key)}{hint} (allowed: {listing})"


def _format(source: str, errors: list[str]) -> str:
    return error_list(f"invalid config ({brief_path(source)})", errors)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in nested.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = list(v) if isinstance(v, tuple) else v
    return out


def dump_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# The sweep-file parser (vitsweep.sweep.spec) validates its sections and searched values the same way.
SECTION_TYPES = _SECTION_TYPES
coerce = _coerce
unknown_key = _unknown
