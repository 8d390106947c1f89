"""Pruners by name: one table (``pruner.name`` -> how to build it from the sweep). The sweep file
is validated against this table and the study is built from it, so adding a pruner is one entry
here and an unknown name can never become "no pruning". Optuna is imported inside the builders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import optuna

    from vitsweep.sweep.spec import PrunerSpec, SweepConfig


@dataclass(frozen=True)
class PrunerKind:
    build: Callable[[SweepConfig], optuna.pruners.BasePruner]
    settings: tuple[str, ...]  # the pruner.* keys it reads besides name
    rungs: Callable[[PrunerSpec, int], list[int]]  # (settings, trial epochs) -> where it may prune, before the last
    about: str


def hyperband_rungs(p: PrunerSpec, epochs: int) -> list[int]:
    """The epochs at which Hyperband's brackets compare trials: min_resource x eta^k below the
    trials' epochs (a trial is never pruned after its last epoch)."""
    rungs, r = [], p.min_resource
    while r < epochs:
        rungs.append(r)
        r *= p.reduction_factor
    return rungs


def _hyperband(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    import optuna

    p = sweep.pruner  # never "auto": with auto nothing is pruned until a trial completes
    return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, max_resource=sweep.epochs,
                                          reduction_factor=p.reduction_factor, bootstrap_count=p.bootstrap_count)


def _median(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    import optuna

    p = sweep.pruner
    return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)


def _none(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.NopPruner()


def _every_epoch(p: PrunerSpec, epochs: int) -> list[int]:
    return list(range(p.n_warmup_steps + 1, epochs))


PRUNERS: dict[str, PrunerKind] = {
    "hyperband": PrunerKind(_hyperband, ("min_resource", "reduction_factor", "bootstrap_count"), hyperband_rungs,
                            "Optuna's Hyperband (successive halving in brackets; max_resource = the trials' epochs)"),
    "median": PrunerKind(_median, ("n_startup_trials", "n_warmup_steps"), _every_epoch,
                         "prune below the median of earlier trials at the same epoch"),
    "none": PrunerKind(_none, (), lambda p, epochs: [], "no pruning"),
}


def build_pruner(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    return PRUNERS[sweep.pruner.name].build(sweep)


def rungs(sweep: SweepConfig) -> list[int]:
    """The epochs at which the sweep's pruner may stop a trial."""
    return PRUNERS[sweep.pruner.name].rungs(sweep.pruner, sweep.epochs)
