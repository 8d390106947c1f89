"""The ``vitsweep`` command. Each command parses its options, then calls one function."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from vitsweep.errors import VitsweepError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Hyperparameter sweeps for Vision Transformers trained from scratch.",
)

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config key: --set model.patch_size=8 (repeatable)."),
]


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Argument(help="Trainer config YAML (optional with --resume).")] = None,
    set_: SetOption = None,
    run_dir: Annotated[Optional[Path], typer.Option(help="Where checkpoints go [default: storage/runs/NAME-TIME].")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue a killed run from RUN_DIR/last.pt.")] = None,
) -> None:
    """Train one ViT: a progress bar and a line per epoch, then best val and test accuracy."""
    from vitsweep import console
    from vitsweep.config import load_config
    from vitsweep.trainer import train as run_train

    if config is None and resume is None:
        raise VitsweepError("give a config file (vitsweep train sweeps/train_smoke.yaml) or --resume RUN_DIR")
    cfg = load_config(config if config is not None else resume / "config.yaml", set_ or [])  # type: ignore[operator]
    if resume is not None:
        run_dir = resume
    elif run_dir is None:
        run_dir = Path("storage/runs") / f"{(config or Path('run')).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    console.err(("resuming " if resume else "training ") + console.describe(cfg) + f"\nrun dir: {run_dir}")
    result = run_train(cfg, console.epoch_line(cfg.train.epochs), run_dir=run_dir, resume=resume is not None, progress=True)
    print(console.summary(result))


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    return f"warning: {message}\n"


def main() -> None:
    warnings.formatwarning = _format_warning
    try:
        app()
    except VitsweepError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
