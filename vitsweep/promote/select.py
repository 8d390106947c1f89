"""Which trials a promotion retrains: the study (``--study`` or the latest), then the top-k
COMPLETE trials by the study's metric and direction. Pruned, failed and running trials are skipped,
and so is a trial whose trainer config is identical to a better ranked one (a duplicate). Equal
values are ordered by trial number (the earlier trial wins). Every pick and skip has a line saying why.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from vitsweep.paths import redact
from vitsweep.train.config import Config
from vitsweep.errors import VitsweepError, one_line
from vitsweep.sweep.space import describe_params
from vitsweep.sweep.storage import latest_study, load_study, open_storage
from vitsweep.sweep.study import sweep_of, trial_config
from vitsweep.sweep.trials import describe_counts, state_counts
from vitsweep.sweep.spec import SweepConfig
from vitsweep.tracking.tags import REASON_ATTR, RUN_ATTR, RUN_DIR_ATTR
from vitsweep.train.checkpoint import LAST
from vitsweep.units import fmt_metric


def choose_study(name: str | None, storage: str, out: Callable[[str], None]) -> optuna.Study:
    """``name``, or the latest study (:func:`~vitsweep.sweep.storage.latest_study`), said in a line."""
    if name is not None:
        return load_study(name, storage)
    chosen = latest_study(open_storage(storage), storage)
    out(f"study {chosen} (the latest in {redact(storage)}; choose another with --study)")
    return load_study(chosen, storage)


@dataclass
class Candidate:
    rank: int  # 1 = best
    number: int
    value: float
    params: dict[str, Any]
    config: Config  # the trial's exact trainer config
    source_run_id: str | None
    trunk: Path | None = None  # the trial's kept last.pt (a constant-lr trunk promote can continue)

    @property
    def describe(self) -> str:
        return describe_params(self.params)


@dataclass
class Selection:
    study: str
    metric: str
    direction: str
    picked: list[Candidate]
    lines: list[str]  # every trial's line: the promotion run's MLflow note keeps them all
    sweep: SweepConfig  # the sweep the study ran (parsed once)

    def terminal_lines(self, shown: int = 3) -> list[str]:
        """:attr:`lines` for a terminal: pruned trials in one line, the first ``shown`` trials
        ranked below --top, then how many more (a 400-trial study is not 400 lines)."""
        pruned, below, out = [], [], []
        for line in self.lines:
            if line.startswith("skipped trial ") and ": pruned" in line:
                pruned.append(line.split()[2].rstrip(":"))
            elif line.startswith("not picked: "):
                below.append(line)
            else:
                out.append(line)
        if pruned:
            out.append(f"skipped {len(pruned)} pruned trial(s): {', '.join(pruned)}")
        out += below[:shown]
        if len(below) > shown:
            out.append(f"not picked: {len(below) - shown} more trial(s) ranked lower (all listed in the promotion "
                       f"run's MLflow note)")
        return out


def select_trials(study: optuna.Study, top: int) -> Selection:
    """The ``top`` best COMPLETE trials with distinct trainer configs; lines say what was picked,
    what was skipped, and why. Raises VitsweepError when there are fewer than ``top``."""
    if top < 1:
        raise VitsweepError(f"--top {top}: must be >= 1")
    sweep = sweep_of(study)
    metric, direction = sweep.study.metric, study.direction.name.lower()
    maximize = direction == "maximize"
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                and math.isfinite(t.value)]
    lines = [line for t in trials if (line := _skipped(t, t in complete))]
    if not complete:
        have = describe_counts(state_counts(trials)) or "no trials"
        raise VitsweepError(f"study {study.study_name} has no completed trials ({have}); nothing to promote. "
                            f"Run (or continue) the sweep until some trials complete")
    ordered = sorted(complete, key=lambda t: ((-t.value if maximize else t.value), t.number))
    unique = _distinct(sweep, ordered, metric, lines)
    if top > len(unique):
        listing = ", ".join(str(t.number) for t, _ in unique) or "none"
        raise VitsweepError(f"--top {top}: study {study.study_name} has only {len(unique)} completed trial(s) "
                            f"with distinct configs (trials {listing}); use --top {max(len(unique), 1)} "
                            f"or run more trials")
    picked: list[Candidate] = []
    best_word = "highest" if maximize else "lowest"
    for rank, (t, cfg) in enumerate(unique, 1):
        if rank > top:
            lines.append(f"not picked: trial {t.number} ({metric} {fmt_metric(t.value, metric)}, rank {rank} > --top {top})")
            continue
        ties = [u.number for u, _ in unique if u.value == t.value and u.number != t.number]
        why = f"rank {rank}: {metric} {fmt_metric(t.value, metric)}, {'the ' + best_word if rank == 1 else 'next ' + best_word}"
        if ties:
            why += f"; tied with trial(s) {', '.join(map(str, ties))}, the lower trial number ranks first"
        lines.insert(len(picked), f"picked trial {t.number} ({why}): {describe_params(t.params)}")
        picked.append(Candidate(rank, t.number, float(t.value), dict(t.params), cfg, t.user_attrs.get(RUN_ATTR),
                                _trunk(t)))
    lines.insert(0, f"selection from study {study.study_name}: {len(complete)} completed of {len(trials)} trial(s), "
                    f"{metric} {direction}d, top {top}")
    return Selection(study.study_name, metric, direction, picked, lines, sweep)


def _trunk(t: FrozenTrial) -> Path | None:
    """The trunk checkpoint a complete trial left, if any (wsd sweeps keep it)."""
    folder = t.user_attrs.get(RUN_DIR_ATTR)
    path = Path(folder) / LAST if folder else None
    return path if path is not None and path.is_file() else None


def _skipped(t: FrozenTrial, usable: bool) -> str:
    """Why trial ``t`` cannot be promoted ("" when it can)."""
    if t.state == TrialState.COMPLETE and not usable:
        return f"skipped trial {t.number}: complete but its value is not finite ({t.value})"
    if t.state == TrialState.PRUNED:
        return f"skipped trial {t.number}: pruned after {len(t.intermediate_values)} epoch(s)"
    if t.state == TrialState.FAIL:
        return f"skipped trial {t.number}: failed ({t.user_attrs.get(REASON_ATTR) or 'no reason recorded'})"
    if t.state in (TrialState.RUNNING, TrialState.WAITING):
        return f"skipped trial {t.number}: {t.state.name.lower()}, not finished"
    return ""


def _distinct(sweep: SweepConfig, ordered: list[FrozenTrial], metric: str,
              lines: list[str]) -> list[tuple[FrozenTrial, Config]]:
    """The trials in rank order with their configs, less those whose config a better one has."""
    unique: list[tuple[FrozenTrial, Config]] = []
    seen: dict[str, int] = {}
    for t in ordered:
        try:
            cfg = trial_config(sweep, t)
        except VitsweepError as e:
            lines.append(f"skipped trial {t.number}: its config cannot be rebuilt ({one_line(e)})")
            continue
        key = json.dumps(cfg.to_dict(), sort_keys=True)
        if key in seen:
            lines.append(f"skipped trial {t.number}: {metric} {fmt_metric(t.value, metric)}, same trainer config as trial "
                         f"{seen[key]} (ranked higher), a duplicate")
            continue
        seen[key] = t.number
        unique.append((t, cfg))
    return unique
