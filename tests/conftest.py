"""Shared fixtures: tiny models on small generated data, so the suite stays fast on a CPU."""

from __future__ import annotations

from typing import Any

import pytest

from vitsweep.config import Config, build_config

TINY: dict[str, Any] = {
    "data": {"source": "synthetic", "synthetic_train": 360, "synthetic_test": 100, "val_size": 100},
    "model": {"preset": "custom", "dim": 32, "depth": 2, "heads": 2, "patch_size": 8, "drop_path": 0.0},
    "optimizer": {"name": "adamw", "lr": 3e-3},
    "schedule": {"warmup_epochs": 0.5},
    "train": {"epochs": 2, "batch_size": 64, "device": "cpu", "eval_batch_size": 200},
}


def tiny_config(**dotted: Any) -> Config:
    """A config that trains in well under a second per epoch on a CPU."""
    return build_config(TINY, dotted, source="tests")


@pytest.fixture
def tiny() -> Config:
    return tiny_config()


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run each test in its own folder, so storage/ (cache, runs, stores) never leaks between tests."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("VITSWEEP_STORAGE", raising=False)
