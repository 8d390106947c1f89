"""A trained model from a checkpoint reference (path or MLflow run id), ready for inference.

Shared by ``evaluate``, ``bench`` and ``export``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitsweep.checkpoint import resolve_checkpoint
from vitsweep.config import Config
from vitsweep.errors import VitsweepError
from vitsweep.model import ViT


@dataclass
class Loaded:
    model: ViT  # in eval mode, on the device asked for
    config: Config
    meta: dict[str, Any]  # epoch, val_acc, classes, image_size, mean, std (best.pt); may be partial
    path: Path  # the local checkpoint file
    name: str  # a short label for output folders: the run folder's name, or the run id
    ref: str  # what the user gave

    @property
    def classes(self) -> list[str]:
        n = int(self.model.head.out_features)
        classes = list(self.meta.get("classes") or [])
        return classes if len(classes) == n else [f"class{i}" for i in range(n)]

    @property
    def image_size(self) -> int:
        return int(self.meta.get("image_size", self.config.data.image_size))

    def info(self) -> dict[str, Any]:
        """What a consumer of an exported or benchmarked model needs to know about it."""
        return {"ref": self.ref, "checkpoint": str(self.path), "name": self.name,
                "epoch": self.meta.get("epoch"), "val_acc": self.meta.get("val_acc"),
                "classes": self.classes, "image_size": self.image_size,
                "mean": self.meta.get("mean"), "std": self.meta.get("std"),
                "num_params": sum(p.numel() for p in self.model.parameters()),
                "config": self.config.to_dict()}


def ref_name(path: Path) -> str:
    """``storage/runs/foo/best.pt`` -> ``foo``; ``.../last.pt`` -> ``foo-last``; ``x/model.pt`` -> ``model``."""
    if path.name in ("best.pt", "last.pt"):
        parent = path.resolve().parent.name or "checkpoint"
        return parent if path.name == "best.pt" else f"{parent}-last"
    return path.stem


def load_ref(ref: str | Path, device: torch.device | str = "cpu", tracking_uri: str | None = None) -> Loaded:
    from vitsweep.trainer import load_model

    path = resolve_checkpoint(ref, tracking_uri)
    try:
        model, config, meta = load_model(path, device)
    except VitsweepError:
        raise
    except Exception as e:  # a dict that has model/config but does not fit the ViT it describes
        raise VitsweepError(f"checkpoint {path} (from {ref}): cannot rebuild the model from it "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:300]})") from None
    is_path = Path(str(ref)).exists()
    name = ref_name(path) if is_path else str(ref).removeprefix("runs:/").split("/")[0]
    return Loaded(model=model, config=config, meta=meta, path=path, name=name, ref=str(ref))
