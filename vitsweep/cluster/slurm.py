"""``vitsweep submit slurm``: a sweep's workers as one Slurm job array.

vitsweep writes a plain ``sbatch`` script and submits it (no submitit: the script is the whole
job, ``--dry-run`` prints exactly what is submitted, a user or an admin can read it, edit it and
``sbatch`` it again by hand, and every node runs the same ``vitsweep run`` command as everywhere
else, not a pickled Python function). Each array task is one worker::

    exec PYTHON -m vitsweep run SWEEP.yaml --workers 1 [--storage URL] [--tracking-uri URI]

on the shared study (PostgreSQL, or ``grpc://`` through ``vitsweep storage-proxy``) and tracking
server; the study-wide budget makes N tasks run ``n_trials`` trials together, as N machines do.

Stopping and preemption: ``exec`` makes the worker the batch step itself, so the SIGTERM that
Slurm sends before its SIGKILL (``scancel``, preemption, the time limit; ``KillWait`` apart)
reaches vitsweep's own handler (:mod:`vitsweep.signals`): the running trial is re-queued and
keeps its checkpoint. ``--signal=B:TERM@S`` sends that SIGTERM ``S`` seconds before the time
limit. A re-queued trial resumes from its checkpoint in whichever worker takes it next: another
task of the array, the same task started again by Slurm (``--requeue``, after preemption or node
failure), or a later ``vitsweep submit slurm``.

Stores: nodes must reach them, so a ``sqlite:///`` store is refused (exit 2) unless
``--allow-sqlite`` says the folder is on a filesystem every node mounts. A URL with a password
never goes into the script (``scontrol``, the script file and ``ps`` would show it): the tasks read
it from ``$VITSWEEP_STORAGE`` / ``$MLFLOW_TRACKING_URI``, which sbatch passes on from the
environment vitsweep gives it (``--export=ALL``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vitsweep import __version__
from vitsweep.errors import ConfigError, VitsweepError
from vitsweep.paths import (STORAGE, STORAGE_ENV, TRACKING_ENV, atomic_write, redact, sqlite_path,
                            tracking_off)

SLURM_DIR = STORAGE / "slurm"  # storage/slurm/<study>/: the scripts and a log per array task
# Slurm's time formats: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, UNLIMITED
TIME_RE = re.compile(r"(\d+-)?\d+(:\d{1,2}){0,2}|UNLIMITED|INFINITE", re.IGNORECASE)


@dataclass(frozen=True)
class Request:
    """``vitsweep submit slurm``'s options, as given."""

    sweep: Path
    workers: int
    gpus_per_worker: int = 0
    cpus_per_worker: int | None = None
    partition: str | None = None
    time: str | None = None
    requeue: bool = False
    signal_before: int = 120
    allow_sqlite: bool = False
    storage: str | None = None
    tracking_uri: str | None = None
    sbatch: tuple[str, ...] = ()
    set_: tuple[str, ...] = ()


@dataclass(frozen=True)
class Job:
    """What gets submitted: the script, where it and the logs go, and sbatch's environment."""

    study: str
    workers: int
    script: str
    folder: Path  # storage/slurm/<study>/ (absolute)
    env: dict[str, str]  # added to sbatch's environment (the stores with passwords)
    warnings: tuple[str, ...] = ()


def _check(req: Request) -> None:
    if req.workers < 1:
        raise ConfigError(f"--workers {req.workers}: must be >= 1 (array tasks, one worker each)")
    if req.gpus_per_worker < 0:
        raise ConfigError(f"--gpus-per-worker {req.gpus_per_worker}: must be >= 0 (0: CPU only)")
    if req.cpus_per_worker is not None and req.cpus_per_worker < 1:
        raise ConfigError(f"--cpus-per-worker {req.cpus_per_worker}: must be >= 1")
    if req.partition is not None and not re.fullmatch(r"[A-Za-z0-9_.\-,]+", req.partition):
        raise ConfigError(f"--partition {req.partition!r}: not a partition name (letters, digits, '_', '-', '.'; "
                          f"sinfo lists them)")
    if req.time is not None and not TIME_RE.fullmatch(req.time):
        raise ConfigError(f"--time {req.time!r}: use Slurm's time format, e.g. 02:00:00 (HH:MM:SS), 90 (minutes) "
                          f"or 1-12:00:00 (days-HH:MM:SS)")
    if not 0 <= req.signal_before <= 65535:
        raise ConfigError(f"--signal-before {req.signal_before}: must be 0..65535 seconds (0: no early SIGTERM)")
    for opt in req.sbatch:
        if not opt.startswith("-") or "\n" in opt or "\r" in opt:
            raise ConfigError(f"--sbatch {opt!r}: give one sbatch option per --sbatch, as it would follow "
                              f"#SBATCH, e.g. --sbatch=--account=myproject")


def _store_arg(what: str, flag: str, env_name: str, url: str, given: str | None, file_sets: bool,
               allow_sqlite: bool) -> tuple[list[str], dict[str, str]]:
    """How an array task gets a store: (its ``run`` arguments, variables for sbatch's environment)."""
    path = sqlite_path(url)
    if path is not None or url.startswith("sqlite"):
        if not allow_sqlite:
            raise ConfigError(
                f"the {what} is {redact(url)}, a SQLite file on this machine: the nodes of a Slurm cluster cannot "
                f"share it. Use a server every node reaches: {flag} postgresql://USER@DBHOST/DB"
                + (", or grpc://PROXYHOST:13000 (vitsweep storage-proxy)" if flag == "--storage" else
                   " or http://MLFLOWHOST:5000 (an MLflow server), or --tracking-uri none")
                + f"; or pass --allow-sqlite if {path.parent if path else 'its folder'} is on a filesystem every node "
                  f"mounts (one node, or a shared home)")
        if path is not None and not path.is_absolute():  # the same file from any working directory
            url = "sqlite:///" + str(path.resolve())
    if redact(url) == url:  # no password: on the command line, where the script shows it
        return [flag, url], {}
    if file_sets and given is None:  # the sweep file's own URL: the tasks read the same file
        return [], {}
    if file_sets:
        raise ConfigError(f"{flag} {redact(url)} carries a password and the sweep file sets its own {what}: the tasks "
                          f"could only get it on their command line, which ps and scontrol show. Put the URL in the "
                          f"sweep file, or remove it from the file (then the tasks read ${env_name}), or keep the "
                          f"password out of the URL (~/.pgpass)")
    return [], {env_name: url}


def plan(req: Request, cwd: Path | None = None, python: str | None = None) -> Job:
    """The job for ``req``: everything checked, nothing written."""
    from vitsweep.sweep.spec import load_sweep
    from vitsweep.train.config import parse_overrides, read_yaml

    _check(req)
    cwd = (cwd or Path.cwd()).resolve()
    sweep_path = req.sweep if req.sweep.is_absolute() else cwd / req.sweep
    sweep = load_sweep(sweep_path, parse_overrides(list(req.set_))).with_overrides(storage=req.storage,
                                                                                  tracking_uri=req.tracking_uri)
    raw = read_yaml(sweep_path)
    file_storage = isinstance(raw.get("storage"), dict) and "url" in raw["storage"]
    file_tracking = isinstance(raw.get("tracking"), dict) and "uri" in raw["tracking"]
    args, env = _store_arg("Optuna storage", "--storage", STORAGE_ENV, sweep.storage.url, req.storage, file_storage,
                           req.allow_sqlite)
    if tracking_off(sweep.tracking.uri):
        targs, tenv = ["--tracking-uri", "none"], {}
    else:
        targs, tenv = _store_arg("MLflow tracking store", "--tracking-uri", TRACKING_ENV, sweep.tracking.uri,
                                 req.tracking_uri, file_tracking, req.allow_sqlite)
    study = sweep.study.name
    folder = cwd / SLURM_DIR / study
    command = [python or sys.executable, "-m", "vitsweep", "run", str(sweep_path), "--workers", "1", *args, *targs]
    for item in req.set_:
        command += ["--set", item]
    warnings = tuple(f"the {what} {redact(url)} is on 127.0.0.1/localhost: each node connects to itself. Fine on a "
                     f"one-node cluster; elsewhere give the server's host name"
                     for what, url in (("Optuna storage", sweep.storage.url), ("MLflow tracking store", sweep.tracking.uri))
                     if re.search(r"(://|@)(localhost|127\.\d+\.\d+\.\d+|\[::1\])([:/]|$)", url))
    return Job(study=study, workers=req.workers, folder=folder, env={**env, **tenv}, warnings=warnings,
               script=_script(req, study, sweep_path, cwd, folder, command, sorted({**env, **tenv})))


def _script(req: Request, study: str, sweep_path: Path, cwd: Path, folder: Path, command: list[str],
            from_env: list[str]) -> str:
    directives = [f"--job-name=vitsweep-{study}", f"--array=0-{req.workers - 1}", "--ntasks=1"]
    if req.cpus_per_worker:
        directives.append(f"--cpus-per-task={req.cpus_per_worker}")
    if req.gpus_per_worker:
        directives.append(f"--gres=gpu:{req.gpus_per_worker}")
    if req.partition:
        directives.append(f"--partition={req.partition}")
    if req.time:
        directives.append(f"--time={req.time}")
    if req.signal_before:
        directives.append(f"--signal=B:TERM@{req.signal_before}")
    if req.requeue:
        directives.append("--requeue")
    directives += [f"--output={folder}/%A_%a.out", "--open-mode=append", f"--chdir={cwd}", "--export=ALL",
                   *req.sbatch]
    lines = [
        "#!/bin/bash",
        f"# Written by vitsweep {__version__} (vitsweep submit slurm) on {time.strftime('%Y-%m-%d %H:%M')}:",
        f"# {req.workers} worker(s) of {sweep_path} (study {study}) as one job array; each task is one",
        "# `vitsweep run --workers 1` on the shared study. SIGTERM (scancel, preemption, the time limit)",
        "# re-queues the running trial, which resumes from its checkpoint in the next worker to take it.",
    ]
    if from_env:
        lines.append(f"# The tasks read {' and '.join('$' + v for v in from_env)} (a password: not written here) from "
                     f"the environment sbatch passes on: set it before sbatch-ing this file by hand.")
    lines += [f"#SBATCH {d}" for d in directives]
    lines += [
        "set -eu",
        'echo "vitsweep worker: task ${SLURM_ARRAY_TASK_ID} of array ${SLURM_ARRAY_JOB_ID} on $(hostname),'
        ' start $(( ${SLURM_RESTART_COUNT:-0} + 1 )) ($(date -Is))"',
        "exec " + " ".join(shlex.quote(c) for c in command),
        "",
    ]
    return "\n".join(lines)


def submit(req: Request, dry_run: bool = False, out: Callable[[str], None] = print,
           err: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> str | None:
    """``vitsweep submit slurm``: write the script under storage/slurm/<study>/ and ``sbatch`` it;
    returns the job id. ``dry_run``: print the script, write and submit nothing."""
    job = plan(req)
    for line in job.warnings:
        err(f"warning: {line}")
    if dry_run:
        out(job.script.rstrip("\n"))
        err(f"dry run: nothing written or submitted; without --dry-run vitsweep writes this script under "
            f"{_shown(job.folder)}/ and submits it with sbatch")
        return None
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise VitsweepError("sbatch not found: run vitsweep submit slurm on a machine that submits Slurm jobs (a "
                            "login node), or see the script with --dry-run")
    created = [d for d in (job.folder, *job.folder.parents) if not d.exists()]  # deepest first
    job.folder.mkdir(parents=True, exist_ok=True)  # Slurm writes the task logs here: it must exist
    script = job.folder / f"job-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.sh"
    atomic_write(script, lambda tmp: tmp.write_text(job.script, encoding="utf-8"))
    try:
        proc = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True, timeout=120,
                              env={**os.environ, **job.env})
    except (OSError, subprocess.TimeoutExpired) as e:
        proc = subprocess.CompletedProcess([sbatch], 1, "", str(e))
    job_id = proc.stdout.strip().split(";")[0] if proc.returncode == 0 else ""
    if not job_id:
        script.unlink(missing_ok=True)  # nothing submitted: nothing left behind
        for d in created:
            try:
                d.rmdir()
            except OSError:
                break
        why = " ".join((proc.stderr or proc.stdout or "no job id printed").split())[:500]
        raise VitsweepError(f"sbatch refused the job: {why}; see the script with --dry-run, and the partitions, "
                            f"time limits and GPUs this cluster has with sinfo")
    where = _shown(job.folder)
    out(f"submitted job array {job_id} ({job.workers} task(s), one worker each) for study {job.study}: {_shown(script)}")
    out(f"  logs:  {where}/{job_id}_<task>.out")
    out(f"  watch: squeue -j {job_id}   and   vitsweep trials --study {job.study}")
    out(f"  stop:  scancel {job_id}   (running trials are re-queued; submit again to finish them)")
    return job_id


def _shown(path: Path) -> str:
    """``path`` relative to the working directory where it is inside it."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
