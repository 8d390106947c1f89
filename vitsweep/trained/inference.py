"""A trained model from a checkpoint reference (path or MLflow run id), ready for inference:
``resolve_checkpoint`` finds the file, ``load_ref`` rebuilds the model.

Shared by ``evaluate``, ``bench`` and ``export``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitsweep.train.config import Config
from vitsweep.errors import VitsweepError, first_line
from vitsweep.train.model import ViT
from vitsweep.paths import tracking_uri as resolve_tracking
from vitsweep.train.checkpoint import load_model
from vitsweep.tracking.tags import MODELS_SCHEME


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


def looks_like_path(ref: str) -> bool:
    """Whether a model reference reads as a file path (else it may be an MLflow run id)."""
    if ref.startswith(MODELS_SCHEME):
        return False
    return os.sep in ref or "/" in ref or ref.endswith((".pt", ".pth")) or ref.startswith(".")


def resolve_checkpoint(ref: str | Path, tracking_uri: str | None = None, dst: str | Path | None = None) -> Path:
    """A local checkpoint file for ``ref``: an existing path as is, a registered model version
    (``models:/vitsweep-<study>@champion`` or ``models:/NAME/VERSION``: its run's checkpoint), or an MLflow run id
    (``abc123...`` or ``runs:/abc123...``) whose ``checkpoint/best.pt`` artifact is downloaded into
    ``dst`` (default: ``storage/cache/mlflow/<run_id>/``, giving ``.../<run_id>/best.pt``). Anything else is a VitsweepError (exit 2)
    that says what was looked for and where. The file is not opened here; ``load_checkpoint`` checks it.
    """
    text = str(ref).strip()
    if Path(text).exists():
        p = Path(text)
        if p.is_dir():
            for name in ("best.pt", "last.pt"):
                if (p / name).is_file():
                    return p / name
            raise VitsweepError(f"{p} is a folder with no best.pt or last.pt in it; give a checkpoint file "
                                f"(e.g. storage/runs/NAME/best.pt) or an MLflow run id")
        return p
    if text.startswith(MODELS_SCHEME):  # models:/vitsweep-<study>@champion: the run of that version
        from vitsweep.tracking.artifacts import download_checkpoint, model_run
        from vitsweep.tracking.client import check_tracking_server

        uri = resolve_tracking(tracking_uri)
        check_tracking_server(uri)
        return download_checkpoint(model_run(text, uri), uri, dst)
    run_id = text[len("runs:/"):].split("/")[0] if text.startswith("runs:/") else text
    if not text.startswith("runs:/") and (isinstance(ref, Path) or looks_like_path(text) or not run_id.replace("-", "").isalnum()):
        raise VitsweepError(f"checkpoint {text}: no such file. Give the path of a best.pt (e.g. "
                            f"storage/runs/NAME/best.pt, written by vitsweep train) or an MLflow run id")
    # lazy: MLflow takes about a second to import, and only a run id needs it
    from vitsweep.tracking.artifacts import download_checkpoint
    from vitsweep.tracking.client import check_tracking_server

    uri = resolve_tracking(tracking_uri)
    check_tracking_server(uri)
    return download_checkpoint(run_id, uri, dst)


def ref_name(path: Path) -> str:
    """``storage/runs/foo/best.pt`` -> ``foo``; ``.../last.pt`` -> ``foo-last``; ``x/model.pt`` -> ``model``."""
    if path.name in ("best.pt", "last.pt"):
        parent = path.resolve().parent.name or "checkpoint"
        return parent if path.name == "best.pt" else f"{parent}-last"
    return path.stem


def _run_label(path: Path, tracking_uri: str | None) -> str:
    """Outputs of a run fetched from MLflow are named after the run (``smoke-trial0-seed0``), not its id:
    the download is ``storage/cache/mlflow/<run_id>/best.pt``."""
    from vitsweep.paths import MLFLOW_CACHE_DIR
    from vitsweep.tracking.artifacts import run_name

    try:
        run_id = path.resolve().relative_to(MLFLOW_CACHE_DIR.resolve()).parts[0]
    except (ValueError, IndexError):
        return ref_name(path)
    name = run_name(run_id, resolve_tracking(tracking_uri))
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) if name else run_id


def load_ref(ref: str | Path, device: torch.device | str = "cpu", tracking_uri: str | None = None) -> Loaded:
    path = resolve_checkpoint(ref, tracking_uri)
    try:
        model, config, meta = load_model(path, device)
    except VitsweepError:
        raise
    except Exception as e:  # a dict that has model/config but does not fit the ViT it describes
        raise VitsweepError(f"checkpoint {path} (from {ref}): cannot rebuild the model from it "
                            f"({type(e).__name__}: {first_line(e, 300)})") from None
    is_path = Path(str(ref)).exists()
    name = ref_name(path) if is_path else _run_label(path, tracking_uri)
    return Loaded(model=model, config=config, meta=meta, path=path, name=name, ref=str(ref))
