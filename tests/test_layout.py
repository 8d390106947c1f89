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


def test_every_name_written_to_optuna_or_mlflow_is_spelled_once_in_tags():
    """``vitsweep.`` tags appear as literals nowhere but tracking/tags.py, and no Optuna attr is
    read or written with a literal name."""
    offenders = []
    for p in PACKAGE.rglob("*.py"):
        if p.name == "tags.py" and p.parent.name == "tracking":
            continue
        for n, line in enumerate(p.read_text().splitlines(), 1):
            literals = re.findall(r"""["']([^"'\s]+)["']""", line)
            tag = any(re.fullmatch(r"vitsweep\.[a-z_]+", x) and x.split(".")[1] not in _MODULES for x in literals)
            attr = re.search(r"""(user_attrs|system_attrs)(\.get)?[\[(]\s*["']|set_(user|system)_attr\(\s*["']""", line)
            if tag or attr:
                offenders.append(f"{p.relative_to(PACKAGE)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# top-level modules and packages: "vitsweep.cli" in a docstring is a module, not a tag
_MODULES = {p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}


def test_tags_import_nothing_so_a_table_printer_loads_neither_torch_nor_mlflow():
    code = "import sys, vitsweep.tracking.tags; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'mlflow', 'optuna'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_module_over_400_lines_and_no_function_over_60():
    import ast

    big = []
    for p in PACKAGE.rglob("*.py"):
        src = p.read_text()
        if src.count("\n") > 400:
            big.append(f"{p.relative_to(PACKAGE)}: {src.count(chr(10))} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                big.append(f"{p.relative_to(PACKAGE)}:{node.lineno} {node.name}(): {node.end_lineno - node.lineno + 1} lines")
    assert not big, "\n".join(big)
