"""The trainer's config: typed, frozen, validated once.

A config is built from plain dicts (YAML, ``--set key=value`` overrides, a trial's sampled params)
in one place, :func:`build_config`, which reports every problem at once, naming the dotted key and
what is allowed. Everything downstream takes a :class:`Config` and never re-checks it.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vitsweep.errors import ConfigError
from vitsweep.inputs import brief, brief_path, load_yaml, read_text
from vitsweep.paths import CACHE_DIR, DATA_ROOT
from vitsweep.schema import build_section, format_errors, unknown_key
from vitsweep.train.optimizers import DEFAULT_BETAS, OPTIMIZERS
from vitsweep.train.schedules import COOLDOWN_SHAPES, SCHEDULES

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

@dataclass(frozen=True)
class OptimizerConfig:
    name: Literal[tuple(OPTIMIZERS)] = "adamw"  # vitsweep.train.optimizers.OPTIMIZERS
    lr: float = 1e-3
    # Adan: three betas in adan-pytorch's (paper) convention, e.g. (0.02, 0.08, 0.01);
    # Adam/AdamW: two, e.g. (0.9, 0.999). Left out: the optimizer's default.
    betas: tuple[float, ...] | None = None
    eps: float = 1e-8
    weight_decay: float = 0.05  # never applied to norms, biases, position embedding, cls token
    grad_clip: float | None = 1.0  # max global grad norm; null disables


@dataclass(frozen=True)
class ScheduleConfig:
    name: Literal[tuple(SCHEDULES)] = "cosine"  # the lr after the warmup: vitsweep.train.schedules.SCHEDULES
    warmup_epochs: float = 1.0  # linear warmup, then the schedule's decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.01
    # The run length (epochs) the lr and resolution schedules are sized to; null: train.epochs. A run
    # shorter than its horizon is the start of the longer run (a trial that promote continues).
    horizon: int | None = None
    cooldown: float = 0.2  # wsd: the final decay's share of the horizon, and a branch's of the steps so far
    cooldown_shape: Literal[tuple(COOLDOWN_SHAPES)] = "1-sqrt"
    # wsd: after each of these epochs, a copy of the model cools down and is validated
    # (cooldown_val_acc); the trunk goes on untouched
    branches: tuple[int, ...] = ()
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


SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "optimizer": OptimizerConfig,
    "schedule": ScheduleConfig,
    "augment": AugmentConfig,
    "train": TrainConfig,
}


def config_keys() -> list[str]:
    """Every dotted key a config has, e.g. ``optimizer.lr``."""
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


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
        if key not in SECTIONS:
            errors.append(unknown_key(str(key), list(SECTIONS)))
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            errors.append(unknown_key(key, config_keys()))
            continue
        sec = raw.setdefault(section, {})
        if not isinstance(sec, dict):
            errors.append(f"{section}: expected a mapping, got {brief(sec)}")
            continue
        sec[name] = value
    if errors:
        raise ConfigError(format_errors(f"invalid config ({brief_path(source)})", errors))

    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
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
        sections[section] = build_section(section, cls, given, errors) or cls()
    if len(sections) == len(SECTIONS):
        from vitsweep.train.checks import check_config

        cfg = Config(**sections)  # fields that failed to parse hold their defaults here
        bad_keys = {msg.split(" ", 1)[0] for msg in errors}
        errors.extend(msg for msg in check_config(cfg) if msg.split(" ", 1)[0] not in bad_keys)
        if not errors:
            return cfg
    raise ConfigError(format_errors(f"invalid config ({brief_path(source)})", errors))


def _apply_preset(given: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    preset = given.get("preset", ModelConfig.preset)
    if preset not in MODEL_PRESETS:
        return given  # reported as a bad literal by build_section
    return {**MODEL_PRESETS[preset], **given}


# ---------------------------------------------------------------------------------------------
# Helpers


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


