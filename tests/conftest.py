"""Shared fixtures: tiny models on small generated data, so the suite stays fast on a CPU
(the helpers they use are in tests/helpers.py)."""

from __future__ import annotations

import pytest

from tests.helpers import tiny_config
from vitsweep.train.config import Config

@pytest.fixture
def tiny() -> Config:
    return tiny_config()


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run each test in its own folder, so storage/ (cache, runs, stores) never leaks between tests."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("VITSWEEP_STORAGE", raising=False)
