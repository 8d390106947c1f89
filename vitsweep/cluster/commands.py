"""The cluster commands: ``vitsweep submit slurm`` and ``vitsweep storage-proxy`` (registered on the
main app by ``vitsweep.cli``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vitsweep.options import ReadStorageOption, SetOption, StorageOption, SweepTrackingUriOption

submit_app = typer.Typer(help="Submit a sweep's workers to a cluster's scheduler (Slurm).\n\n"
                              "Example: vitsweep submit slurm sweeps/adan_betas.yaml --workers 8 --dry-run",
                         no_args_is_help=True, rich_markup_mode=None)


@submit_app.command("slurm")
def submit_slurm(
    sweep: Annotated[Path, typer.Argument(help="Sweep YAML, e.g. sweeps/adan_betas.yaml.")],
    workers: Annotated[int, typer.Option("--workers", help="Array tasks, each one `vitsweep run --workers 1`.")],
    gpus_per_worker: Annotated[int, typer.Option("--gpus-per-worker", help="GPUs per task (--gres=gpu:N); 0: "
                                                 "CPU only.")] = 0,
    cpus_per_worker: Annotated[Optional[int], typer.Option("--cpus-per-worker", help="CPU cores per task "
                               "(--cpus-per-task) [default: the cluster's].")] = None,
    partition: Annotated[Optional[str], typer.Option("--partition", help="Slurm partition [default: the "
                         "cluster's].")] = None,
    time_limit: Annotated[Optional[str], typer.Option("--time", help="Time limit per task, HH:MM:SS [default: the "
                          "partition's].")] = None,
    requeue: Annotated[bool, typer.Option("--requeue", help="Let Slurm start a preempted task (or one on a failed "
                                          "node) again; its trial resumes from its checkpoint.")] = False,
    signal_before: Annotated[int, typer.Option("--signal-before", help="Seconds before the time limit to SIGTERM "
                             "the worker (its trial is re-queued); 0: only Slurm's own.")] = 120,
    storage: StorageOption = None,
    tracking_uri: SweepTrackingUriOption = None,
    allow_sqlite: Annotated[bool, typer.Option("--allow-sqlite", help="Accept sqlite:/// stores (their folder is on "
                                               "a filesystem every node mounts).")] = False,
    sbatch: Annotated[Optional[list[str]], typer.Option("--sbatch", help="Another #SBATCH option, e.g. "
                      "--sbatch=--account=proj (repeatable).")] = None,
    set_: SetOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the job script; write and submit nothing.")] = False,
) -> None:
    """Run a sweep's workers as one Slurm job array (a plain sbatch script, shown with --dry-run).

    Example: vitsweep submit slurm sweeps/adan_betas.yaml --workers 8 --gpus-per-worker 1 --time 04:00:00"""
    from vitsweep.cluster.slurm import Request, submit

    submit(Request(sweep=sweep, workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                   partition=partition, time=time_limit, requeue=requeue, signal_before=signal_before,
                   allow_sqlite=allow_sqlite, storage=storage, tracking_uri=tracking_uri, sbatch=tuple(sbatch or ()),
                   set_=tuple(set_ or ())), dry_run=dry_run)


def storage_proxy(
    storage: ReadStorageOption = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on; it must be free.")] = 13000,
    threads: Annotated[int, typer.Option("--threads", help="Threads serving storage calls (each may hold one "
                                         "database connection).")] = 16,
) -> None:
    """Serve the sweep storage to workers through Optuna's gRPC storage proxy (--storage grpc://HOST:PORT).

    Example: vitsweep storage-proxy --storage postgresql://USER@DBHOST/optuna --host 0.0.0.0"""
    from vitsweep.paths import storage_url
    from vitsweep.sweep.proxy import serve

    serve(storage_url(storage), host, port, threads)
