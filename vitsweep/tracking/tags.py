"""Names vitsweep writes into MLflow and Optuna to link the two: tags, kinds, attrs; and the
hardware tags every run gets.

Sweeps: one parent run per study (its id in the study's user attr ``mlflow_parent_run_id``), one
nested run per trial (tag ``mlflow.parentRunId``; its id in the trial's user attr ``mlflow_run_id``).
Promotions: a parent run per invocation (kind ``promotion``), a nested run per config and seed
(kind ``promoted``).
"""

from __future__ import annotations

import platform

import torch

from vitsweep.train.device import device_name, resolve_device

# Optuna user attrs that hold MLflow run ids
PARENT_ATTR, RUN_ATTR = "mlflow_parent_run_id", "mlflow_run_id"

# Optuna trial state -> MLflow run status
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}

TAG_KIND = "vitsweep.kind"
KIND_SWEEP, KIND_TRIAL, KIND_PARENT, KIND_RUN = "sweep", "trial", "promotion", "promoted"
TAG_STUDY, TAG_TRIAL = "optuna.study_name", "optuna.trial_number"
TAG_PARENT = "mlflow.parentRunId"
TAG_STATE, TAG_REASON = "vitsweep.trial_state", "vitsweep.reason"
TAG_SEED, TAG_SOURCE, TAG_KEY = "vitsweep.seed", "vitsweep.source_run_id", "vitsweep.promote_key"
TAG_STOP, TAG_PUBLISHED, TAG_RUN_DIR = "vitsweep.stop_reason", "vitsweep.published", "vitsweep.run_dir"
CHAMPION = "champion"  # the registered model alias of the best promoted version

# Artifacts: a run that has a model logs its best checkpoint as this file
CHECKPOINT_ARTIFACT = "checkpoint/best.pt"
REPORT_ARTIFACT_DIR = "report"


def hardware_tags(device: str | None) -> dict[str, str]:
    """torch and Python versions, host, and the device a run trains on."""
    tags = {"torch.version": torch.__version__, "python.version": platform.python_version(),
            "host": platform.node()}
    try:
        tags["hardware.device"] = device_name(resolve_device(device or "auto"))
    except Exception:  # noqa: BLE001 - a tag must never fail a trial
        tags["hardware.device"] = str(device)
    return tags
