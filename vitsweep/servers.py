"""``vitsweep dashboard`` and ``vitsweep ui``: the real optuna-dashboard and MLflow servers on the
sweep stores (both block until Ctrl-C or SIGTERM).

Before either starts: the port must be in 1..65535 and free (exit 2 naming the process that holds
it, where this machine says). ``ui`` passes the tracking store to ``mlflow server`` through its
environment (``MLFLOW_BACKEND_STORE_URI``), never on the command line (``ps`` shows command lines
to every user), runs it in a process group of its own and stops the whole group (the server and
its workers) on Ctrl-C or SIGTERM. Store URLs are shown with their password masked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from vitsweep.errors import VitsweepError
from vitsweep.paths import (DEFAULT_STORAGE, DEFAULT_TRACKING, UI_DIR, check_reachable, is_database_server,
                            is_http, redact, sqlite_path)
from vitsweep.sweep.storage import open_storage


def check_port(host: str, port: int) -> None:
    """A VitsweepError unless ``port`` is a port number that is free on ``host``."""
    if not 1 <= port <= 65535:
        raise VitsweepError(f"--port {port}: must be a port number in 1..65535")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except socket.gaierror as e:
            raise VitsweepError(f"--host {host}: not an address of this machine ({e.strerror})") from None
        except OSError as e:
            holder = port_holder(port)
            raise VitsweepError(f"port {port} on {host} is not free ({e.strerror})"
                                + (f": {holder} holds it" if holder else "")
                                + "; stop it, or choose another port with --port") from None


def port_holder(port: int) -> str | None:
    """'process PID (COMMAND)' listening on ``port``, where /proc tells (Linux; None elsewhere or
    when the process belongs to another user)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{f[9]}]")
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in fds):
                cmd = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
                return f"process {pid} ({cmd[:80]})"
        except OSError:
            continue
    return None


def dashboard(storage: str = DEFAULT_STORAGE, host: str = "127.0.0.1", port: int = 8080) -> None:
    """``vitsweep dashboard``: optuna-dashboard on the sweep storage."""
    check_port(host, port)
    import optuna_dashboard  # lazy: a web server's imports, needed by this command only

    open_storage(storage)  # a missing SQLite file is an error, not a new empty database
    print(f"optuna-dashboard for {redact(storage)} on http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
    optuna_dashboard.run_server(storage, host=host, port=port)


def ui(tracking_uri: str = DEFAULT_TRACKING, host: str = "127.0.0.1", port: int = 5000) -> int:
    """``vitsweep ui``: the MLflow server (UI + REST API) on the tracking store, as a process."""
    if is_http(tracking_uri):
        raise VitsweepError(f"the tracking store {redact(tracking_uri)} is an MLflow server already: open it in "
                            f"a browser (its UI is at that address), or pass --tracking-uri with a database URI")
    path = sqlite_path(tracking_uri)
    if path is not None and not path.is_file():
        raise VitsweepError(f"no MLflow store at {tracking_uri} ({path} does not exist); run a sweep first")
    if is_database_server(tracking_uri):  # a server that is down: exit 2 now, not minutes of MLflow's retries
        check_reachable(tracking_uri)
    check_port(host, port)
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", "1"]
    # The store goes through the environment, not the command line (ps shows it). MLflow's job
    # runner (GenAI jobs, several huey processes) is off unless asked for: sweeps never use it.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, "MLFLOW_BACKEND_STORE_URI": tracking_uri}
    print(f"MLflow UI for {redact(tracking_uri)} on http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
    from vitsweep.tracking.client import experiment_runs_urls  # lazy: MLflow's import is slow

    for line in experiment_runs_urls(tracking_uri, f"http://{host}:{port}"):
        print(f"  runs of {line}", flush=True)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        with _announced(tracking_uri, host, port):
            return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the server and its workers
        _stop_group(proc)
        raise


def _store_key(tracking_uri: str) -> str:
    """A store's name in UI_DIR's files: a hash, so no password is written to disk."""
    return hashlib.sha256(redact(tracking_uri).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _announced(tracking_uri: str, host: str, port: int):  # noqa: ANN202 - a context manager
    """While the block runs, UI_DIR/PORT.json says this process serves ``tracking_uri`` there, so
    that ``vitsweep run`` prints the address of the UI that is up (:func:`running_ui`)."""
    path = UI_DIR / f"{port}.json"
    with contextlib.suppress(OSError):
        UI_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"pid": os.getpid(), "host": host, "port": port, "store": _store_key(tracking_uri)}))
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def running_ui(tracking_uri: str) -> str | None:
    """The address of a running ``vitsweep ui`` on ``tracking_uri`` (started from this folder), or None."""
    for path in sorted(UI_DIR.glob("*.json")) if UI_DIR.is_dir() else []:
        try:
            info = json.loads(path.read_text())
            os.kill(int(info["pid"]), 0)
            host, port, store = str(info["host"]), int(info["port"]), info.get("store")
        except (OSError, ValueError, KeyError, TypeError):  # gone (killed hard), or not ours to read
            continue
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        if store == _store_key(tracking_uri) and _answers(host, port):  # a reused pid serves nothing there
            return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return None


def _answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def _stop_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM to the server's process group, then SIGKILL to whatever of it is left after
    ``grace`` seconds. It waits for the whole group, not only the server: a worker that outlives
    it would keep the port, and the output pipe, open."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_alive(proc):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reaps the server itself once it has exited
    try:
        os.killpg(proc.pid, 0)
        return True
    except ProcessLookupError:
        return False
