"""``vitsweep studies delete NAME``: a study and what it left behind, after the user saw the list.

What goes: the study's trials in the Optuna storage; its trials folder (``trials.dir/NAME``, every
trial's checkpoints) and its promotion folder (``storage/promote/NAME``); with
``--mlflow``, every MLflow run tagged with the study (the sweep's parent, its trials, promotions
and promoted runs) and the registered model ``vitsweep-NAME``. Nothing is deleted before the user
confirmed (or gave ``--yes``); a run that is still training is refused."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from vitsweep.errors import VitsweepError
from vitsweep.paths import PROMOTE_DIR, redact, sqlite_path, storage_url, tracking_off, tracking_uri as resolve_tracking
from vitsweep.tracking.tags import TAG_STUDY


@dataclass
class Doomed:
    """Everything ``delete`` would remove, to show before asking."""

    study: str
    storage: str
    trials: int
    folders: list[Path] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)  # MLflow run ids
    model: str | None = None  # registered model name

    def describe(self) -> str:
        lines = [f"study {self.study} in {redact(self.storage)}: {self.trials} trial(s)"]
        lines += [f"folder {p} ({_size(p)})" for p in self.folders]
        if self.runs:
            lines.append(f"{len(self.runs)} MLflow run(s) tagged {TAG_STUDY}={self.study} (to MLflow's trash: "
                         f"`mlflow gc` removes them for good)")
        if self.model:
            lines.append(f"registered model {self.model}")
        return "\n".join("  " + line for line in lines)


def delete_study(name: str, storage: str | None, tracking_uri: str | None, with_mlflow: bool,
                 confirm: Callable[[str], bool]) -> Doomed | None:
    """Delete study ``name`` once ``confirm(what)`` says yes: what was deleted (None: not confirmed)."""
    import optuna

    from vitsweep.sweep.storage import load_study, open_storage

    url = storage_url(storage)
    study = load_study(name, url)
    trials = study.get_trials(deepcopy=False)
    running = [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    if running:
        raise VitsweepError(f"study {name}: trial(s) {', '.join(map(str, running[:10]))} still running; stop the "
                            f"sweep first (vitsweep stop {name}, or Ctrl-C its workers), then delete it")
    doomed = Doomed(name, url, len(trials), _folders(study))
    client = _mlflow_findings(doomed, resolve_tracking(tracking_uri)) if with_mlflow else None
    if not confirm(doomed.describe()):
        return None
    if client is not None:  # MLflow first, the study last: a failure part-way can be run again
        for run_id in doomed.runs:
            client.delete_run(run_id)
        if doomed.model:
            client.delete_registered_model(doomed.model)
    left = []
    for p in doomed.folders:
        shutil.rmtree(p, ignore_errors=True)
        if p.exists():
            left.append(str(p))
    if left:
        raise VitsweepError(f"study {name}: could not delete {', '.join(left)} (permissions?); the study itself "
                            f"was kept, so this command can be run again")
    optuna.delete_study(study_name=name, storage=open_storage(url))
    return doomed


def _folders(study) -> list[Path]:  # noqa: ANN001 - an optuna.Study
    """The study's own folders: its trials folder (trials.dir/NAME, which holds every trial's
    checkpoints) and its promotion folder. Nothing outside them is touched."""
    roots = [_trials_folder(study), PROMOTE_DIR / study.study_name]
    return [r.resolve() for r in roots if r is not None and r.is_dir()]


def _trials_folder(study) -> Path | None:  # noqa: ANN001 - an optuna.Study
    """The folder the study's trials kept their checkpoints under (the sweep's trials.dir/NAME)."""
    from vitsweep.sweep.study import sweep_of

    try:
        return Path(sweep_of(study).trials.dir) / study.study_name
    except VitsweepError:  # a stored sweep this version cannot read: the trials' own run_dir still count
        return None


def _mlflow_findings(doomed: Doomed, uri: str):  # noqa: ANN202 - an MlflowClient
    """Fill in the study's MLflow runs and registered model; the client that can delete them."""
    from vitsweep.tracking.client import study_footprint

    if tracking_off(uri):
        raise VitsweepError("--mlflow with --tracking-uri none: give the MLflow store the study's runs are in")
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise VitsweepError(f"--mlflow: no MLflow store at {uri} ({path} does not exist); give the store the "
                            f"study's runs are in with --tracking-uri")
    client, doomed.runs, doomed.model = study_footprint(uri, doomed.study)
    return client


def _size(path: Path) -> str:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return f"{total / 2**20:.1f} MiB"
