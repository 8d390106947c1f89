"""The command line's shared parts: the option types several commands share (typer ``Annotated``
types, one spelling each), and the command group that lists the commands in workflow order and
turns a user's mistake into ``error: ...`` and exit code 2."""

from __future__ import annotations

from typing import Annotated, Optional

import sys

import typer
from typer.core import TyperGroup

try:
    from typer._click.exceptions import UsageError  # typer 0.2x carries its own click
except ImportError:  # pragma: no cover - older typer: click itself
    from click.exceptions import UsageError

from vitsweep import signals
from vitsweep.errors import VitsweepError, one_line

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config key: --set model.patch_size=8 (repeatable)."),
]


def _threads_in_range(threads: Optional[int]) -> Optional[int]:
    """Checked as the command line is read, before any file is: a bad --threads is named first."""
    from vitsweep.train.checks import check_threads

    return check_threads(threads)


ThreadsOption = Annotated[Optional[int], typer.Option(
    "--threads", callback=_threads_in_range, help="CPU threads for torch [default: torch's choice, one per core].")]

RefArgument = Annotated[Optional[str], typer.Argument(
    metavar="[RUN_ID_OR_CHECKPOINT]", show_default=False,
    help="A checkpoint file (storage/runs/NAME/best.pt), an MLflow run id, or a registered model "
         "(models:/vitsweep-STUDY@champion); or --champion.")]
ChampionOption = Annotated[bool, typer.Option(
    "--champion", help="The promoted champion: models:/vitsweep-STUDY@champion (--study STUDY, else the "
                       "champion crowned last).")]
ChampionStudyOption = Annotated[Optional[str], typer.Option(
    "--study", help="With --champion: whose champion [default: the champion crowned last].")]
TrackingUriOption = Annotated[Optional[str], typer.Option(
    "--tracking-uri", help="MLflow tracking store [default: $MLFLOW_TRACKING_URI, else sqlite:///storage/mlflow.db]; "
                           "'none': off.")]
SweepTrackingUriOption = Annotated[Optional[str], typer.Option(  # run: the sweep file may name one
    "--tracking-uri", help="MLflow tracking store [default: the sweep file's tracking.uri, else $MLFLOW_TRACKING_URI, "
                           "else sqlite:///storage/mlflow.db]; 'none': off.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]

StorageOption = Annotated[
    Optional[str],
    typer.Option("--storage", help="Optuna storage URL [default: the sweep file's storage.url, else "
                             "$VITSWEEP_STORAGE, else sqlite:///storage/optuna.db]."),
]
ReadStorageOption = Annotated[  # the commands that read a study: no sweep file
    Optional[str],
    typer.Option("--storage", help="Optuna storage URL [default: $VITSWEEP_STORAGE, else sqlite:///storage/optuna.db]."),
]


class CommandGroup(TyperGroup):
    """Turn a user's mistake (VitsweepError) into 'error: ...' on stderr and its exit code (2);
    list the commands in workflow order."""

    ORDER = ("run", "submit", "storage-proxy", "trials", "studies", "dashboard", "ui", "report", "best", "stop", "promote",
             "train", "evaluate", "bench", "export")

    def list_commands(self, ctx):  # noqa: ANN001, ANN201
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: self.ORDER.index(n) if n in self.ORDER else len(self.ORDER))

    def invoke(self, ctx):  # noqa: ANN001, ANN201
        try:
            return super().invoke(ctx)
        except VitsweepError as e:
            typer.echo(f"error: {_short_args(str(e))}", err=True)
            raise typer.Exit(e.exit_code) from None
        except UsageError as e:  # click's own, e.g. "No such option: --LONG..."
            e.message = _short_args(e.message)
            raise
        except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
            if not _out_of_memory(e):
                raise
            typer.echo(f"error: out of memory ({one_line(e, 200)}); use less of it: a smaller "
                       f"train.batch_size or train.micro_batch (train, promote), smaller --batch-sizes (bench, "
                       f"evaluate), or a smaller model (model.dim, depth, a larger patch_size)", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (vitsweep.signals): the command cleaned up
            typer.echo(signals.describe(e), err=True)
            raise typer.Exit(signals.exit_code(e)) from None


def _short_args(message: str) -> str:
    """``message`` with each long command-line argument it quotes shortened (vitsweep.inputs.brief):
    an option's value is quoted as typed, however long."""
    from vitsweep.inputs import SHOWN_PATH, brief

    for arg in sys.argv[1:]:
        for value in {arg, arg.partition("=")[2]}:
            if len(value) > SHOWN_PATH:
                message = message.replace(repr(value), brief(value, limit=SHOWN_PATH))
                message = message.replace(value, brief(value, plain=True, limit=SHOWN_PATH))
    return message


def _out_of_memory(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, MemoryError) or "out of memory" in text or "can't allocate memory" in text
