"""benchmarks/fidelity.py, the panel that decides which trial budget a sweep ships with: its cached
runs are the runs its panel describes (so a reading never mixes two versions of a config), every
planned run is a valid trainer config, and its table scores a fidelity the way its header says."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.helpers import REPO
from vitsweep.train.config import build_config


@pytest.fixture(scope="module")
def fid():
    spec = importlib.util.spec_from_file_location("fidelity_bench", REPO / "benchmarks" / "fidelity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_every_planned_run_is_a_valid_trainer_config_at_its_budget(fid):
    for config, fidelity, seed in fid.plan():
        cfg = build_config(fid.trainer_dict(config, fidelity, seed), source="panel")
        assert cfg.train.seed == seed and cfg.train.precision == "fp32"
        assert cfg.data.train_limit == (10000 if fidelity == "subset3" else None)
        assert cfg.train.epochs == fid.FINAL_EPOCHS or fidelity not in ("final", "wsd_final")


def test_the_cached_runs_trained_what_the_panel_describes(fid):
    """Editing BASE or a panel entry after its runs are cached would silently mix two configs in one
    reading; defaults added to the trainer since a run was cached are filled in before comparing."""
    records = fid.load_cache()
    assert records, "benchmarks/fidelity_runs.json holds the panel's runs"
    planned = {fid.key_of(*item) for item in fid.plan()}
    for key, r in records.items():
        assert key in planned, f"{key} is cached but no longer in the panel"
        stored = build_config(r["trainer"], source=key).to_dict()
        assert stored == fid.trainer_dict(r["config"], r["fidelity"], r["seed"]), key
        assert r["precision"] == "fp32" and r["curve"] and r["cpu"]


def _record(fid, config: str, fidelity: str, accs: list[float]) -> dict:
    curve = [{"epoch": e, "val_acc": a, "cpu_s": 60.0 * e} for e, a in enumerate(accs, 1)]
    return {"key": fid.key_of(config, fidelity, 0), "config": config, "fidelity": fidelity, "seed": 0, "curve": curve}


def test_the_table_scores_a_fidelity_against_the_final_ranking(fid):
    finals = {"p0": 0.70, "p1": 0.60, "p2": 0.50, "p3": 0.40}
    records = {}
    for c, acc in finals.items():
        records[f"{c}/final"] = _record(fid, c, "final", [acc - 0.1] * (fid.FINAL_EPOCHS - 1) + [acc])
        # full2 keeps the final order; subset3 reverses it by its last epoch
        records[f"{c}/full2"] = _record(fid, c, "full2", [acc / 3, acc / 2])
        records[f"{c}/subset3"] = _record(fid, c, "subset3", [0.2, 0.2, 1.0 - acc])
    rows = {r["reading"]: r for r in fid.table(records)}
    good, bad = rows["full2@2"], rows["subset3@3"]
    assert good["n"] == 4 and good["spearman"] == pytest.approx(1.0) and good["kendall"] == pytest.approx(1.0)
    assert good["pick"] == "p0" and good["regret"] == pytest.approx(0.0) and good["top3"] == 1.0
    assert good["cpu_min"] == pytest.approx(2.0)  # the reading's epoch 2, one CPU-minute an epoch
    assert bad["spearman"] == pytest.approx(-1.0) and bad["pick"] == "p3"
    assert bad["regret"] == pytest.approx(-0.30) and bad["top3"] == pytest.approx(2 / 3)
    assert "full1@1" not in rows  # no full1 runs: no row


def test_the_report_reads_each_final_from_its_panel_seed(fid, monkeypatch, capsys):
    """A parity run's final (another seed of a panel config) must not replace the panel's final."""
    panel = _record(fid, "p0", "final", [0.5] * fid.FINAL_EPOCHS)
    parity = {**_record(fid, "p0", "final", [0.3] * fid.FINAL_EPOCHS), "key": fid.key_of("p0", "final", 1), "seed": 1}
    records = {r["key"]: {**r, "cpu": "test CPU"} for r in (panel, parity)}
    assert fid.panel_finals(records) == {"p0": pytest.approx(0.5)}
    monkeypatch.setattr(fid, "load_cache", lambda: records)
    fid.cmd_report(None)
    out = capsys.readouterr().out
    assert "finals cached for 1 of" in out and "p0 50.00%" in out and "30.00%" not in out.split("\n")[1]


def test_a_cooldown_branch_is_what_a_wsd_reading_reports(fid):
    record = _record(fid, "p0", "wsd3", [0.30, 0.35, 0.40])
    record["curve"][0]["cooldown_val_acc"] = 0.45
    assert fid.reading(record, 1)[0] == pytest.approx(0.45)
    assert fid.reading(record, 3)[0] == pytest.approx(0.45)  # best so far, as a trial's value
    assert fid.reading(record, 4) is None  # the run is shorter than the reading


def test_the_cpu_sweep_trains_its_trials_at_the_fidelity_the_panel_chose(fid):
    """cifar10_cpu.yaml's header cites the panel's numbers for one fidelity: its trials must be that
    fidelity (the full data, the epochs and schedule shape it names), with Hyperband counting epochs."""
    from vitsweep.sweep.spec import load_sweep

    sweep = load_sweep(REPO / "sweeps" / "cifar10_cpu.yaml")
    chosen = build_config(fid.trainer_dict("p0", "full2", 0), source="panel")
    trial = sweep.base
    assert trial.data.train_limit is None and chosen.data.train_limit is None
    assert trial.data.val_size == chosen.data.val_size
    assert trial.train.epochs == chosen.train.epochs == 2 and sweep.epochs == 2
    assert trial.schedule.name == chosen.schedule.name == "cosine" and not trial.schedule.by_time
    assert trial.schedule.horizon is None and not trial.schedule.branches
    assert sweep.pruner.name == "hyperband" and sweep.pruner.min_resource == 1
    assert "fidelity (b)" in (REPO / "sweeps" / "cifar10_cpu.yaml").read_text()


def test_a_trial_too_slow_for_the_sweeps_time_cap_completes_with_its_first_epoch(tmp_path):
    """cifar10_cpu.yaml caps its trials with train.time_limit (no by_time): a config whose second
    epoch would end past the cap stops after its first, and the study records it as complete with
    that epoch's value (not failed, not lost)."""
    import optuna

    from tests.helpers import sweep_dict
    from vitsweep.sweep.runner import run_sweep
    from vitsweep.sweep.spec import build_sweep
    from vitsweep.sweep.storage import load_study

    raw = sweep_dict(tmp_path, name="cap", n_trials=2)  # its own copy of the tiny trainer
    raw["trainer"]["train"] = {**raw["trainer"]["train"], "epochs": 2, "time_limit": 1e-3}
    raw["pruner"] = {"name": "none"}
    raw["tracking"] = {"uri": "none"}  # Optuna alone says what a user sees here
    run_sweep(build_sweep(raw), out=lambda _: None)
    trials = load_study("cap", f"sqlite:///{tmp_path}/optuna.db").get_trials(deepcopy=False)
    assert len(trials) == 2
    for t in trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert sorted(t.intermediate_values) == [1] and t.value == t.intermediate_values[1]
