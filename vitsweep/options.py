"""The command-line options several commands share (typer ``Annotated`` types), one spelling each."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config key: --set model.patch_size=8 (repeatable)."),
]


ThreadsOption = Annotated[Optional[int], typer.Option(
    "--threads", help="CPU threads for torch [default: torch's choice, one per core].")]

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
