"""vitsweep: hyperparameter sweeps for Vision Transformers trained from scratch."""

__version__ = "0.1.0"
