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
    yield
    _forget_mlflow_stores()


def _forget_mlflow_stores() -> None:
    """MLflow keeps one store, and one database engine, per URI string for the process;
    sqlite:///storage/mlflow.db is relative to the cwd, so each test's is another file: drop the
    ones a test opened (if it imported MLflow), or the next test would use the last one's file."""
    import sys

    for module, name in (("mlflow.tracking._tracking_service.utils", "_tracking_store_registry"),
                         ("mlflow.tracking._model_registry.utils", "_model_registry_store_registry")):
        registry = getattr(sys.modules.get(module), name, None)
        if registry is not None:
            type(registry)._get_store_with_resolved_uri.cache_clear()
    for module in ("mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store"):
        store = getattr(sys.modules.get(module), "SqlAlchemyStore", None)
        engines = getattr(store, "_engine_map", {})
        for uri in [u for u in engines if u.startswith("sqlite:///") and not u.startswith("sqlite:////")]:
            engines.pop(uri).dispose()
