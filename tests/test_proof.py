"""benchmarks/proof.py end to end on tiny generated data: the sweep, its champion as a file, and the
champion and a recipe trained side by side at the same budget, each with its validation and test
accuracy; the outcome kept as JSON. (Its real run is time-based and belongs on an idle machine:
README, "Fidelity".)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.helpers import REPO, sweep_dict, tiny_dict

pytestmark = pytest.mark.slow


def test_the_proof_sweeps_then_trains_champion_and_recipe_side_by_side(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(sweep_dict(tmp_path, name="proof", n_trials=3)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_dict(train={"epochs": 2})))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "proof.py"), "--sweep", str(sweep),
                           "--recipe", str(recipe), "--minutes", "0.05", "--workers", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]  # the study where the sweep file keeps it, found by best
    record = json.loads((out / "proof.json").read_text())
    assert record["study"] == "proof" and set(record["arms"]) == {"champion", "recipe"}
    assert record["champion_enqueued"] is False  # the sampler's own find (the file enqueues nothing)
    for name, arm in record["arms"].items():
        assert arm["epochs"] >= 1 and 0 < arm["best_val_acc"] <= 1 and arm["test_acc"] is not None, name
        assert arm["minutes"] < 1  # the same time limit for both: 3 s of training
        assert (out / name / "best.pt").is_file()
    champion = yaml.safe_load((out / "champion.yaml").read_text())
    assert champion["data"]["source"] == "synthetic"  # the best trial's own trainer config
    lines = done.stdout.splitlines()
    assert any(line.startswith("champion ") for line in lines) and any(line.startswith("recipe ") for line in lines)
    assert "wins on validation by" in done.stdout
    if "champion wins" in done.stdout:
        candidate = (out / "cpu_recipe.yaml").read_text()
        assert candidate.startswith("# The CPU recipe, found by vitsweep")
        final = yaml.safe_load(candidate)  # the budget it won at, not the trial's
        assert final["train"]["time_limit"] == 3 and final["schedule"]["by_time"] and final["data"]["train_limit"] is None
