"""``vitsweep dashboard`` and ``vitsweep ui``: the real optuna-dashboard and MLflow servers on the
sweep stores (both block until Ctrl-C)."""

from __future__ import annotations

import signal
import subprocess
import sys

from vitsweep.errors import VitsweepError
from vitsweep.paths import DEFAULT_STORAGE, DEFAULT_TRACKING, is_http, sqlite_path
from vitsweep.sweep.storage import open_storage


def dashboard(storage: str = DEFAULT_STORAGE, host: str = "127.0.0.1", port: int = 8080) -> None:
    """``vitsweep dashboard``: optuna-dashboard on the sweep storage."""
    import optuna_dashboard  # lazy: a web server's imports, needed by this command only

    open_storage(storage)  # a missing SQLite file is an error, not a new empty database
    print(f"optuna-dashboard for {storage} on http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
    optuna_dashboard.run_server(storage, host=host, port=port)


def ui(tracking_uri: str = DEFAULT_TRACKING, host: str = "127.0.0.1", port: int = 5000) -> int:
    """``vitsweep ui``: the MLflow server (UI + REST API) on the tracking store, as a process."""
    if is_http(tracking_uri):
        raise VitsweepError(f"the tracking store {tracking_uri} is an MLflow server already: open it in a "
                            f"browser (its UI is at that address), or pass --tracking-uri with a database URI")
    path = sqlite_path(tracking_uri)
    if path is not None and not path.is_file():
        raise VitsweepError(f"no MLflow store at {tracking_uri} ({path} does not exist); run a sweep first")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    print(f"MLflow UI for {tracking_uri} on http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
