"""Checkpoint files: written atomically, read with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vitsweep.errors import VitsweepError
from vitsweep.paths import atomic_write


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
        detail = (str(e).strip().splitlines() or ["no detail"])[0].split(". ")[0][:200]
        raise VitsweepError(f"checkpoint {p}: cannot be read ({type(e).__name__}: {detail}); it is damaged "
                            f"(e.g. a truncated copy) or not a vitsweep checkpoint. Use the run's best.pt "
                            f"written by vitsweep train, or retrain") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise VitsweepError(f"checkpoint {p}: not a vitsweep checkpoint (no model/config inside)")
    return ckpt
