"""``vitsweep best``: the best trial's full trainer config as a YAML file that ``vitsweep train``
runs as is (the sampled values filled into the sweep's trainer config, as the trial ran)."""

from __future__ import annotations

from pathlib import Path

import yaml

from vitsweep.errors import VitsweepError
from vitsweep.paths import atomic_write, redact, storage_url
from vitsweep.sweep.space import describe_params
from vitsweep.sweep.storage import load_study
from vitsweep.sweep.trials import metric_of
from vitsweep.tracking.tags import ENQUEUED_SYSATTR
from vitsweep.units import fmt_metric

# How vitsweep best's header (its first line) marks a champion that was queued, not sampled.
ENQUEUED = "an enqueued point"


def best_config(study_name: str | None, storage: str | None) -> tuple[str, str, str]:
    """(the study's name, a one-line description of its best trial, the YAML text with a header)."""
    from vitsweep.sweep.study import sweep_of, trial_config

    url = storage_url(storage)
    study = load_study(study_name, url)
    try:
        best = study.best_trial
    except ValueError:
        raise VitsweepError(f"study {study.study_name} in {redact(url)} has no completed trial yet: no best config; "
                            f"see vitsweep trials --study {study.study_name}") from None
    metric = metric_of(study)
    cfg = trial_config(sweep_of(study), best)
    about = (f"best trial {best.number} of study {study.study_name}, {metric} {fmt_metric(best.value, metric)} "
             f"({describe_params(best.params)})")
    if ENQUEUED_SYSATTR in best.system_attrs:  # any enqueue_trial point
        about += (f"; {ENQUEUED} (the sweep file's enqueue:, or Optuna's enqueue_trial), not one the sampler "
                  "found: the sweep kept its starting point")
    header = (f"# The {about}.\n# Its full trainer config, as the trial ran it; train it again: "
              f"vitsweep train THIS_FILE (add --set train.test=true for its test accuracy)\n")
    return study.study_name, about, header + yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def write_best(study_name: str | None, storage: str | None, out: Path | None) -> tuple[str, str]:
    """Write (or, without ``out``, print) the best config: (study name, what was written)."""
    name, about, text = best_config(study_name, storage)
    if out is None:
        print(text, end="")
        return name, about
    if out.is_dir():
        raise VitsweepError(f"-o {out}: is a folder; give a file name (e.g. {out / 'best.yaml'})")
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise VitsweepError(f"-o {out}: give a .yaml file name (vitsweep train reads YAML)")
    text = text.replace("THIS_FILE", str(out))
    atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return name, about
