"""Checkpoint files: written atomically, read with ``weights_only=True``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from vitsweep.errors import VitsweepError


def save_atomic(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise VitsweepError(f"checkpoint {p}: no such file")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:
        raise VitsweepError(f"checkpoint {p}: cannot be read ({type(e).__name__}: {e}); is it a vitsweep checkpoint?") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise VitsweepError(f"checkpoint {p}: not a vitsweep checkpoint (no model/config inside)")
    return ckpt
