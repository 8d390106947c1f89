"""What the cluster tests (test_slurm.py, test_storage_proxy.py) need, and whether they may skip.

Locally a test that needs a missing service (a Slurm cluster, grpcio, PostgreSQL) skips, saying
what is missing. CI sets ``VITSWEEP_REQUIRE`` (tests.helpers.needs): there a missing one fails the
run instead (``.ci/run`` starts a one-node Slurm with ``.ci/slurm up``)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from tests.helpers import needs


def need(name: str, problem: str | None) -> list[pytest.MarkDecorator]:
    """Marks for a module or test that needs ``name``: none when it is there (``problem`` None),
    else :func:`tests.helpers.needs` (a skip saying why; a failure when $VITSWEEP_REQUIRE names it)."""
    return [] if problem is None else [needs(name, False, problem)]


def slurm_problem() -> str | None:
    """None when a Slurm cluster takes jobs here (sinfo shows a node up), else what is missing."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return ("Slurm is not installed (Debian: apt-get install slurm-wlm munge; then bash .ci/slurm up DIR and "
                "export SLURM_CONF=DIR/slurm.conf)")
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo did not answer ({e})"
    states = proc.stdout.split()
    if proc.returncode != 0 or not any(s.rstrip("*~#").startswith(("idle", "mix", "alloc")) for s in states):
        why = " ".join((proc.stderr or proc.stdout or "no node").split())[:200]
        return f"no Slurm node takes jobs (sinfo: {why}); start one: bash .ci/slurm up DIR, export SLURM_CONF=DIR/slurm.conf"
    return None


def grpc_problem() -> str | None:
    try:
        import grpc  # noqa: F401
    except ModuleNotFoundError:
        return "grpcio is not installed (pip install -e '.[dev]' or pip install grpcio)"
    return None


def squeue(job_id: str) -> list[str]:
    """The array's tasks still in the queue, as 'TASKID STATE' lines."""
    proc = subprocess.run(["squeue", "-h", "-r", "-j", job_id, "-o", "%i %T"], capture_output=True, text=True,
                          timeout=60)
    return [line for line in proc.stdout.splitlines() if line.strip()] if proc.returncode == 0 else []


def wait_for_array(job_id: str, timeout: float = 600) -> None:
    """Wait until no task of the array is queued or running; fail after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while squeue(job_id):
        if time.time() > deadline:
            subprocess.run(["scancel", job_id], timeout=60)
            pytest.fail(f"job array {job_id} still queued or running after {timeout:.0f} s: {squeue(job_id)}")
        time.sleep(1)
