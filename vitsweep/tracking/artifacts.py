"""Files in MLflow: a run's best checkpoint (logged, and fetched back by run id) and the report page.

The convention every command follows: a run that has a model logs its best checkpoint as the
artifact ``checkpoint/best.pt`` (:data:`~vitsweep.tracking.tags.CHECKPOINT_ARTIFACT`).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from vitsweep.errors import VitsweepError, first_line, one_line
from vitsweep.paths import MLFLOW_CACHE_DIR, redact, sqlite_path, tracking_off
from vitsweep.tracking.client import quiet
from vitsweep.tracking.tags import CHECKPOINT_ARTIFACT, PARENT_ATTR, REPORT_ARTIFACT_DIR


def log_checkpoint(client: Any, run_id: str, path: str | Path) -> None:
    """Log ``path`` as the run's ``checkpoint/best.pt`` artifact (the file is copied under that name)."""
    p = Path(path)
    if p.name == "best.pt":
        client.log_artifact(run_id, str(p), artifact_path="checkpoint")
        return
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(p, Path(tmp) / "best.pt")
        client.log_artifact(run_id, str(Path(tmp) / "best.pt"), artifact_path="checkpoint")


def download_checkpoint(run_id: str, uri: str, dst: str | Path | None) -> Path:
    """The ``checkpoint/best.pt`` of MLflow run ``run_id`` in the store ``uri``, downloaded into
    ``dst`` (default: ``storage/cache/mlflow/<run_id>/``). Not a run, no store, or no such
    artifact: a VitsweepError (exit 2) saying what was looked for and where."""
    hint = "pass --tracking-uri (or set MLFLOW_TRACKING_URI) to the store that holds the run, or give a checkpoint path"
    db = sqlite_path(uri)
    if db is not None and not db.is_file():  # do not let MLflow create an empty store as a side effect
        raise VitsweepError(f"{run_id!r} is not a checkpoint file, and there is no MLflow store at {redact(uri)} "
                            f"to look it up as a run id; {hint}")
    with quiet():
        client = MlflowClient(tracking_uri=uri)
        try:
            run = client.get_run(run_id)
        except MlflowException as e:
            raise VitsweepError(f"{run_id!r} is not a checkpoint file, nor a run in the MLflow store {redact(uri)} "
                                f"({first_line(e)}); {hint}") from None
        except Exception as e:  # unreachable server, bad URI
            raise VitsweepError(f"cannot look up run {run_id} in the MLflow store {redact(uri)} ({type(e).__name__}: "
                                f"{first_line(e)}); {hint}") from None
        out = Path(dst) if dst is not None else MLFLOW_CACHE_DIR / run.info.run_id
        out.mkdir(parents=True, exist_ok=True)
        try:
            return Path(client.download_artifacts(run.info.run_id, CHECKPOINT_ARTIFACT, str(out)))
        except Exception as e:
            raise VitsweepError(f"run {run_id} ({run.info.run_name or 'unnamed'}) in {redact(uri)} has no {CHECKPOINT_ARTIFACT} "
                                f"artifact ({type(e).__name__}: {first_line(e)}). "
                                f"A sweep's trial runs keep no checkpoint (unless the sweep file sets "
                                f"trials.keep_checkpoints: true); promoted runs do: run vitsweep promote "
                                f"and evaluate one of its runs, or give a checkpoint path "
                                f"(e.g. storage/runs/NAME/best.pt)") from None


def log_report(path: Path, study_name: str, study_attrs: dict[str, Any], uri: str) -> tuple[str | None, str | None]:
    """Log the report page to the sweep's parent run (named in the study's user attrs):
    (run id, None), or (None, why not). An unreachable store fails fast; tracking is a bonus."""
    if tracking_off(uri):
        return None, None
    parent = study_attrs.get(PARENT_ATTR)
    if not parent:
        return None, f"study {study_name} has no MLflow parent run (user attr {PARENT_ATTR}); report not logged"
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        return None, f"no MLflow store at {redact(uri)} ({db} does not exist); report not logged to MLflow"
    try:
        with quiet(fail_fast=True):
            client = MlflowClient(tracking_uri=uri)
            client.get_run(parent)
            client.log_artifact(parent, str(path), artifact_path=REPORT_ARTIFACT_DIR)
        return parent, None
    except Exception as e:  # noqa: BLE001 - the file is written; tracking is a bonus
        msg = one_line(e, 300)
        return None, f"could not log the report to MLflow run {parent} at {redact(uri)}: {type(e).__name__}: {msg}"
