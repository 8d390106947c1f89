import pytest
from typer.testing import CliRunner

from vitsweep.cli import app
from vitsweep.train.config import DEFAULT_BETAS, build_config, load_config, parse_overrides
from vitsweep.errors import ConfigError

from tests.helpers import TINY, tiny_config


def errors_of(raw, overrides=None) -> str:
    with pytest.raises(ConfigError) as e:
        build_config(raw, overrides or {})
    return str(e.value)


def test_defaults_are_valid_and_presets_fill_fields():
    cfg = build_config({"model": {"preset": "mi300x"}})
    assert (cfg.model.dim, cfg.model.depth, cfg.model.heads, cfg.model.patch_size) == (384, 8, 6, 4)
    cfg = build_config({"model": {"preset": "tiny", "depth": 6}})  # explicit fields beat the preset
    assert (cfg.model.dim, cfg.model.depth, cfg.model.heads) == (192, 6, 3)


def test_betas_default_per_optimizer_and_follow_optimizer_changes():
    assert build_config({"optimizer": {"name": "adan"}}).optimizer.betas == DEFAULT_BETAS["adan"]
    cfg = build_config({"optimizer": {"name": "adamw"}})
    assert cfg.replace(**{"optimizer.name": "adan"}).optimizer.betas == (0.02, 0.08, 0.01)


def test_unknown_key_names_it_and_suggests():
    msg = errors_of({"model": {"dimm": 64}})
    assert "model.dimm" in msg and "did you mean 'model.dim'" in msg
    assert "unknown key 'trian'" in errors_of({"trian": {}})


def test_wrong_type_and_impossible_values_are_all_reported_at_once():
    msg = errors_of({"model": {"patch_size": 5, "dim": 64, "heads": 5}, "optimizer": {"lr": -1}, "train": {"epochs": "x"}})
    assert "model.patch_size = 5: must divide data.image_size (32); allowed: 1, 2, 4, 8, 16, 32" in msg
    assert "model.heads = 5: must divide model.dim (64)" in msg
    assert "optimizer.lr = -1.0: must be > 0" in msg
    assert "train.epochs = 'x': must be an integer" in msg


def test_literal_choices_and_betas_count():
    assert "must be one of adan, adamw, adam" in errors_of({"optimizer": {"name": "sgd"}})
    assert "adan takes 3 betas" in errors_of({"optimizer": {"name": "adan", "betas": [0.9, 0.99]}})
    assert "each beta must be in (0, 1)" in errors_of({"optimizer": {"betas": [0.9, 1.5]}})


def test_overrides_are_yaml_typed_and_scientific_notation_works():
    o = parse_overrides(["model.patch_size=8", "optimizer.lr=1e-3", "optimizer.betas=[0.9,0.99]", "train.patience=null"])
    cfg = build_config(TINY, o)
    assert cfg.model.patch_size == 8 and cfg.optimizer.lr == 1e-3 and cfg.optimizer.betas == (0.9, 0.99)
    assert cfg.train.patience is None
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["model.patch_size"])


def test_flat_round_trip():
    cfg = tiny_config(**{"optimizer.name": "adan"})
    assert build_config({}, cfg.flat()) == cfg


def test_load_config_reports_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_cli_bad_config_exits_2_before_any_work(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {source: synthetic}\nmodel: {patch_size: 5}\n")
    result = CliRunner().invoke(app, ["train", str(cfg), "--set", "optimizer.lr=-3"])
    assert result.exit_code == 2
    assert "error: invalid config" in result.output
    assert "model.patch_size" in result.output and "optimizer.lr" in result.output
    assert not (tmp_path / "storage").exists()  # nothing written
