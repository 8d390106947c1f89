"""Shared fixtures: tiny models on small generated data, so the suite stays fast on a CPU; a free
port; processes that are always torn down. The helpers they use are in tests/helpers.py."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.helpers import FEATURES, Spawned, check_needs, free_port, required_features, tiny_config
from vitsweep.train.config import Config

# Tests send SIGINT to the processes they start, as a terminal's Ctrl-C would. A shell that runs
# pytest in the background (`pytest &` in a script) starts it with SIGINT ignored, and its children
# would inherit that and never see the signal: give the suite Python's own handler back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs(feature, available, reason): a test that needs PostgreSQL, Chromium, "
                                       "docker-compose, Slurm or grpcio (tests.helpers.needs)")
    unknown = required_features() - set(FEATURES)
    if unknown:  # a misspelt name would require nothing
        raise pytest.UsageError(f"VITSWEEP_REQUIRE names {', '.join(sorted(unknown))}: "
                                f"the features are {', '.join(FEATURES)}")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    check_needs(item)  # before any fixture: a missing PostgreSQL skips (or fails) before a database is made


@pytest.fixture
def tiny() -> Config:
    """The tiny trainer config (tests.helpers.TINY)."""
    return tiny_config()


@pytest.fixture
def port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    return free_port()


@pytest.fixture
def spawn() -> Iterator[Spawned]:
    """Start processes with ``spawn.cli(...)``, ``spawn.sweep(...)`` or ``spawn([argv], ...)``: when
    the test ends, passed or failed, each is killed with everything it started. Ask for it after
    fixtures whose teardown needs the processes gone (a database to drop): it is torn down first."""
    spawned = Spawned()
    yield spawned
    spawned.tear_down()


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
