"""Shared fixtures: tiny models on small generated data, so the suite stays fast on a CPU
(the helpers they use are in tests/helpers.py)."""

from __future__ import annotations

import signal

import pytest

from tests.helpers import tiny_config
from vitsweep.train.config import Config

# Tests send SIGINT to the processes they start, as a terminal's Ctrl-C would. A shell that runs
# pytest in the background (`pytest &` in a script) starts it with SIGINT ignored, and its children
# would inherit that and never see the signal: give the suite Python's own handler back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def tiny() -> Config:
    return tiny_config()


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run each test in its own folder, so storage/ (cache, runs, stores) never leaks between tests."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("VITSWEEP_STORAGE", raising=False)
