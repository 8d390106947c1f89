"""One training run, and nothing of sweeps or tracking (imports neither Optuna nor MLflow):
``config`` -> ``data`` -> ``augment`` -> ``model`` -> ``loop`` (``train(config, on_epoch)``), with
``device`` and ``checkpoint``. ``from vitsweep.train import load_config, train`` is the trainer as
a function."""

from vitsweep.train.config import load_config
from vitsweep.train.loop import train

__all__ = ["load_config", "train"]
