"""``enqueue:`` in a sweep file: points of the space a new study tries first (the hand recipe the
sweep is to beat), validated like the rest of the file, queued once however often the sweep runs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.helpers import sweep_dict
from tests.test_sweep_space import sweep_raw
from vitsweep.errors import ConfigError
from vitsweep.sweep.runner import run_sweep
from vitsweep.sweep.spec import build_sweep
from vitsweep.sweep.storage import load_study

ADAN = {"optimizer": "adan", "lr": 2e-3, "wd": 0.03, "b1": 0.045, "b2": 0.12, "b3": 0.02, "patch": 4, "depth": 2,
        "precision": "fp32", "augment": "basic"}


def test_a_new_study_trains_its_enqueued_points_first_and_a_rerun_does_not_queue_them_again(tmp_path):
    point = {"optimizer": "adamw", "lr": 0.002}  # helpers.SPACE: b3 is sampled only with adan
    raw = sweep_dict(tmp_path, name="eq", n_trials=2, enqueue=[point], tracking={"uri": "none"})
    run_sweep(build_sweep(raw), out=lambda _: None)
    study = load_study("eq", f"sqlite:///{tmp_path}/optuna.db")
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 2 and trials[0].params == point  # trained as given, before any sampled trial
    assert trials[0].state.is_finished() and trials[0].value is not None
    run_sweep(build_sweep(raw), out=lambda _: None, more=1)  # resumed: the point is not queued again
    params = [t.params for t in load_study("eq", f"sqlite:///{tmp_path}/optuna.db").get_trials(deepcopy=False)]
    assert len(params) == 3 and params.count(point) == 1


def test_best_says_when_the_champion_is_an_enqueued_point_and_not_one_the_sampler_found(tmp_path):
    from vitsweep.sweep.best import best_config

    point = {"optimizer": "adamw", "lr": 0.002}
    raw = sweep_dict(tmp_path, name="kept", n_trials=1, enqueue=[point], tracking={"uri": "none"})
    run_sweep(build_sweep(raw), out=lambda _: None)
    url = f"sqlite:///{tmp_path}/optuna.db"
    _, about, text = best_config("kept", url)
    assert "an enqueued point" in about and text.partition("\n")[0].endswith("the sweep kept its starting point.")
    raw = sweep_dict(tmp_path, name="found", n_trials=1, tracking={"uri": "none"})
    run_sweep(build_sweep(raw), out=lambda _: None)
    assert "enqueued" not in best_config("found", url)[1]


def test_an_interrupted_enqueued_trial_is_requeued_still_marked_as_enqueued():
    import optuna

    from vitsweep.sweep.resume import requeue
    from vitsweep.sweep.trials import trial_rows
    from vitsweep.tracking.tags import REASON_ATTR

    study = optuna.create_study()
    study.enqueue_trial({"lr": 0.002})
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    trial.set_user_attr(REASON_ATTR, "interrupted (SIGTERM); re-queued")  # what a stopped sweep does
    requeue(trial)  # with its running trials
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    again = study.get_trials(deepcopy=False)[1]
    assert again.params == {"lr": 0.002} and again.system_attrs["fixed_params"] == {"lr": 0.002}
    assert [r["reason"] for r in trial_rows(study)] == [
        "enqueued; interrupted (SIGTERM); re-queued; retried as trial 1", "enqueued"]


def test_an_enqueued_point_builds_the_config_it_names_and_round_trips():
    sweep = build_sweep(sweep_raw(enqueue=[ADAN]))
    assert sweep.enqueue == (ADAN,)
    assert build_sweep(sweep.to_dict()) == sweep  # what the study stores is what it parses back


@pytest.mark.parametrize(
    ("point", "needle"),
    [
        ({**ADAN, "lrr": 1e-3}, "unknown key 'enqueue[0].lrr'; did you mean 'enqueue[0].lr'?"),
        ({**ADAN, "lr": 0.5}, "enqueue[0].lr = 0.5: must be a number in [0.0001, 0.002]"),
        ({**ADAN, "wd": 0.025}, "enqueue[0].wd = 0.025: must be a number in [0.0, 0.05] on steps of 0.01"),
        ({**ADAN, "augment": "heavy"}, "enqueue[0].augment = 'heavy': must be one of ['none', 'basic', 'extended']"),
        ({k: v for k, v in ADAN.items() if k != "b2"}, "enqueue[0]: missing b2"),
        ({**ADAN, "optimizer": "adamw", "beta1": 0.9}, "enqueue[0].b1: not sampled with these values"),
    ],
)
def test_a_bad_enqueued_point_names_the_param_and_what_it_may_be(point, needle):
    with pytest.raises(ConfigError) as e:
        build_sweep(sweep_raw(enqueue=[point]))
    assert needle in str(e.value)


def test_enqueue_is_refused_with_the_grid_sampler_which_tries_every_point_anyway():
    raw = sweep_raw(space={"o": {"path": "optimizer.name", "choices": ["adan", "adamw"]}},
                    sampler={"name": "grid"}, enqueue=[{"o": "adan"}])
    with pytest.raises(ConfigError, match=r"enqueue: not with sampler grid"):
        build_sweep(raw)


def test_enqueue_must_be_a_list_of_points():
    with pytest.raises(ConfigError, match=r"enqueue: expected a list of mappings"):
        build_sweep(sweep_raw(enqueue={"lr": 1e-3}))


def test_an_enqueued_point_the_trainer_refuses_is_a_file_error_not_a_failed_trial(tmp_path):
    raw = sweep_raw(space={"heads": {"path": "model.heads", "choices": [2, 3]}}, enqueue=[{"heads": 3}])
    raw["trainer"]["model"] = {**raw["trainer"].get("model", {}), "dim": 32}
    raw["storage"] = {"url": f"sqlite:///{tmp_path}/store/optuna.db"}
    raw["tracking"] = {"uri": f"sqlite:///{tmp_path}/store/mlflow.db"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "vitsweep", "run", str(path)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "enqueue[0]: not a valid trainer config" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == [path]  # no storage/, no databases


def test_the_cpu_sweep_starts_from_the_recipe():
    """cifar10_cpu.yaml's header says its first trial is cpu_recipe.yaml (since 2026-12-04 the point
    the sweep found, which the space holds exactly): the enqueued point's config matches the recipe's
    on everything the space sets."""
    from pathlib import Path

    from vitsweep.sweep.space import config_for_params
    from vitsweep.sweep.spec import load_sweep
    from vitsweep.train.config import load_config

    repo = Path(__file__).resolve().parents[1]
    sweep = load_sweep(repo / "sweeps" / "cifar10_cpu.yaml")
    assert len(sweep.enqueue) == 1
    first = config_for_params(sweep, sweep.enqueue[0]).to_dict()
    recipe = load_config(repo / "sweeps" / "cpu_recipe.yaml").to_dict()
    def at(d: dict, key: str):
        for part in key.split("."):
            d = d[part]
        return d

    differ = {p.key for p in sweep.space if at(first, p.key) != at(recipe, p.key)}
    assert differ == set()
