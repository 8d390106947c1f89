"""The study commands a user runs after a sweep: ``vitsweep best`` and ``vitsweep stop`` (registered on
the main app by ``vitsweep.cli``), and ``next_step``, every command's last line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vitsweep.options import ReadStorageOption


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
