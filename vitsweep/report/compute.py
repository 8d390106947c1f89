"""Compute spent: the epochs a sweep trained against an unpruned sweep of the same trials."""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import TrialState


@dataclass
class ComputeSpent:
    """Epochs the sweep trained against an unpruned sweep of the same trials.

    Only trials that trained count (COMPLETE and PRUNED): ``epochs_run`` is the sum of the epochs
    each reported, ``epochs_full`` is ``trials * trial_epochs`` (every trial run to the end).
    Failed trials are listed apart (``failed_epochs``): pruning has no part in them.
    """

    trial_epochs: int
    trials: int
    complete: int
    pruned: int
    epochs_run: int
    epochs_full: int
    pruned_epochs_run: int  # epochs the pruned trials ran before they were stopped
    failed: int = 0
    failed_epochs: int = 0

    @property
    def epochs_saved(self) -> int:
        return self.epochs_full - self.epochs_run

    @property
    def saving(self) -> float:
        """Fraction of the unpruned sweep's epochs not run (0 when nothing trained)."""
        return self.epochs_saved / self.epochs_full if self.epochs_full else 0.0

    def line(self) -> str:
        return (f"compute: {self.epochs_run} of {self.epochs_full} epochs run ({self.trials} trials x "
                f"{self.trial_epochs} epochs unpruned); pruning saved {self.epochs_saved} epochs "
                f"({self.saving:.1%}); {self.pruned} trial(s) pruned")


def compute_spent(study: optuna.Study, trial_epochs: int) -> ComputeSpent:
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    pruned = [t for t in done if t.state == TrialState.PRUNED]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    return ComputeSpent(
        trial_epochs=trial_epochs, trials=len(done), complete=len(done) - len(pruned), pruned=len(pruned),
        epochs_run=sum(len(t.intermediate_values) for t in done), epochs_full=len(done) * trial_epochs,
        pruned_epochs_run=sum(len(t.intermediate_values) for t in pruned),
        failed=len(failed), failed_epochs=sum(len(t.intermediate_values) for t in failed))
