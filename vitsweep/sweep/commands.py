"""The study commands a user runs after a sweep: ``vitsweep studies`` (and ``studies delete``),
``vitsweep best`` and ``vitsweep stop`` (registered on the main app by ``vitsweep.cli``), and
``next_step``, every command's last line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vitsweep.options import ReadStorageOption, TrackingUriOption


def next_step(*commands: str) -> None:
    """The command's last line: what to run next (stderr: stdout stays the command's own output)."""
    typer.echo("next: " + "   or   ".join(commands), err=True)


def best(
    study: Annotated[Optional[str], typer.Option("--study", help="Study name [default: the latest].")] = None,
    storage: ReadStorageOption = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="YAML file to write [default: print it].")] = None,
) -> None:
    """The best trial's full trainer config, as a file vitsweep train runs.

    Example: vitsweep best --study smoke -o best.yaml"""
    from vitsweep.sweep.best import write_best

    name, about = write_best(study, storage, out)
    if out is not None:
        typer.echo(f"wrote {out}: the {about}", err=True)
    next_step(f"vitsweep train {out or 'best.yaml'}" + ("" if out else "  (save it first: vitsweep best -o best.yaml)"))


def stop(
    study: Annotated[str, typer.Argument(help="The study to stop.")],
    storage: ReadStorageOption = None,
) -> None:
    """Stop a study: every worker finishes its current trial and starts no new one.

    Example: vitsweep stop cifar10_cpu"""
    from vitsweep.paths import storage_url
    from vitsweep.sweep.plateau import stop_by_hand
    from vitsweep.sweep.storage import load_study

    st = load_study(study, storage_url(storage))
    reason, now = stop_by_hand(st)
    typer.echo(f"study {st.study_name}: " + ("every worker stops after its current trial" if now
                                             else f"already stopped ({reason})"))
    next_step(f"vitsweep trials --study {st.study_name} --sort value")


studies_app = typer.Typer(invoke_without_command=True, rich_markup_mode=None,
                          help="Every study in the storage: trials by state, best value, last activity.\n\n"
                               "Example: vitsweep studies --storage sqlite:///storage/optuna.db")


@studies_app.callback()
def studies(ctx: typer.Context, storage: ReadStorageOption = None) -> None:
    """Every study in the storage: trials by state, best value, last activity.

    Example: vitsweep studies --storage sqlite:///storage/optuna.db"""
    if ctx.invoked_subcommand is not None:  # `studies --storage X delete NAME`: delete reads X
        ctx.obj = {"storage": storage}
        return
    from vitsweep.paths import storage_url
    from vitsweep.sweep.trials import show_studies

    latest = show_studies(storage_url(storage))
    next_step(f"vitsweep trials --study {latest} --sort value" if latest else "vitsweep run sweeps/smoke.yaml")


@studies_app.command("delete")
def delete(
    ctx: typer.Context,
    study: Annotated[str, typer.Argument(help="The study to delete.")],
    storage: ReadStorageOption = None,
    mlflow: Annotated[bool, typer.Option("--mlflow", help="Also delete its MLflow runs and registered model.")] = False,
    tracking_uri: TrackingUriOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete a study: its trials, checkpoints and promotion folder (and with --mlflow its MLflow runs).

    Example: vitsweep studies delete smoke --mlflow"""
    import sys

    from vitsweep.errors import VitsweepError
    from vitsweep.sweep.delete import delete_study

    def confirm(what: str) -> bool:
        typer.echo(f"to delete:\n{what}", err=True)
        if yes:
            return True
        if not sys.stdin.isatty():
            raise VitsweepError(f"studies delete {study}: not on a terminal, so nothing was deleted; add --yes to "
                                f"delete the above")
        return typer.confirm("delete all of it?", default=False, err=True)

    given = (ctx.obj or {}).get("storage")
    if given and storage and given != storage:
        raise VitsweepError("studies --storage and studies delete --storage differ: give one")
    done = delete_study(study, storage or given, tracking_uri, mlflow, confirm)
    typer.echo(f"deleted study {study}" if done else "nothing deleted", err=True)
    next_step("vitsweep studies")
