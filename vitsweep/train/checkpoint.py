"""Checkpoints: the one place that knows what a run folder's files hold.

``last.pt`` (written every epoch): model, optimizer and scaler state, the config and the trainer
``state`` (epoch, history, best so far, stop reason, elapsed, ...): enough to resume exactly.
``best.pt`` (written when validation improves): the model, the config and ``meta`` (epoch,
val_acc, classes, image size, normalisation): enough to evaluate, serve or export it.
Files are written atomically and read with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vitsweep.errors import VitsweepError, first_line
from vitsweep.paths import atomic_write

if TYPE_CHECKING:
    from vitsweep.train.config import Config
    from vitsweep.train.data import Dataset
    from vitsweep.train.model import ViT

LAST, BEST = "last.pt", "best.pt"
RUN_FILES = (LAST, BEST, "config.yaml")  # what a run writes into its folder (``train(run_dir=...)``)

# Keys that may change between a killed run and its resume without changing what it computes.
RESUMABLE_CHANGES = frozenset({"train.device", "train.compile", "train.test", "train.patience", "train.min_delta",
                               "train.target_acc", "train.eval_batch_size", "train.micro_batch"})
# ... and those that may change when a run is *continued* past its end (``vitsweep promote``
# continuing a trial's trunk): the run gets longer; its first epochs are what they were.
# A constant-lr (wsd) trunk is the same whatever its horizon; a cosine one is continued as well, its
# lr following the new horizon from there.
CONTINUE_CHANGES = RESUMABLE_CHANGES | {"train.epochs", "train.time_limit", "train.checkpoint", "schedule.branches",
                                        "schedule.horizon", "schedule.by_time"}


def run_files(run_dir: str | Path) -> list[str]:
    """The files of a run that ``run_dir`` already holds: a new run there would overwrite them."""
    return [name for name in RUN_FILES if (Path(run_dir) / name).exists()]


def new_run_dir(parent: Path, name: str, stamp: str) -> Path:
    """``parent/name-stamp``, or ``...-2``, ``-3``... when that folder holds a run already (two runs
    of one config started in the same second must not share a folder)."""
    run_dir, n = parent / f"{name}-{stamp}", 1
    while run_files(run_dir):
        n += 1
        run_dir = parent / f"{name}-{stamp}-{n}"
    return run_dir


def choose_run_dir(run_dir: Path | None, resume: Path | None, checkpoint: bool, name: str, stamp: str) -> Path:
    """``vitsweep train``'s run folder: ``--resume``'s; ``--run-dir``, unless it holds a run already (a
    new run there would overwrite its checkpoints and config); else a new ``storage/runs/NAME-STAMP``.
    A folder that cannot be written (when the run writes checkpoints) is a ConfigError naming it."""
    from vitsweep.paths import RUNS_DIR, writable_folder

    if resume is not None:
        run_dir = resume
    elif run_dir is None:
        run_dir = new_run_dir(RUNS_DIR, name, stamp)
    elif checkpoint and run_files(run_dir):
        raise VitsweepError(f"--run-dir {run_dir}: already holds a run ({', '.join(run_files(run_dir))}); continue it "
                            f"with  vitsweep train --resume {run_dir}, or give a new --run-dir (or none: "
                            f"{RUNS_DIR}/NAME-TIME)")
    if checkpoint and resume is None:
        writable_folder(run_dir, f"run dir {run_dir}", "make it writable, or give another --run-dir")
    elif checkpoint:
        writable_folder(run_dir, f"--resume {run_dir}", "make it writable (the run writes its checkpoints there)")
    return run_dir


def save_atomic(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: a reader never sees half a file."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise VitsweepError(f"checkpoint {p}: no such file")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:
        raise VitsweepError(f"checkpoint {p}: cannot be read ({type(e).__name__}: {first_line(e).split('. ')[0]}); "
                            f"it is damaged (e.g. a truncated copy) or not a vitsweep checkpoint. Use the run's "
                            f"best.pt written by vitsweep train, or retrain") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise VitsweepError(f"checkpoint {p}: not a vitsweep checkpoint (no model/config inside)")
    return ckpt


def save_last(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
              config: Config, state: dict[str, Any]) -> None:
    save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                 "config": config.to_dict(), "state": state}, run_dir / LAST)


def save_best(run_dir: Path, model: ViT, config: Config, data: Dataset, epoch: int, val_acc: float) -> None:
    save_atomic({"model": model.state_dict(), "config": config.to_dict(),
                 "meta": {"epoch": epoch, "val_acc": val_acc, "classes": data.classes, "image_size": data.image_size,
                          "mean": list(data.mean), "std": list(data.std)}}, run_dir / BEST)


def restore(ckpt: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler) -> dict[str, Any]:
    """Load a ``last.pt`` into the run's objects; returns its trainer state."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    return ckpt["state"]


def trainer_state(run_dir: Path) -> dict[str, Any] | None:
    """The trainer state in a run folder's ``last.pt`` (epoch, history, ...), or None when there is
    none or it cannot be read (killed mid-copy)."""
    if not (run_dir / LAST).is_file():
        return None
    try:
        return load_checkpoint(run_dir / LAST)["state"]
    except VitsweepError:
        return None


def check_resumable(config: Config, ckpt: dict[str, Any], where: Path, allowed: frozenset[str] = RESUMABLE_CHANGES) -> None:
    """Refuse to resume (or continue) a checkpoint under a config that would compute something else."""
    from vitsweep.train.config import build_config

    saved = build_config(ckpt["config"], source=str(where)).flat()
    now = config.flat()
    changed = sorted(k for k in now if now[k] != saved.get(k) and k not in allowed)
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise VitsweepError(f"cannot resume {where}: the config differs from the checkpoint's ({diffs}); "
                            f"resume with the same config, or start a new run directory")


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[ViT, Config, dict[str, Any]]:
    """A trained model from a ``best.pt``/``last.pt`` checkpoint, with its config and metadata."""
    from vitsweep.train.config import build_config
    from vitsweep.train.model import build_model

    ckpt = load_checkpoint(path, map_location=device)
    config = build_config(ckpt["config"], source=str(path))
    meta = ckpt.get("meta") or {}
    n_classes = len(meta.get("classes") or []) or int(ckpt["model"]["head.weight"].shape[0])
    model = build_model(config.model, int(meta.get("image_size", config.data.image_size)), n_classes)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), config, meta
