"""How runs look in a terminal: one line per epoch, a summary at the end."""

from __future__ import annotations

import shutil
import sys
from typing import Callable, TextIO

from vitsweep.train.config import Config
from vitsweep.train.loop import TrainResult


class LiveLine:
    """One status line at the bottom of a terminal, rewritten in place (on stderr): what is going on
    between two printed lines (the running trial's epoch, the best so far, the ETA). Nothing at all
    when stderr is not a terminal (a log file, CI, ``--workers N`` output): the printed lines are
    the record there. ``say``, ``err`` and ``warn`` clear it before printing."""

    active: LiveLine | None = None  # the line on screen now, if any

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(self.stream.isatty()) if enabled is None else enabled

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        width = max(20, shutil.get_terminal_size().columns - 1)  # one row: longer text would wrap and stay
        text = text if len(text) <= width else text[:width - 1] + "…"
        self.stream.write("\r\x1b[2K" + text)
        self.stream.flush()
        LiveLine.active = self

    def clear(self) -> None:
        if LiveLine.active is self:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            LiveLine.active = None

    def __enter__(self) -> LiveLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()


def _clear_live() -> None:
    if LiveLine.active is not None:
        LiveLine.active.clear()


def say(line: str) -> None:
    """A line on stdout, at once (the default ``out`` of the commands' functions)."""
    _clear_live()
    print(line, flush=True)


def err(msg: str) -> None:
    _clear_live()
    print(msg, file=sys.stderr, flush=True)


def warn(line: str) -> None:
    err(f"warning: {line}")


def describe(cfg: Config) -> str:
    m, o = cfg.model, cfg.optimizer
    return (f"ViT {m.preset} (dim {m.dim}, depth {m.depth}, heads {m.heads}, patch {m.patch_size}) · "
            f"{o.name} lr {o.lr:g} betas {list(o.betas or [])} wd {o.weight_decay:g} · "
            f"augment {cfg.augment.policy} · {cfg.train.precision} · {cfg.train.epochs} epochs "
            f"· data {cfg.data.source}:{cfg.data.root if cfg.data.source != 'synthetic' else 'generated'}")


def epoch_line(epochs: int, prefix: str = "", every: int = 1, time_limit: float | None = None,
               live: LiveLine | None = None) -> Callable[[int, dict[str, float]], None]:
    """An ``on_epoch`` callback printing: epoch, train loss, val loss/acc, lr, images/s, time.
    With ``every`` > 1 (long promoted runs): the first epoch, every ``every``-th and the last only,
    each with the best so far and an ETA for the rest of the run (``time_limit`` seconds of
    training at most); the epochs in between show on ``live`` (a terminal's status line)."""
    width = len(str(epochs))
    best = {"acc": -1.0, "epoch": 0}
    times: list[float] = []
    last_shown = [0.0]  # the elapsed seconds at the last line shown

    def show(epoch: int, m: dict[str, float]) -> None:
        times.append(m["epoch_time"])
        if m["val_acc"] > best["acc"]:
            best.update(acc=m["val_acc"], epoch=epoch)
        left = sum(times) / len(times) * (epochs - epoch)
        if time_limit is not None:
            left = min(left, max(0.0, time_limit - m["elapsed"]))
        tail = f"  | best {best['acc']:.2%} (epoch {best['epoch']})" + (
            f", at most ~{left / 60:.0f} min left" if epoch < epochs else "")
        if time_limit is not None and every > 1:  # a budget in seconds: a line per ~5% of it
            skip = epoch > 1 and m["elapsed"] < last_shown[0] + time_limit / 20 and epoch != epochs
            if not skip:
                last_shown[0] = m["elapsed"]
        else:
            skip = every > 1 and not (epoch == 1 or epoch % every == 0 or epoch == epochs)
        if skip:
            if live is not None:
                live.show(f"{prefix}epoch {epoch}/{epochs}  val_acc {m['val_acc']:.2%}" + tail)
            return
        line = (f"{prefix}epoch {epoch:>{width}}/{epochs}  train_loss {m['train_loss']:.4f}  "
                f"val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:6.2%}  lr {m['lr']:.2e}  "
                f"{m['images_per_sec']:,.0f} img/s  {m['epoch_time']:.1f}s")
        say(line + tail if every > 1 else line)

    return show


def summary(r: TrainResult) -> str:
    lines = [f"stopped: {r.stop_reason} after {r.epochs_run} epoch(s) in {r.wall_time:.1f}s "
             f"on {r.device} ({r.precision}, {r.num_params / 1e6:.2f}M params)",
             f"best val acc: {r.best_val_acc:.2%} (epoch {r.best_epoch})"]
    if r.test is not None:
        lines.append(f"test acc:     {r.test.acc:.2%} (loss {r.test.loss:.4f}, best checkpoint)")
    if r.run_dir is not None and (r.run_dir / "best.pt").is_file():
        lines.append(f"checkpoint:   {r.run_dir / 'best.pt'}")
    elif r.run_dir is not None:
        lines.append("checkpoint:   none written" + (" (train.checkpoint: false)" if not (r.run_dir / "config.yaml").is_file()
                                                     else " (no epoch finished with a finite loss)"))
    return "\n".join(lines)
