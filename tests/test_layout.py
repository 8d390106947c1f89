"""The architecture's rules, checked: the training half imports neither Optuna nor MLflow, and
MLflow has one home (vitsweep/tracking)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vitsweep"


def test_the_training_half_imports_neither_optuna_nor_mlflow():
    code = ("import sys, vitsweep.train, vitsweep.train.data, vitsweep.train.checkpoint; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'optuna', 'mlflow'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_only_the_tracking_package_imports_mlflow():
    importers = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if re.search(r"^\s*(import mlflow|from mlflow)", p.read_text(), re.M)}
    assert importers and all(p.startswith("tracking/") for p in importers), importers
