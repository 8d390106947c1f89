"""Samplers by name: one table (``sampler.name`` -> how to build it from the sweep). The sweep
file is validated against this table and the study is built from it, so adding a sampler is one
entry here and an unknown name can never fall through to another sampler. Optuna is imported
inside the builders: validating a sweep file does not import it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import optuna

    from vitsweep.sweep.spec import SweepConfig


@dataclass(frozen=True)
class SamplerKind:
    build: Callable[[SweepConfig, int | None], optuna.samplers.BaseSampler]
    settings: tuple[str, ...]  # the sampler.* keys it reads besides name
    about: str


def _tpe(sweep: SweepConfig, seed: int | None) -> optuna.samplers.BaseSampler:
    import optuna

    from vitsweep.sweep.storage import experimental_ok

    s = sweep.sampler
    with experimental_ok():
        return optuna.samplers.TPESampler(n_startup_trials=s.n_startup_trials, multivariate=s.multivariate,
                                          group=s.group, constant_liar=s.constant_liar, seed=seed)


def _random(sweep: SweepConfig, seed: int | None) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _grid(sweep: SweepConfig, seed: int | None) -> optuna.samplers.BaseSampler:
    import optuna

    from vitsweep.sweep.grid import grid

    return optuna.samplers.GridSampler(grid(sweep.space), seed=seed)


SAMPLERS: dict[str, SamplerKind] = {
    "tpe": SamplerKind(_tpe, ("n_startup_trials", "multivariate", "group", "constant_liar"),
                       "Optuna's TPE (multivariate, grouped for conditional spaces, constant liar for parallel workers)"),
    "random": SamplerKind(_random, (), "uniform random sampling"),
    "grid": SamplerKind(_grid, (), "every combination of the space's values (floats need a step)"),
}


def build_sampler(sweep: SweepConfig, seed: int | None) -> optuna.samplers.BaseSampler:
    return SAMPLERS[sweep.sampler.name].build(sweep, seed)
