"""Opening MLflow: a client on a store, the experiment, a reachability check for a tracking
server, and :func:`quiet`, the one way vitsweep quiets MLflow.

:func:`quiet` is scoped: it raises the MLflow/alembic loggers to WARNING ("Creating initial MLflow
database tables..."), turns the artifact progress bar off, and, with ``fail_fast``, makes HTTP
requests fail at once instead of retrying for minutes; on exit everything is as it was.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from vitsweep.errors import VitsweepError
from vitsweep.paths import (FileLock, check_reachable, is_database_server, is_http, missing_driver, prepare_sqlite,
                            redact, sqlite_path, tracking_off)
from vitsweep.tracking.tags import (BEST_PREFIX, BOOKKEEPING_PREFIX, EPOCHS_METRIC, KIND_RUN, KIND_TRIAL,
                                    MODEL_PREFIX, PERCENT_SUFFIX, TAG_KIND, TAG_REASON, TAG_SEED, TAG_STATE, TAG_STOP,
                                    TAG_STUDY, TAG_TRIAL)

_LOGGERS = ("mlflow", "alembic", "mlflow.pytorch")
EXPERIMENT_KIND, ML_EXPERIMENT = "mlflow.experimentKind", "custom_model_development"
# The MLflow UI (3.15+) keeps an experiment's saved runs-table views in experiment tags
# "mlflow.sharedViewState.<id>" and opens one with "?viewStateShareKey=<id>"; vitsweep adds its own.
VIEW_ID, VIEW_PARAM = "vitsweep", "viewStateShareKey"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"
PROMOTED_VIEW_ID = "vitsweep-promoted"  # the promoted runs, in a view of their own
PROMOTED_VIEW_TAG = f"mlflow.sharedViewState.{PROMOTED_VIEW_ID}"


def runs_url(server: str, experiment_id: str, view: bool = False) -> str:
    """The MLflow UI page that lists an experiment's training runs; with ``view``, in the columns
    of vitsweep's saved view (see :func:`runs_view`)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs" + (f"?{VIEW_PARAM}={VIEW_ID}" if view else "")


def trial_metric_key(metric: str) -> str:
    """The metric a trial's run holds its value in, as the saved view shows it: ``best_val_acc_pct``
    (percent) for an accuracy, else ``best_<metric>``."""
    return f"{BEST_PREFIX}{metric}" + (PERCENT_SUFFIX if "acc" in metric else "")


def runs_view(metric: str, params: list[str], expanded: list[str] | None = None, maximize: bool = True) -> str:
    """The experiment tag value of vitsweep's saved runs-table view ("vitsweep: trials" in the UI's
    Views menu): the sweep's trial runs only (no parent, no promoted run), best first by the trial's
    value (``best_val_acc_pct``: in percent, the value Optuna ranks by, not the last epoch's), with
    the trial state (COMPLETE / PRUNED / FAIL, so a pruned trial does not read as a failure), the
    reason, the epochs run and the searched params as columns. (``expanded``: kept for callers; the
    view lists the trials flat.)"""
    col = lambda kind, key: f"{kind}.`{key}`"  # noqa: E731 - the UI's column ids
    value = trial_metric_key(metric)
    state = {"selectedColumns": [col("metrics", value), col("tags", TAG_STATE), col("tags", TAG_REASON),
                                 col("metrics", BOOKKEEPING_PREFIX + EPOCHS_METRIC),
                                 *(col("params", p) for p in dict.fromkeys(params))],
             "orderByKey": col("metrics", value), "orderByAsc": not maximize,
             "searchFilter": f"tags.`{TAG_KIND}` = '{KIND_TRIAL}'",
             "runsExpanded": {run_id: True for run_id in expanded or []}}
    return _view("vitsweep: trials", state)


def promoted_view() -> str:
    """The saved view of the promoted runs ("vitsweep: promoted"): full-length retrainings, best
    validation accuracy first (percent), with test accuracy, the trial and seed."""
    col = lambda kind, key: f"{kind}.`{key}`"  # noqa: E731
    state = {"selectedColumns": [col("metrics", f"{BEST_PREFIX}val_acc{PERCENT_SUFFIX}"), col("metrics", f"test_acc{PERCENT_SUFFIX}"),
                                 col("tags", TAG_TRIAL), col("tags", TAG_SEED), col("tags", TAG_STOP)],
             "orderByKey": col("metrics", f"{BEST_PREFIX}val_acc{PERCENT_SUFFIX}"), "orderByAsc": False,
             "searchFilter": f"tags.`{TAG_KIND}` = '{KIND_RUN}'", "runsExpanded": {}}
    return _view("vitsweep: promoted", state)


def _view(name: str, state: dict) -> str:
    now = int(time.time() * 1000)
    return json.dumps({"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)})


@contextlib.contextmanager
def quiet(fail_fast: bool = False, registry: bool = False) -> Iterator[None]:
    """MLflow without its chatter for the block (see the module doc); restores what it changed.
    ``registry``: also its printed registry notes ("Successfully registered model ...", "Created
    version ..."), which bypass the loggers; vitsweep says what it registered itself."""
    from mlflow.utils import logging_utils

    stream = logging_utils.MLFLOW_LOGGING_STREAM
    was_enabled = stream.enabled
    if registry:
        stream.enabled = False
    env = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    if fail_fast:
        env.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    env = {k: v for k, v in env.items() if k not in os.environ}  # the user's own settings win
    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    for name in _LOGGERS:  # mlflow.pytorch: its pickle caution (we load our own models); the others: set-up
        logging.getLogger(name).setLevel(logging.ERROR if name == "mlflow.pytorch" else logging.WARNING)
    os.environ.update(env)
    try:
        yield
    finally:
        for k in env:
            os.environ.pop(k, None)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if registry:
            stream.enabled = was_enabled


@contextlib.contextmanager
def _schema_lock(uri: str) -> Iterator[None]:
    """Processes that open a new SQLite store together take turns: MLflow creates and migrates its
    tables on first use, and two doing it at once fail ("migration expected to match one row")."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    with FileLock(f"{path}.__mlflow_schema__.lock"):
        yield


def probe_store(uri: str) -> None:
    """A database server behind ``uri`` (PostgreSQL, MySQL) answers within seconds, or a
    VitsweepError (exit 2): MLflow itself retries a connection for minutes, then raises a traceback."""
    if is_database_server(uri):
        check_reachable(uri)


def open_client(uri: str) -> MlflowClient:
    """A client on the store at ``uri`` (a SQLite file gets WAL first; a database server must answer
    at once), its tables ready."""
    probe_store(uri)
    prepare_sqlite(uri)
    with quiet(), _schema_lock(uri):
        try:
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)  # creates a new SQLite store's tables here, quietly
        except ModuleNotFoundError as e:
            raise missing_driver(uri, e) from None
        except MlflowException as e:
            if "tracking store" not in str(e) and "scheme" not in str(e):
                raise
            raise VitsweepError(f"tracking URI {redact(uri)!r}: MLflow cannot use it ({redact(e.message.strip(), uri)}); use "
                                f"sqlite:///storage/mlflow.db, http://HOST:5000, postgresql://USER@HOST/DB, "
                                f"or none to turn tracking off") from None
    return client


def experiment_id(client: MlflowClient, uri: str, name: str, artifacts: str) -> str:
    """The id of experiment ``name``, created (with its artifact location) if missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get(EXPERIMENT_KIND) is None:
            with contextlib.suppress(Exception):
                client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, ML_EXPERIMENT)
        return exp.experiment_id
    try:
        if "://" in artifacts:
            location: str | None = artifacts
        elif is_http(uri):
            location = None  # a tracking server stores artifacts where its --artifacts-destination says
        else:
            location = Path(artifacts).resolve().as_uri()
        # MLflow 3's UI opens an experiment on GenAI traces unless told it holds training runs
        return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND: ML_EXPERIMENT})
    except Exception:  # noqa: BLE001 - another worker created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Raise a :class:`VitsweepError` (exit 2) when an ``http(s)://`` tracking server does not
    answer ``GET <uri>/health``, or a database server behind the store does not answer a
    connection within seconds; other URIs (sqlite, file, none) need no server."""
    if not is_http(uri):
        probe_store(uri)
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http(s) only
            if resp.status == 200:
                return
            problem = f"HTTP {resp.status}"
    except urllib.error.HTTPError as e:
        problem = f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        problem = str(getattr(e, "reason", e))
    raise VitsweepError(
        f"MLflow tracking server {redact(uri)} is not reachable (GET {redact(url)}: {problem}); no trial was started. "
        f"Start it (docker compose up -d mlflow, or: mlflow server --backend-store-uri "
        f"postgresql+psycopg2://USER:PASSWORD@HOST:5432/mlflow --artifacts-destination DIR "
        f"--host 0.0.0.0 --port 5000), or pass another --tracking-uri (sqlite:///storage/mlflow.db, "
        f"or none to turn tracking off)")


def check_tracking_store(uri: str) -> None:
    """``vitsweep run``'s check of its MLflow store, before anything is created: the server or
    database behind it answers (:func:`check_tracking_server`) and MLflow can use the URI
    (:func:`open_client`; a new SQLite store gets its tables, nothing more: no experiment, no run)."""
    if tracking_off(uri):
        return
    check_tracking_server(uri)
    open_client(uri)


def experiment_runs_urls(uri: str, server: str) -> list[str]:
    """For ``vitsweep ui``: each experiment in the store at ``uri`` and the page of its runs on
    ``server`` (an empty list when the store cannot be read)."""
    try:
        probe_store(uri)
        with quiet():
            exps = MlflowClient(tracking_uri=uri).search_experiments()
    except Exception:  # noqa: BLE001 - a bonus line; the server says what is wrong
        return []
    return [f"{e.name}: {runs_url(server, e.experiment_id, VIEW_TAG in e.tags)}"
            for e in exps if e.name != "Default"]


def study_footprint(uri: str, study: str) -> tuple[MlflowClient, list[str], str | None]:
    """(a client, the ids of every run tagged with ``study`` in any experiment, its registered
    champion model's name or None): what ``vitsweep studies delete --mlflow`` removes."""
    check_tracking_server(uri)  # a server that is down: exit 2 in seconds, not minutes of retries
    client = open_client(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string=f"tags.`{TAG_STUDY}` = '{study}'", max_results=50000) if ids else []
    try:
        model: str | None = client.get_registered_model(f"{MODEL_PREFIX}{study}").name
    except MlflowException:
        model = None
    return client, [r.info.run_id for r in runs], model
