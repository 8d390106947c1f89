"""Sweep files and the search space: validation before storage, each param kind, conditional betas."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from vitsweep.train.config import DEFAULT_BETAS, load_config
from vitsweep.errors import ConfigError
from tests.helpers import TRAINER
from vitsweep.sweep.space import config_for_params, suggest
from vitsweep.sweep.spec import build_sweep, load_sweep

REPO = Path(__file__).resolve().parents[1]

SPACE: dict[str, Any] = {
    "optimizer": {"path": "optimizer.name", "choices": ["adan", "adamw", "adam"]},
    "lr": {"path": "optimizer.lr", "low": 1e-4, "high": 2e-3, "log": True},
    "wd": {"path": "optimizer.weight_decay", "low": 0.0, "high": 0.05, "step": 0.01},
    "b1": {"path": "optimizer.betas[0]", "low": 0.01, "high": 0.05, "step": 0.005, "when": {"optimizer": "adan"}},
    "b2": {"path": "optimizer.betas[1]", "low": 0.05, "high": 0.15, "step": 0.01, "when": {"optimizer.name": "adan"}},
    "b3": {"path": "optimizer.betas[2]", "low": 0.005, "high": 0.03, "step": 0.005, "when": {"optimizer": "adan"}},
    "beta1": {"path": "optimizer.betas[0]", "low": 0.8, "high": 0.95, "when": {"optimizer": ["adamw", "adam"]}},
    "patch": {"path": "model.patch_size", "choices": [4, 8]},
    "depth": {"path": "model.depth", "low": 1, "high": 3},
    "precision": {"path": "train.precision", "choices": ["fp32", "bf16"]},
    "augment": {"path": "augment.policy", "choices": ["none", "basic", "extended"]},
}


def sweep_raw(**sections: Any) -> dict[str, Any]:
    raw = {"study": {"name": "t", "n_trials": 4}, "storage": {"url": "sqlite:///nowhere/optuna.db"},
           "trainer": copy.deepcopy(TRAINER), "space": copy.deepcopy(SPACE)}
    raw.update(sections)
    return raw


def test_each_kind_quantized_log_and_conditional_betas():
    sweep = build_sweep(sweep_raw())
    kinds = {p.name: p.kind for p in sweep.space}
    assert kinds == {"optimizer": "categorical", "lr": "float", "wd": "float", "b1": "float", "b2": "float",
                     "b3": "float", "beta1": "float", "patch": "categorical", "depth": "int",
                     "precision": "categorical", "augment": "categorical"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen_opt = set()
    for _ in range(40):
        trial = study.ask()
        cfg = suggest(trial, sweep)
        p = trial.params
        seen_opt.add(p["optimizer"])
        assert 1e-4 <= p["lr"] <= 2e-3 and cfg.optimizer.lr == p["lr"]
        assert math.isclose(p["wd"] / 0.01, round(p["wd"] / 0.01), abs_tol=1e-9)  # quantized
        assert isinstance(p["depth"], int) and 1 <= p["depth"] <= 3 and cfg.model.depth == p["depth"]
        assert cfg.model.patch_size == p["patch"] and cfg.augment.policy == p["augment"]
        assert cfg.train.precision == p["precision"] and cfg.train.test is False
        if p["optimizer"] == "adan":  # three betas, paper convention, only for adan
            assert {"b1", "b2", "b3"} <= p.keys() and "beta1" not in p
            assert cfg.optimizer.betas == (p["b1"], p["b2"], p["b3"])
            for k in ("b1", "b3"):
                assert math.isclose(p[k] / 0.005, round(p[k] / 0.005), abs_tol=1e-9)
        else:
            assert not {"b1", "b2", "b3"} & p.keys() and "beta1" in p
            assert cfg.optimizer.betas == (p["beta1"], DEFAULT_BETAS[p["optimizer"]][1])
        # the trial's params rebuild its full config exactly
        assert config_for_params(sweep, trial.params) == cfg
        study.tell(trial, 0.5)
    assert seen_opt == {"adan", "adamw", "adam"}
    # log sampling: the lower decade holds a fair share of the draws
    lrs = [t.params["lr"] for t in study.trials]
    assert sum(lr < 4.5e-4 for lr in lrs) >= 10


def test_config_for_params_ignores_inactive_params():
    sweep = build_sweep(sweep_raw())
    cfg = config_for_params(sweep, {"optimizer": "adamw", "lr": 1e-3, "b1": 0.03, "beta1": 0.85})
    assert cfg.optimizer.name == "adamw" and cfg.optimizer.betas == (0.85, 0.999)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"sampler": {"name": "bayes"}}, "sampler.name"),
        ({"space": {"lr": {"path": "optimizer.lr", "low": 1e-2, "high": 1e-3}}}, "space.lr: low"),
        ({"space": {"opt": {"path": "optimizer.name", "choices": []}}}, "space.opt.choices"),
        ({"space": {"x": {"path": "optimizer.momentum", "low": 0.1, "high": 0.9}}}, "optimizer.momentum"),
        ({"space": {"b": {"path": "optimizer.betas[0]", "low": 0.01, "high": 0.05, "when": {"optimizer": "adan"}}}},
         "condition on 'optimizer'"),
        ({"studdy": {"name": "x"}}, "unknown key 'studdy'"),
        ({"pruner": {"name": "hyperband", "max_resource": "auto"}}, "pruner.max_resource"),
        ({"space": {"lr": {"path": "optimizer.lr", "low": 1e-4, "high": 1e-2, "log": True, "step": 1e-4}}},
         "log and step"),
        ({"space": {"o": {"path": "optimizer.name", "choices": ["adan", "sgd"]}}}, "space.o.choices"),
        ({"space": {"lr": {"path": "optimizer.lr", "low": 1e-4, "high": 1e-2, "lgo": True}}}, "space.lr.lgo"),
    ],
)
def test_bad_sweeps_name_the_key(change, needle):
    with pytest.raises(ConfigError) as e:
        build_sweep(sweep_raw(**change))
    assert needle in str(e.value)


def test_bad_sweep_file_exits_2_and_writes_nothing(tmp_path):
    raw = sweep_raw(sampler={"name": "bayes"})
    raw["storage"] = {"url": f"sqlite:///{tmp_path}/store/optuna.db"}
    raw["tracking"] = {"uri": f"sqlite:///{tmp_path}/store/mlflow.db"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "vitsweep", "run", str(path)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "sampler.name" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == [path]  # no storage/, no databases


def test_shipped_sweeps_are_valid():
    for name in ("smoke", "adan_betas", "optimizers", "precision_augment", "patch_size", "cifar10_cpu"):
        sweep = load_sweep(REPO / "sweeps" / f"{name}.yaml")
        assert sweep.study.name == name
    adan = load_sweep(REPO / "sweeps" / "adan_betas.yaml")
    assert adan.epochs == 5 and adan.pruner.name == "hyperband" and adan.pruner.min_resource == 3
    assert adan.base.optimizer.name == "adan"
    by = {p.name: p for p in adan.space}
    assert (by["b1"].low, by["b1"].high) == (0.01, 0.05) and by["b1"].step
    assert (by["b2"].low, by["b2"].high) == (0.05, 0.15) and by["b2"].step
    assert (by["b3"].low, by["b3"].high) == (0.005, 0.03) and by["b3"].step
    assert (by["lr"].low, by["lr"].high, by["lr"].log) == (1e-4, 2e-3, True)
    assert (by["weight_decay"].low, by["weight_decay"].high) == (0.0, 0.05) and by["weight_decay"].step


def test_every_config_the_cpu_sweep_can_sample_is_valid():
    """cifar10_cpu.yaml mixes optimizers, widths, progressive resolution and patch dropout: any
    combination the sampler may draw must build a valid trainer config (no wasted trials)."""
    sweep = load_sweep(REPO / "sweeps" / "cifar10_cpu.yaml")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(60):
        trial = study.ask()
        cfg = suggest(trial, sweep)  # raises ConfigError on an impossible combination
        assert cfg.data.train_limit is None and cfg.train.epochs == 2  # fidelity (b): 2 full epochs
        study.tell(trial, 0.0)


def test_the_cpu_recipe_is_a_valid_time_limited_trainer_config():
    cfg = load_config(REPO / "sweeps" / "cpu_recipe.yaml")
    assert cfg.train.time_limit is not None and cfg.train.time_limit < 3600 and cfg.schedule.by_time
    assert cfg.data.val_size == 5000 and cfg.data.train_limit is None  # the full split
