"""The ``vitsweep`` command. Each command parses its options, then calls one function.

Each command imports what it calls inside its body (lazy on purpose): ``vitsweep --help`` and a
mistyped option answer at once instead of after importing torch, Optuna and MLflow."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from vitsweep import signals
from vitsweep.cluster.commands import storage_proxy, submit_app
from vitsweep.sweep.commands import best, next_step, stop, studies_app
from vitsweep.errors import VitsweepError, plain_warnings
from vitsweep.options import (CommandGroup, ChampionOption, ChampionStudyOption, DeviceOption, ReadStorageOption, RefArgument,
                              SetOption, StorageOption, SweepTrackingUriOption, ThreadsOption, TrackingUriOption)


def _existing_ref(ref: str) -> bool:
    """A checkpoint that exists, or what looks like a run id: worth a "working on it" line (a
    missing file gets its error alone)."""
    from vitsweep.trained.inference import looks_like_path

    return Path(ref).exists() or not looks_like_path(ref)


def _tracking(uri: Optional[str]) -> None:
    """A ``--tracking-uri`` that cannot work (two slashes after sqlite:, a port that is not a number)
    is exit 2 before anything else is read."""
    if uri is not None:
        from vitsweep.paths import check_tracking_uri

        check_tracking_uri(uri, "--tracking-uri")


def _folder(path: Optional[Path], option: str) -> None:
    """An output folder option that names an existing file is a user's mistake: exit 2 before anything."""
    if path is not None and path.exists() and not path.is_dir():
        raise VitsweepError(f"{option} {path}: is a file, not a folder; give a folder (it is created if missing)")


app = typer.Typer(
    cls=CommandGroup,
    rich_markup_mode=None,  # help texts say "[default: ...]" literally
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"vitsweep {version('vitsweep')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print vitsweep's version and exit.")] = False,
) -> None:
    """Hyperparameter sweeps for Vision Transformers trained from scratch.

    The workflow, in order: run a sweep; watch it (trials, studies, dashboard, ui); report on it;
    promote its best configs to full-length runs with honest test accuracy. train runs one config;
    evaluate, bench and export work on a trained model."""


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
    """Train one ViT: a progress bar and a line per epoch, then best val and test accuracy.

    Example: vitsweep train sweeps/cpu_recipe.yaml --set train.time_limit=600"""
    from vitsweep.train.config import load_config

    _folder(run_dir, "--run-dir")
    if config is None and resume is None:
        raise VitsweepError("give a config file (vitsweep train sweeps/train_smoke.yaml) or --resume RUN_DIR")
    # The config first: a bad one is answered before torch is imported.
    cfg = load_config(config if config is not None else resume / "config.yaml", set_ or [])  # type: ignore[operator]

    from vitsweep import console
    from vitsweep.train.checkpoint import choose_run_dir
    from vitsweep.train.loop import train as run_train

    _threads(threads)
    run_dir = choose_run_dir(run_dir, resume, cfg.train.checkpoint, (config or Path("run")).stem,
                             time.strftime("%Y%m%d-%H%M%S"))
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
    if cfg.train.checkpoint and (run_dir / "best.pt").is_file():
        next_step(f"vitsweep evaluate {run_dir / 'best.pt'}")


def _model_ref(ref: Optional[str], champion: bool, study: Optional[str], tracking_uri: Optional[str]) -> str:
    from vitsweep.tracking.artifacts import model_ref

    return model_ref(ref, champion, study, tracking_uri)


@app.command()
def evaluate(
    ref: RefArgument = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder [default: storage/eval/NAME].")] = None,
    fp8: Annotated[bool, typer.Option("--fp8", help="Also evaluate with simulated FP8 (E4M3) weights.")] = False,
    device: DeviceOption = "auto",
    tracking_uri: TrackingUriOption = None,
    threads: ThreadsOption = None,
    champion: ChampionOption = False,
    study: ChampionStudyOption = None,
) -> None:
    """Test-split top-1, loss, per-class accuracy, confusion matrix and a prediction grid.

    Example: vitsweep evaluate storage/runs/cpu_recipe-20261125-1700/best.pt"""
    from vitsweep.trained.evaluate import format_summary, run_evaluate

    _tracking(tracking_uri)
    _folder(out, "--out")
    _threads(threads)
    ref = _model_ref(ref, champion, study, tracking_uri)
    if _existing_ref(ref):
        typer.echo(f"evaluating {ref} on its test split (loading the model and the data first)...", err=True)
    print(format_summary(run_evaluate(ref, out=out, device=device, fp8=fp8, tracking_uri=tracking_uri)))
    next_step(f"vitsweep bench {ref}", f"vitsweep export {ref}")


@app.command()
def bench(
    ref: RefArgument = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,4,16,64,128",
    device: DeviceOption = "auto",
    out: Annotated[Optional[Path], typer.Option(help="Output folder [default: storage/bench/NAME].")] = None,
    min_time: Annotated[float, typer.Option(help="Seconds of timed passes per batch size (at least 5 passes).")] = 1.0,
    threads: ThreadsOption = None,
    tracking_uri: TrackingUriOption = None,
    champion: ChampionOption = False,
    study: ChampionStudyOption = None,
) -> None:
    """Inference latency (median, p90) and images/s by batch size: bench.json and bench.html.

    Example: vitsweep bench storage/runs/NAME/best.pt --batch-sizes 1,16,128"""
    from vitsweep.trained.bench import format_summary, parse_batch_sizes, run_bench

    _tracking(tracking_uri)
    _folder(out, "--out")
    sizes = parse_batch_sizes(batch_sizes)
    ref = _model_ref(ref, champion, study, tracking_uri)
    if _existing_ref(ref):
        typer.echo(f"benchmarking {ref} at batch sizes {', '.join(map(str, sizes))} (~{min_time:g} s of timed "
                   f"passes each, after warm-up)...", err=True)
    print(format_summary(run_bench(ref, sizes, device=device, out=out, min_time=min_time,
                                   threads=threads, tracking_uri=tracking_uri)))
    next_step(f"vitsweep export {ref}")


@app.command()
def export(
    ref: RefArgument = None,
    format: Annotated[str, typer.Option("--format", "-f", help="onnx or torchscript.")] = "onnx",
    out: Annotated[Optional[Path], typer.Option(help="Output folder [default: storage/export/NAME].")] = None,
    tracking_uri: TrackingUriOption = None,
    champion: ChampionOption = False,
    study: ChampionStudyOption = None,
) -> None:
    """ONNX or TorchScript file, verified against PyTorch's logits, with its config beside it as JSON.

    Example: vitsweep export storage/runs/NAME/best.pt --format onnx"""
    from vitsweep.trained.export import format_summary, run_export

    _tracking(tracking_uri)
    _folder(out, "--out")
    ref = _model_ref(ref, champion, study, tracking_uri)
    result = run_export(ref, format, out=out, tracking_uri=tracking_uri)
    print(format_summary(result))
    next_step(f"serve {result.path} (its classes, image size and normalisation are in {result.sidecar.name})")


@app.command()
def run(
    sweep: Annotated[Path, typer.Argument(help="Sweep YAML, e.g. sweeps/smoke.yaml.")],
    n_trials: Annotated[Optional[int], typer.Option("--n-trials", help="The study's total trials (all workers).")] = None,
    more: Annotated[Optional[int], typer.Option("--more", help="Run N trials more than the study holds.")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Worker processes sharing the study.")] = 1,
    storage: StorageOption = None,
    tracking_uri: SweepTrackingUriOption = None,
    set_: SetOption = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Start no new trial after this many seconds.")] = None,
) -> None:
    """Run (or continue) a sweep: a line per trial, then the best trial and counts by state.

    Example: vitsweep run sweeps/cifar10_cpu.yaml --workers 2"""
    from vitsweep.sweep.spec import load_sweep
    from vitsweep.train.config import parse_overrides

    if more is not None and (more < 1 or n_trials is not None):
        raise VitsweepError(f"--more {more}: must be >= 1" if more < 1 else
                            "--more and --n-trials: give one (--n-trials is the study's total, --more adds to it)")
    # The sweep file first: a bad one is answered before torch, Optuna and MLflow are imported.
    cfg = load_sweep(sweep, parse_overrides(set_ or [])).with_overrides(n_trials=n_trials, timeout=timeout, storage=storage,
                                           tracking_uri=tracking_uri)
    from vitsweep.sweep.runner import run_sweep

    summary = run_sweep(cfg, workers=workers, more=more)
    next_step(f"vitsweep trials --study {summary.study_name} --sort value", f"vitsweep report --study {summary.study_name}")


@app.command()
def trials(
    study: Annotated[Optional[str], typer.Option("--study", help="Study name [default: the latest].")] = None,
    storage: ReadStorageOption = None,
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Also write the table to this CSV file.")] = None,
    sort: Annotated[str, typer.Option("--sort", help="number (trial order) or value (best first).")] = "number",
    top: Annotated[Optional[int], typer.Option("--top", help="Show this many rows at most.")] = None,
) -> None:
    """Table of a study's trials: state, value, epochs, params, failure reason.

    Example: vitsweep trials --sort value --top 10"""
    from vitsweep.paths import storage_url
    from vitsweep.sweep.trials import show_trials

    name = show_trials(study, storage_url(storage), csv, sort, top)
    next_step(f"vitsweep report --study {name}", f"vitsweep best --study {name} -o best.yaml")


@app.command()
def promote(
    top: Annotated[int, typer.Option("--top", help="How many of the best completed trials (distinct configs).")],
    epochs: Annotated[int, typer.Option("--epochs", help="Full training length (the schedule stretches to it).")],
    study: Annotated[Optional[str], typer.Option("--study", help="Study name [default: the latest].")] = None,
    storage: ReadStorageOption = None,
    tracking_uri: TrackingUriOption = None,
    patience: Annotated[Optional[int], typer.Option(
        "--patience", help="Early stopping: epochs without a --min-delta val-acc gain [default: the trial's].")] = None,
    min_delta: Annotated[Optional[float], typer.Option("--min-delta", help="Smallest val-acc gain that counts.")] = None,
    seeds: Annotated[int, typer.Option("--seeds", help="Runs per config, seeds trial seed + 0..S-1.")] = 1,
    out: Annotated[Optional[Path], typer.Option("--out", help="Run folders [default: storage/promote].")] = None,
    threads: ThreadsOption = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", "-s", help="Override a key of every promoted run's config, e.g. --set data.train_limit=null "
                            "to promote on the full data after a sweep on a subset (repeatable).")] = None,
    from_scratch: Annotated[bool, typer.Option(
        "--from-scratch", help="Retrain every config from the start, even where its trial kept a trunk to continue "
                               "(wsd sweeps).")] = False,
) -> None:
    """Retrain the top trials at full length, test each best checkpoint, rank them (resumable).

    Example: vitsweep promote --top 3 --epochs 30 --set data.train_limit=null"""
    from vitsweep.train.config import parse_overrides

    _tracking(tracking_uri)
    _folder(out, "--out")
    overrides = parse_overrides(set_ or [])  # before torch and Optuna are imported
    from vitsweep.promote.retrain import DEFAULT_OUT, promote as run_promote

    _threads(threads)
    try:
        res = run_promote(top=top, epochs=epochs, study=study, storage=storage, tracking_uri=tracking_uri,
                    patience=patience, min_delta=min_delta, seeds=seeds, out_dir=out or DEFAULT_OUT,
                    overrides=overrides, from_scratch=from_scratch)
    except KeyboardInterrupt as e:
        typer.echo(f"\n{signals.describe(e)}: run the same vitsweep promote command again to continue (finished "
                   f"runs are kept, the interrupted one resumes from its last epoch)", err=True)
        raise typer.Exit(signals.exit_code(e)) from None
    next_step(f"vitsweep report --study {res.study}", f"vitsweep evaluate --champion --study {res.study}")


@app.command()
def report(
    study: Annotated[Optional[str], typer.Option("--study", help="Study name [default: the latest].")] = None,
    storage: ReadStorageOption = None,
    tracking_uri: TrackingUriOption = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="HTML file [default: storage/reports/STUDY.html].")] = None,
    promote_dir: Annotated[Optional[Path], typer.Option(
        "--promote-dir", help="vitsweep promote's --out, for the leaderboard [default: storage/promote].")] = None,
) -> None:
    """One self-contained HTML page of a study's plots, also logged to its MLflow parent run.

    Example: vitsweep report --study cifar10_cpu"""
    from vitsweep.report.page import write_report

    _tracking(tracking_uri)
    res = write_report(study, storage, tracking_uri, out, promote_dir)
    if res.promotion:
        next_step(f"vitsweep evaluate models:/vitsweep-{res.study}@champion")
    else:
        next_step(f"vitsweep promote --study {res.study} --top 3 --epochs 30")


@app.command()
def dashboard(
    storage: ReadStorageOption = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on; it must be free.")] = 8080,
) -> None:
    """Serve optuna-dashboard on the sweep storage.

    Example: vitsweep dashboard --port 8080"""
    from vitsweep.paths import storage_url
    from vitsweep.servers import dashboard as serve

    serve(storage_url(storage), host, port)


@app.command()
def ui(
    tracking_uri: TrackingUriOption = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on; it must be free.")] = 5000,
) -> None:
    """Serve the MLflow UI (and REST API) on the sweeps' tracking store.

    Example: vitsweep ui --port 5000"""
    from vitsweep.paths import tracking_uri as resolve_tracking
    from vitsweep.servers import ui as serve

    _tracking(tracking_uri)
    raise typer.Exit(serve(resolve_tracking(tracking_uri), host, port))


app.add_typer(submit_app, name="submit")
app.add_typer(studies_app, name="studies")
app.command("storage-proxy")(storage_proxy)
app.command()(best)
app.command()(stop)


def main() -> None:
    signals.exit_promptly()
    plain_warnings()
    signals.install()
    try:
        app()
    except KeyboardInterrupt as e:
        print(signals.describe(e), file=sys.stderr)
        sys.exit(signals.exit_code(e))


if __name__ == "__main__":
    main()
