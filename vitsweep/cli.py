"""The ``vitsweep`` command. Each command parses its options, then calls one function.

Each command imports what it calls inside its body (lazy on purpose): ``vitsweep --help`` and a
mistyped option answer at once instead of after importing torch, Optuna and MLflow."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from vitsweep import signals
from vitsweep.errors import VitsweepError, plain_warnings


class _Group(TyperGroup):
    """Turn a user's mistake (VitsweepError) into 'error: ...' on stderr and its exit code (2)."""

    def invoke(self, ctx):  # noqa: ANN001, ANN201
        try:
            return super().invoke(ctx)
        except VitsweepError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (vitsweep.signals): the command cleaned up
            typer.echo(signals.describe(e), err=True)
            raise typer.Exit(signals.exit_code(e)) from None


app = typer.Typer(
    cls=_Group,
    rich_markup_mode=None,  # help texts say "[default: ...]" literally
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Hyperparameter sweeps for Vision Transformers trained from scratch.",
)



@app.callback()
def _root() -> None:
    """Hyperparameter sweeps for Vision Transformers trained from scratch."""


SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config key: --set model.patch_size=8 (repeatable)."),
]


ThreadsOption = Annotated[Optional[int], typer.Option(
    "--threads", help="CPU threads for torch [default: torch's choice, one per core].")]


def _threads(threads: Optional[int]) -> None:
    from vitsweep.train.device import set_threads

    set_threads(threads)


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Argument(help="Trainer config YAML (optional with --resume).")] = None,
    set_: SetOption = None,
    run_dir: Annotated[Optional[Path], typer.Option(help="Where checkpoints go [default: storage/runs/NAME-TIME].")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue a killed run from RUN_DIR/last.pt.")] = None,
    threads: ThreadsOption = None,
) -> None:
    """Train one ViT: a progress bar and a line per epoch, then best val and test accuracy."""
    from vitsweep import console
    from vitsweep.train.config import load_config
    from vitsweep.paths import RUNS_DIR
    from vitsweep.train.loop import train as run_train

    _threads(threads)

    if config is None and resume is None:
        raise VitsweepError("give a config file (vitsweep train sweeps/train_smoke.yaml) or --resume RUN_DIR")
    cfg = load_config(config if config is not None else resume / "config.yaml", set_ or [])  # type: ignore[operator]
    if resume is not None:
        run_dir = resume
    elif run_dir is None:
        run_dir = RUNS_DIR / f"{(config or Path('run')).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    console.err(("resuming " if resume else "training ") + console.describe(cfg) + f"\nrun dir: {run_dir}")
    try:
        result = run_train(cfg, console.epoch_line(cfg.train.epochs), run_dir=run_dir, resume=resume is not None,
                           progress=True)
    except KeyboardInterrupt as e:
        resumable = cfg.train.checkpoint and (run_dir / "last.pt").is_file()
        console.err("\n" + signals.describe(e) + (f": continue with  vitsweep train --resume {run_dir}" if resumable
                                                   else " before the first epoch's checkpoint: nothing to resume"))
        raise typer.Exit(signals.exit_code(e)) from None
    print(console.summary(result))
    if result.stop_reason == "diverged":
        console.err(f"error: training diverged (a non-finite loss at epoch {result.epochs_run}); lower optimizer.lr, "
                    f"or keep optimizer.grad_clip on")
        raise typer.Exit(1)


RefArgument = Annotated[str, typer.Argument(
    metavar="RUN_ID_OR_CHECKPOINT", help="A checkpoint file (storage/runs/NAME/best.pt) or an MLflow run id.")]
TrackingUriOption = Annotated[Optional[str], typer.Option(
    "--tracking-uri", help="MLflow store for run ids [default: $MLFLOW_TRACKING_URI or sqlite:///storage/mlflow.db].")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]


@app.command()
def evaluate(
    ref: RefArgument,
    out: Annotated[Optional[Path], typer.Option(help="Output folder [default: storage/eval/NAME].")] = None,
    fp8: Annotated[bool, typer.Option("--fp8", help="Also evaluate with simulated FP8 (E4M3) weights.")] = False,
    device: DeviceOption = "auto",
    tracking_uri: TrackingUriOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Test-split top-1, loss, per-class accuracy, confusion matrix and a prediction grid."""
    from vitsweep.models.evaluate import format_summary, run_evaluate

    _threads(threads)

    print(format_summary(run_evaluate(ref, out=out, device=device, fp8=fp8, tracking_uri=tracking_uri)))


@app.command()
def bench(
    ref: RefArgument,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,4,16,64,128",
    device: DeviceOption = "auto",
    out: Annotated[Optional[Path], typer.Option(help="Output folder [default: storage/bench/NAME].")] = None,
    min_time: Annotated[float, typer.Option(help="Seconds of timed passes per batch size (at least 5 passes).")] = 1.0,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch [default: torch's choice].")] = None,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """Inference latency (median, p90) and images/s by batch size: bench.json and bench.html."""
    from vitsweep.models.bench import format_summary, parse_batch_sizes, run_bench

    print(format_summary(run_bench(ref, parse_batch_sizes(batch_sizes), device=device, out=out, min_time=min_time,
                                   threads=threads, tracking_uri=tracking_uri)))


@app.command()
def export(
    ref: RefArgument,
    format: Annotated[str, typer.Option("--format", "-f", help="onnx or torchscript.")] = "onnx",
    out: Annotated[Optional[Path], typer.Option(help="Output folder [default: storage/export/NAME].")] = None,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """ONNX or TorchScript file, verified against PyTorch's logits, with its config beside it as JSON."""
    from vitsweep.models.export import format_summary, run_export

    print(format_summary(run_export(ref, format, out=out, tracking_uri=tracking_uri)))


StorageOption = Annotated[
    Optional[str],
    typer.Option("--storage", help="Optuna storage URL [default: (run) the sweep file's storage.url, else "
                             "$VITSWEEP_STORAGE, else sqlite:///storage/optuna.db]."),
]


@app.command()
def run(
    sweep: Annotated[Path, typer.Argument(help="Sweep YAML, e.g. sweeps/smoke.yaml.")],
    n_trials: Annotated[Optional[int], typer.Option("--n-trials", help="The study's total trials (all workers).")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Worker processes sharing the study.")] = 1,
    storage: StorageOption = None,
    tracking_uri: Annotated[Optional[str], typer.Option("--tracking-uri", help="MLflow tracking URI ('none': off) "
                            "[default: the sweep file's tracking.uri, else $MLFLOW_TRACKING_URI, else sqlite:///storage/mlflow.db].")] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Start no new trial after this many seconds.")] = None,
) -> None:
    """Run (or continue) a sweep: a line per trial, then the best trial and counts by state."""
    from vitsweep.sweep.runner import run_sweep
    from vitsweep.sweep.spec import load_sweep

    cfg = load_sweep(sweep).with_overrides(n_trials=n_trials, timeout=timeout, storage=storage,
                                           tracking_uri=tracking_uri)
    run_sweep(cfg, workers=workers)


@app.command()
def trials(
    study: Annotated[Optional[str], typer.Option("--study", help="Study name [default: the latest].")] = None,
    storage: StorageOption = None,
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Also write the table to this CSV file.")] = None,
) -> None:
    """Table of a study's trials: state, value, epochs, params, failure reason."""
    from vitsweep.paths import storage_url
    from vitsweep.sweep.trials import show_trials

    show_trials(study, storage_url(storage), csv)


@app.command()
def promote(
    top: Annotated[int, typer.Option("--top", help="How many of the best completed trials (distinct configs).")],
    epochs: Annotated[int, typer.Option("--epochs", help="Full training length (the schedule stretches to it).")],
    study: Annotated[Optional[str], typer.Option("--study", help="Study name [default: the latest].")] = None,
    storage: StorageOption = None,
    tracking_uri: Annotated[Optional[str], typer.Option(
        "--tracking-uri", help="MLflow store [default: $MLFLOW_TRACKING_URI or sqlite:///storage/mlflow.db]; 'none': off.")] = None,
    patience: Annotated[Optional[int], typer.Option(
        "--patience", help="Early stopping: epochs without a --min-delta val-acc gain [default: the trial's].")] = None,
    min_delta: Annotated[Optional[float], typer.Option("--min-delta", help="Smallest val-acc gain that counts.")] = None,
    seeds: Annotated[int, typer.Option("--seeds", help="Runs per config, seeds trial seed + 0..S-1.")] = 1,
    out: Annotated[Optional[Path], typer.Option("--out", help="Run folders [default: storage/promote].")] = None,
    threads: ThreadsOption = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", "-s", help="Override a key of every promoted run's config, e.g. --set data.train_limit=null "
                            "to promote on the full data after a sweep on a subset (repeatable).")] = None,
) -> None:
    """Retrain the top trials at full length, test each best checkpoint, rank them (resumable)."""
    from vitsweep.promote.retrain import DEFAULT_OUT, promote as run_promote
    from vitsweep.train.config import parse_overrides

    _threads(threads)
    run_promote(top=top, epochs=epochs, study=study, storage=storage, tracking_uri=tracking_uri, patience=patience,
                min_delta=min_delta, seeds=seeds, out_dir=out or DEFAULT_OUT, overrides=parse_overrides(set_ or []))


@app.command()
def report(
    study: Annotated[Optional[str], typer.Option("--study", help="Study name [default: the latest].")] = None,
    storage: StorageOption = None,
    tracking_uri: Annotated[Optional[str], typer.Option(
        "--tracking-uri", help="MLflow store of the sweep's parent run [default: $MLFLOW_TRACKING_URI or "
                               "sqlite:///storage/mlflow.db]; 'none': do not log the page.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="HTML file [default: storage/reports/STUDY.html].")] = None,
    promote_dir: Annotated[Optional[Path], typer.Option(
        "--promote-dir", help="vitsweep promote's --out, for the leaderboard [default: storage/promote].")] = None,
) -> None:
    """One self-contained HTML page of a study's plots, also logged to its MLflow parent run."""
    from vitsweep.report.page import write_report

    write_report(study, storage, tracking_uri, out, promote_dir)


@app.command()
def dashboard(
    storage: StorageOption = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on; it must be free.")] = 8080,
) -> None:
    """Serve optuna-dashboard on the sweep storage."""
    from vitsweep.paths import storage_url
    from vitsweep.servers import dashboard as serve

    serve(storage_url(storage), host, port)


@app.command()
def ui(
    tracking_uri: Annotated[Optional[str], typer.Option("--tracking-uri", help="[default: $MLFLOW_TRACKING_URI, else sqlite:///storage/mlflow.db]")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on; it must be free.")] = 5000,
) -> None:
    """Serve the MLflow UI (and REST API) on the sweeps' tracking store."""
    from vitsweep.paths import tracking_uri as resolve_tracking
    from vitsweep.servers import ui as serve

    raise typer.Exit(serve(resolve_tracking(tracking_uri), host, port))


def main() -> None:
    plain_warnings()
    signals.install()
    try:
        app()
    except KeyboardInterrupt as e:
        print(signals.describe(e), file=sys.stderr)
        sys.exit(signals.exit_code(e))


if __name__ == "__main__":
    main()
