"""One training run, and nothing of sweeps or tracking (imports neither Optuna nor MLflow):
``config`` -> ``data`` -> ``augment`` -> ``model`` -> ``loop`` (``train(config, on_epoch)``), with
``device`` and ``checkpoint``. ``from vitsweep.train import load_config, train`` is the trainer as
a function.

Both names are loaded on first use (PEP 562): importing a submodule such as
``vitsweep.train.config`` (the sweep file parser, the ``trials`` table) must not import torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vitsweep.train.config import load_config
    from vitsweep.train.loop import train

__all__ = ["load_config", "train"]


def __getattr__(name: str) -> Any:
    """Imported on first use: reading a config (``vitsweep.train.config``) needs no torch."""
    if name == "load_config":
        from vitsweep.train.config import load_config

        return load_config
    if name == "train":
        from vitsweep.train.loop import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
