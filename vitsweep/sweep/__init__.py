"""Sweeps (Optuna): ``spec`` (sweep files), ``space`` (parsing and the only ``trial.suggest_*``),
``storage`` / ``retry`` / ``locks`` (where studies live), ``study`` (a study's sweep, sampler,
pruner, set-up), ``runner`` (``vitsweep run``), ``optimize`` (the worker loop), ``objective`` (one
trial's life), ``resume`` and ``heartbeat`` (trials that run again), ``trials`` (the table), ``commands``
(vitsweep best and stop)."""
