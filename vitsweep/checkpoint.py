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
        detail = (str(e).strip().splitlines() or ["no detail"])[0].split(". ")[0][:200]
        raise VitsweepError(f"checkpoint {p}: cannot be read ({type(e).__name__}: {detail}); it is damaged "
                            f"(e.g. a truncated copy) or not a vitsweep checkpoint. Use the run's best.pt "
                            f"written by vitsweep train, or retrain") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise VitsweepError(f"checkpoint {p}: not a vitsweep checkpoint (no model/config inside)")
    return ckpt


# ---------------------------------------------------------------------------------------------
# Checkpoint references: a path, or an MLflow run id whose run logged its best checkpoint.

# The convention every command follows: a run that has a model logs its best checkpoint as this
# MLflow artifact (``client.log_artifact(run_id, ".../best.pt", artifact_path="checkpoint")``).
CHECKPOINT_ARTIFACT = "checkpoint/best.pt"


def log_checkpoint(client: Any, run_id: str, path: str | Path) -> None:
    """Log ``path`` as the run's ``checkpoint/best.pt`` artifact (the file is copied under that name)."""
    import shutil
    import tempfile

    p = Path(path)
    if p.name == "best.pt":
        client.log_artifact(run_id, str(p), artifact_path="checkpoint")
        return
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(p, Path(tmp) / "best.pt")
        client.log_artifact(run_id, str(Path(tmp) / "best.pt"), artifact_path="checkpoint")


def _looks_like_path(ref: str) -> bool:
    return os.sep in ref or "/" in ref or ref.endswith((".pt", ".pth")) or ref.startswith(".")


def resolve_checkpoint(ref: str | Path, tracking_uri: str | None = None, dst: str | Path | None = None) -> Path:
    """A local checkpoint file for ``ref``: an existing path as is, or an MLflow run id
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
    run_id = text[len("runs:/"):].split("/")[0] if text.startswith("runs:/") else text
    if not text.startswith("runs:/") and (isinstance(ref, Path) or _looks_like_path(text) or not run_id.replace("-", "").isalnum()):
        raise VitsweepError(f"checkpoint {text}: no such file. Give the path of a best.pt (e.g. "
                            f"storage/runs/NAME/best.pt, written by vitsweep train) or an MLflow run id")
    from vitsweep.sweep import tracking_uri as resolve_tracking

    return _download_run_checkpoint(run_id, resolve_tracking(tracking_uri), dst)


def _download_run_checkpoint(run_id: str, uri: str, dst: str | Path | None) -> Path:
    hint = "pass --tracking-uri (or set MLFLOW_TRACKING_URI) to the store that holds the run, or give a checkpoint path"
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.is_file():  # do not let MLflow create an empty store as a side effect
            raise VitsweepError(f"{run_id!r} is not a checkpoint file, and there is no MLflow store at {uri} "
                                f"to look it up as a run id; {hint}")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise VitsweepError(f"{run_id!r} is not a checkpoint file, nor a run in the MLflow store {uri} "
                            f"({str(e).splitlines()[0][:200]}); {hint}") from None
    except Exception as e:  # unreachable server, bad URI
        raise VitsweepError(f"cannot look up run {run_id} in the MLflow store {uri} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else 'no detail'}); {hint}") from None
    out = Path(dst) if dst is not None else Path("storage/cache/mlflow") / run.info.run_id
    out.mkdir(parents=True, exist_ok=True)
    quiet = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ  # no progress bar for one file
    if quiet:
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        local = client.download_artifacts(run.info.run_id, CHECKPOINT_ARTIFACT, str(out))
    except Exception as e:
        raise VitsweepError(f"run {run_id} ({run.info.run_name or 'unnamed'}) in {uri} has no {CHECKPOINT_ARTIFACT} "
                            f"artifact ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'no detail'}). "
                            f"Only runs that trained a model log one (vitsweep logs it with log_checkpoint); "
                            f"pick such a run, or give a checkpoint path") from None
    finally:
        if quiet:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
    return Path(local)
