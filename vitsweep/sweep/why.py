"""Why a trial was pruned, in words: the pruner's decision recomputed from the study right after
``trial.should_prune()`` said yes (Hyperband: the trial's bracket, the rung, the value it needed to
go on and its rank among the bracket's trials at that rung; median: the median it needed and its
rank among the completed trials at that epoch).

It reads Optuna's pruner internals (``HyperbandPruner``'s brackets, ``SuccessiveHalvingPruner``'s
``completed_rung_K`` system attrs); anything unexpected there gives a shorter reason, never an error.
"""

from __future__ import annotations

import math

import optuna
from optuna.pruners import HyperbandPruner, PercentilePruner, SuccessiveHalvingPruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from vitsweep.units import fmt_metric


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _rank(value: float, others: list[float], maximize: bool) -> int:
    """1 + how many of ``others`` are strictly better than ``value``."""
    return 1 + sum(1 for v in others if (v > value if maximize else v < value))


def _halving(study: optuna.Study, sub: SuccessiveHalvingPruner, trials: list[FrozenTrial], trial: FrozenTrial,
             value: float, metric: str, maximize: bool) -> str:
    rungs = [int(k.rsplit("_", 1)[1]) for k in trial.system_attrs if k.startswith("completed_rung_")]
    if not rungs:
        return ""
    rung = max(rungs)
    key = f"completed_rung_{rung}"
    others = [t.system_attrs[key] for t in trials if key in t.system_attrs and t.number != trial.number]
    n = len(others) + 1
    rank = _rank(value, others, maximize)
    where = f"rung {rung}: {metric} {fmt_metric(value, metric)} ranked {_ordinal(rank)} of {n}"
    if n <= sub._bootstrap_count:
        return f"{where}; bootstrap_count {sub._bootstrap_count} prunes until more than that many trials reach it"
    keep = max(1, n // sub._reduction_factor)
    ranked = sorted([*others, value], reverse=maximize)
    needed = ranked[keep - 1]
    return (f"{where}; needed {fmt_metric(needed, metric)} (the top {keep} of {n} go on: "
            f"1/{sub._reduction_factor} of the trials at this rung)")


def why_pruned(study: optuna.Study, trial_id: int, epoch: int, value: float, metric: str) -> str:
    """The pruner's reason for pruning the trial (``trial_id``: its storage id) at ``epoch``, where it
    reported ``value``; "" when it cannot be said."""
    try:
        trial = study._storage.get_trial(trial_id)
        pruner = study.pruner
        maximize = study.direction == StudyDirection.MAXIMIZE
        if isinstance(pruner, HyperbandPruner):
            bracket = pruner._get_bracket_id(study, trial)
            sub = pruner._pruners[bracket]
            trials = pruner._create_bracket_study(study, bracket).get_trials(deepcopy=False)
            text = _halving(study, sub, trials, trial, value, metric, maximize)
            n_brackets = len(pruner._pruners)
            return f"Hyperband bracket {bracket} of {n_brackets}, {text}" if text else f"Hyperband bracket {bracket}"
        if isinstance(pruner, SuccessiveHalvingPruner):
            return "successive halving, " + _halving(study, pruner, study.get_trials(deepcopy=False), trial, value,
                                                     metric, maximize)
        if isinstance(pruner, PercentilePruner):
            values = [v for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                      if (v := t.intermediate_values.get(epoch)) is not None and math.isfinite(v)]
            steps = [v for s, v in trial.intermediate_values.items() if s <= epoch and math.isfinite(v)]
            best = (max(steps) if maximize else min(steps)) if steps else value
            if not values:
                return ""
            import numpy as np

            q = 100 - pruner._percentile if maximize else pruner._percentile  # as Optuna's PercentilePruner
            needed = float(np.percentile(values, q))
            what = "median" if pruner._percentile == 50 else f"{pruner._percentile:g}th percentile"
            return (f"{metric} {fmt_metric(best, metric)} (its best so far) ranked "
                    f"{_ordinal(_rank(best, values, maximize))} of {len(values) + 1} at epoch {epoch}; needed "
                    f"{fmt_metric(needed, metric)}, the {what} of the {len(values)} completed trial(s) there")
    except Exception:  # noqa: BLE001 - a reason is a courtesy: never a failure
        return ""
    return ""
