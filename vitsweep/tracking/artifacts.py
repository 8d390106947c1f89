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
from vitsweep.tracking.client import probe_store, quiet
from vitsweep.tracking.tags import CHAMPION, CHECKPOINT_ARTIFACT, MODEL_PREFIX, MODELS_SCHEME, PARENT_ATTR, REPORT_ARTIFACT_DIR


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
    probe_store(uri)
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


def model_ref(ref: str | None, champion: bool, study: str | None, tracking_uri: str | None) -> str:
    """The model an evaluate/bench/export works on: RUN_ID_OR_CHECKPOINT, or --champion's."""
    if champion and ref:
        raise VitsweepError(f"give {ref} or --champion, not both")
    if study and not champion:
        raise VitsweepError("--study goes with --champion (or give models:/vitsweep-STUDY@champion)")
    if not champion:
        if not ref:
            raise VitsweepError("give a model: a checkpoint (storage/runs/NAME/best.pt), an MLflow run id, "
                                "models:/vitsweep-STUDY@champion, or --champion")
        return ref
    from vitsweep.paths import tracking_uri as resolve_tracking

    return champion_ref(study, resolve_tracking(tracking_uri))


def champion_ref(study: str | None, uri: str) -> str:
    """``--champion``: ``models:/vitsweep-<study>@champion``; without ``study``, the registered model
    whose champion was crowned last."""
    if study:
        return f"{MODELS_SCHEME}{MODEL_PREFIX}{study}@{CHAMPION}"
    _store_exists(uri, "--champion")
    with quiet():
        try:
            models = MlflowClient(tracking_uri=uri).search_registered_models(f"name LIKE '{MODEL_PREFIX}%'")
        except Exception as e:  # noqa: BLE001 - unreachable server, bad URI
            raise VitsweepError(f"--champion: cannot list the registered models in {redact(uri)} "
                                f"({type(e).__name__}: {first_line(e)})") from None
    crowned = [m for m in models if CHAMPION in (m.aliases or {})]
    if not crowned:
        raise VitsweepError(f"--champion: no registered model in {redact(uri)} has the alias '{CHAMPION}' yet; run "
                            f"vitsweep promote --top 3 --epochs N first (it crowns the best promoted run)")
    latest = max(crowned, key=lambda m: m.last_updated_timestamp or 0)
    return f"{MODELS_SCHEME}{latest.name}@{CHAMPION}"


def _store_exists(uri: str, what: str) -> None:
    db = sqlite_path(uri)
    if db is not None and not db.is_file():  # do not let MLflow create an empty store as a side effect
        raise VitsweepError(f"{what}: there is no MLflow store at {redact(uri)} to look it up in; pass --tracking-uri "
                            f"(or set MLFLOW_TRACKING_URI) to the store vitsweep promote logged to")
    probe_store(uri)  # a database server that is down: exit 2 in seconds, not minutes of MLflow's retries


def model_run(ref: str, uri: str) -> str:
    """The run id behind a registered model reference ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    body = ref[len(MODELS_SCHEME):].strip("/")
    name, alias, version = body, None, None
    if "@" in body:
        name, alias = body.split("@", 1)
    elif "/" in body:
        name, version = body.rsplit("/", 1)
    if not name or not (alias or version):
        raise VitsweepError(f"{ref}: give models:/NAME@ALIAS or models:/NAME/VERSION, e.g. "
                            f"models:/{MODEL_PREFIX}STUDY@{CHAMPION}")
    _store_exists(uri, ref)
    with quiet():
        client = MlflowClient(tracking_uri=uri)
        try:
            mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
        except MlflowException as e:
            try:
                known = [m.name for m in client.search_registered_models()]
            except Exception:  # noqa: BLE001
                known = []
            raise VitsweepError(f"{ref}: not found in the MLflow store {redact(uri)} ({first_line(e)}); registered "
                                f"models: {', '.join(known) or 'none'} (vitsweep promote registers "
                                f"{MODEL_PREFIX}<study> and gives its best version the alias '{CHAMPION}')") from None
        except Exception as e:  # noqa: BLE001 - unreachable server, bad URI
            raise VitsweepError(f"cannot look up {ref} in the MLflow store {redact(uri)} ({type(e).__name__}: "
                                f"{first_line(e)})") from None
    if not mv.run_id:
        raise VitsweepError(f"{ref} (version {mv.version}) has no MLflow run behind it; give a checkpoint path")
    return mv.run_id


def run_name(run_id: str, uri: str) -> str | None:
    """The run's name (``smoke-trial0-seed0``), for naming outputs; None when it cannot be read."""
    try:
        with quiet():
            return MlflowClient(tracking_uri=uri).get_run(run_id).info.run_name or None
    except Exception:  # noqa: BLE001 - a name is a courtesy
        return None


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
        probe_store(uri)
        with quiet(fail_fast=True):
            client = MlflowClient(tracking_uri=uri)
            client.get_run(parent)
            client.log_artifact(parent, str(path), artifact_path=REPORT_ARTIFACT_DIR)
        return parent, None
    except Exception as e:  # noqa: BLE001 - the file is written; tracking is a bonus
        msg = one_line(e, 300)
        return None, f"could not log the report to MLflow run {parent} at {redact(uri)}: {type(e).__name__}: {msg}"
