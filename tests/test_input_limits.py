"""Bad input of any size gets a short answer (issue 24): a YAML bomb, a 50 MB or a 2 MiB file, a
huge --set value or option are refused with exit 2 and a few lines naming what and where, with no
traceback and nothing written; every value a message quotes is shortened the same way."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import optuna
import pytest
import yaml

from tests.helpers import REPO, cli, spawn_cli, sweep_dict, trainer_dict
from vitsweep import inputs
from vitsweep.errors import ConfigError
from vitsweep.inputs import brief, load_yaml
from vitsweep.sweep.spec import load_sweep
from vitsweep.sweep.storage import open_storage
from vitsweep.sweep.study import SWEEP_ATTR, stored_sweep, sweep_of
from vitsweep.train.config import build_config, load_config

TIMEOUT = 300  # seconds; a refusal takes about one here, the rest is headroom for a loaded machine


def bomb(indent: str = "  ") -> str:
    """The "billion laughs": 9 nested aliases of 9 items each (9**9 strings once expanded)."""
    lines = [f"{indent}a: &a [" + ", ".join(['"lol"'] * 9) + "]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{indent}{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def big_file(path: Path, start: str, size: int) -> Path:
    """``start`` (a real sweep or config) plus an unknown key ``junk`` holding strings up to ``size`` bytes."""
    line = "  - " + "x" * 95 + "\n"
    with path.open("w") as f:
        f.write(start + "\njunk:\n")
        f.write(line * ((size - f.tell()) // len(line) + 1))
    return path


def refused(tmp_path: Path, *args: str) -> str:
    """``vitsweep ARGS`` as a process in ``tmp_path``: exit 2, under 2 KB of output, no traceback,
    no storage/; its output."""
    proc = spawn_cli(*args, cwd=tmp_path)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"vitsweep {' '.join(a[:40] for a in args)} did not answer within {TIMEOUT} s")
    assert proc.returncode == 2, out[:3000]
    assert len(out.encode()) < 2048, out[:3000]
    assert "Traceback" not in out and out.startswith("error: "), out
    assert not (tmp_path / "storage").exists()
    return out


CASES = {
    "bomb-run": lambda d: ("run", _write(d / "bomb.yaml", "study:\n" + bomb())),
    "bomb-train": lambda d: ("train", _write(d / "bomb.yaml", "train:\n" + bomb())),
    "bomb-promote-set": lambda d: ("promote", "--top", "1", "--epochs", "3", "--set", "data.root=" + bomb("")),
    "50MB-run": lambda d: ("run", str(big_file(d / "big.yaml", (REPO / "sweeps/smoke.yaml").read_text(), 50_000_000))),
    "2MiB-train": lambda d: ("train", str(big_file(d / "big.yaml", (REPO / "sweeps/train_smoke.yaml").read_text(),
                                                   2 << 20))),
}


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("case", list(CASES))
def test_a_bomb_or_a_huge_file_is_exit_2_in_a_few_lines(case, tmp_path):
    out = refused(tmp_path, *CASES[case](tmp_path))
    if case.startswith("bomb"):
        assert re.search(r"line \d: the alias here expands the document to more than 10,000 values", out), out
        assert ("--set data.root: " if "set" in case else "bomb.yaml: ") in out
    else:
        assert "big.yaml: " in out and "MiB" in out and "more than the 1 MiB" in out, out


def test_a_sweep_whose_base_is_too_large_names_it(tmp_path, capsys):
    big_file(tmp_path / "base.yaml", yaml.safe_dump(trainer_dict()), 2 << 20)
    raw = sweep_dict(tmp_path)
    raw["base"] = "base.yaml"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    code, out, err = cli("run", str(tmp_path / "s.yaml"), capsys=capsys)
    assert code == 2 and "base: " in err and "base.yaml: 2.0 MiB" in err and len(err) < 2048, err
    assert not (tmp_path / "optuna.db").exists()


def test_a_set_value_above_the_limit_is_refused(tmp_path, capsys):
    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump(trainer_dict()))
    code, _, err = cli("train", str(cfg), "--set", "data.root=" + "x" * (2 << 20), capsys=capsys)
    assert code == 2 and "--set data.root: 2,097,152 characters, more than the 1 MiB" in err and len(err) < 2048, err


@pytest.mark.parametrize("text, expected", [
    ("train: &a [*a]\n", "line 1: alias *a names a value that contains it"),
    ("train:\n  x: " + "[" * 60 + "]" * 60 + "\n", "line 2: nested more than 50 deep"),
    ("a: &a " + "[" * 45 + "1" + "]" * 45 + "\nb: " + "[" * 8 + "*a" + "]" * 8 + "\n",
     "line 2: the alias here nests more than 50 deep"),
    ("s: &s " + "y" * 300_000 + "\nl: [*s, *s, *s, *s]\n", "line 2: the alias here expands the document to more "
                                                            "than 1 MiB of text"),
    ("train:\n" + "".join(f"  k{i}: [1, 2, 3, 4]\n" for i in range(3000)), "line 1668: the document has more than "
                                                                           "10,000 values"),  # 6 values a line
])
def test_documents_past_a_limit_are_refused_naming_the_line(text, expected, tmp_path, capsys):
    (tmp_path / "t.yaml").write_text(text)
    for command in ("train", "run"):
        code, _, err = cli(command, str(tmp_path / "t.yaml"), capsys=capsys)
        assert code == 2 and expected in err and len(err) < 2048 and "Traceback" not in err, (command, err)


@pytest.mark.parametrize("value", ["1" * 5000, "2001-02-30", "!!float abc", "1" + "0" * 400])
def test_values_python_cannot_hold_are_exit_2_not_a_traceback(value, tmp_path, capsys):
    bad, good = tmp_path / "bad.yaml", tmp_path / "good.yaml"
    bad.write_text(yaml.safe_dump({k: v for k, v in trainer_dict().items() if k != "schedule"})
                   + f"schedule:\n  warmup_epochs: {value}\n")
    code, _, err = cli("train", str(bad), capsys=capsys)
    assert code == 2 and "warmup_epochs" in err and "Traceback" not in err and len(err) < 2048, err
    good.write_text(yaml.safe_dump(trainer_dict()))
    code, _, err = cli("train", str(good), "--set", f"optimizer.lr={value}", capsys=capsys)
    assert code == 2 and "Traceback" not in err and len(err) < 2048, err


# ---------------------------------------------------------------------------------------------
# One way to quote a value


def test_brief_quotes_a_value_with_its_type_and_size():
    laughs = yaml.safe_load("x:\n" + bomb())["x"]["i"]  # shares its parts: 9**9 strings expanded
    text = brief(laughs)
    assert text.startswith("[[[[[[[[['lol', 'lol'") and text.endswith("... (a list of 9 items, nested 9 deep)")
    assert len(text) < 130
    assert brief("x" * 10**6) == "'" + "x" * 79 + "... (a string of 1,000,000 characters)"
    assert brief({"a": [1, 2]}) == "{'a': [1, 2]}" and brief("lr") == "'lr'" and brief(3.5) == "3.5"
    assert brief(list(range(10**5))).endswith("... (a list of 100,000 items)")
    assert "an integer of about 5,000 digits" in brief(10**4999)
    looped: list = []
    looped.append(looped)
    assert brief(looped).endswith("(a list of 1 item, which contains itself)")


def test_both_validators_quote_values_the_same_short_way(tmp_path):
    huge = list(range(5_000))
    with pytest.raises(ConfigError) as e:
        build_config({"train": {"device": "x" * 100_000, "epochs": huge}, "optimizer": {"betas": huge}})
    message = str(e.value)
    assert len(message) < 2048, message
    assert "train.epochs = [0, 1, 2" in message and "(a list of 5,000 items)" in message
    assert "train.device = 'xxx" in message and "(a string of 100,000 characters)" in message
    raw = sweep_dict(tmp_path)
    raw["study"] = huge
    raw["space"]["lr"]["path"] = "optimizer." + "q" * 100_000
    raw["x" * 100_000] = 1
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as e:
        load_sweep(tmp_path / "s.yaml")
    message = str(e.value)
    assert len(message) < 2048, message
    assert "study: expected a mapping, got [0, 1, 2" in message and "(a list of 5,000 items)" in message
    assert "space.lr.path = 'optimizer.qqq" in message and "unknown key 'xxx" in message


def test_a_file_with_thousands_of_problems_lists_twenty(tmp_path, capsys):
    raw = sweep_dict(tmp_path)
    raw["trainer"]["train"].update({f"k{i}": 1 for i in range(3000)})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    code, _, err = cli("run", str(tmp_path / "s.yaml"), capsys=capsys)
    assert code == 2 and "unknown key 'train.k19'" in err and "unknown key 'train.k20'" not in err, err
    assert "... and 2,980 more problems" in err and len(err.splitlines()) < 30


def test_long_command_line_values_are_quoted_short(tmp_path, capsys):
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(trainer_dict()))
    for args in (["trials", "--sort", "q" * 50_000], ["trials", "--" + "q" * 50_000], ["q" * 50_000],
                 ["train", "t" * 50_000 + ".yaml"], ["train", "t.yaml", "--set", "q" * 50_000]):
        code, out, err = cli(*args, capsys=capsys)
        assert code == 2 and len(out + err) < 2048 and "(a string of 50,0" in err, (args[0], err[:3000])


# ---------------------------------------------------------------------------------------------
# The sweep a study keeps


def test_a_sweep_too_large_for_its_study_is_refused_before_anything_is_created(tmp_path, capsys, monkeypatch):
    raw = sweep_dict(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    stored = len(json.dumps(stored_sweep(load_sweep(tmp_path / "s.yaml"))))
    monkeypatch.setattr(inputs, "MAX_BYTES", stored - 1)  # the file itself is smaller than what is stored
    assert (tmp_path / "s.yaml").stat().st_size < stored - 1
    code, _, err = cli("run", str(tmp_path / "s.yaml"), capsys=capsys)
    assert code == 2 and "of JSON, more than the" in err and "a study keeps of its sweep" in err, err
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_study_an_older_version_stored_a_huge_sweep_in_still_opens(tmp_path, capsys):
    raw = sweep_dict(tmp_path, name="old")
    stored = stored_sweep(load_sweep_dict(tmp_path, raw))
    stored["space"]["seed"] = {"path": "train.seed", "type": "categorical", "choices": list(range(200_000))}
    assert len(json.dumps(stored)) > inputs.MAX_BYTES
    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="old", storage=open_storage(url, create=True), direction="maximize")
    study.set_user_attr(SWEEP_ATTR, copy.deepcopy(stored))
    assert len(sweep_of(study).space[-1].choices) == 200_000
    code, _, err = cli("promote", "--top", "1", "--epochs", "9", "--storage", url, "--tracking-uri", "none",
                       capsys=capsys)
    assert code == 2 and "study old has no completed trials" in err, err  # opened, read, found no trials


def load_sweep_dict(tmp_path: Path, raw: dict):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    return load_sweep(tmp_path / "s.yaml")


def test_real_files_are_far_below_the_limits():
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        assert path.stat().st_size < inputs.MAX_BYTES // 100
        assert load_yaml(path.read_text(), str(path)) == yaml.safe_load(path.read_text())
    assert load_config(REPO / "sweeps/train_smoke.yaml").train.epochs == 1


def test_a_huge_image_size_is_refused_at_once_not_searched_for_divisors(tmp_path, capsys):
    # Listing the patch sizes that divide data.image_size used to count up to it: 10**12 never ended.
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(trainer_dict()))
    code, _, err = cli("train", str(tmp_path / "t.yaml"), "--set", "data.image_size=1000000000001", capsys=capsys)
    assert code == 2 and "data.image_size = 1000000000001: must be in [1, 4096]" in err, err
    assert "model.patch_size = 8: must divide data.image_size (1000000000001)" in err and "allowed" not in err, err
    with pytest.raises(ConfigError, match=r"must be in \[1, 4096\]") as e:
        build_config(trainer_dict(), {"data.image_size": 2**63 - 1, "model.patch_size": 7})
    assert len(str(e.value)) < 2048
    with pytest.raises(ConfigError, match=r"data.image_size \(4095\); allowed: 1, 3, 5, 7, 9, 13, 15, 21,"):
        build_config(trainer_dict(), {"data.image_size": 4095, "model.patch_size": 2})
