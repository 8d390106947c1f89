import os
import signal
import subprocess
import sys

import pytest
import torch

from vitsweep.train import device as device_mod
from vitsweep.train.checkpoint import load_checkpoint
from vitsweep.errors import VitsweepError, VitsweepWarning
from vitsweep.train.model import ViT
from vitsweep.train.checkpoint import load_model
from vitsweep.train.loop import train
from vitsweep.train.optimizers import build_optimizer
from vitsweep.train.schedules import lr_at

from tests.helpers import killed_then_resumed, tiny_config, wait_until


def test_vit_shapes_and_no_decay_groups(tiny):
    model = ViT(tiny.model, image_size=32, num_classes=10)
    assert model(torch.zeros(5, 3, 32, 32)).shape == (5, 10)
    opt = build_optimizer(model, tiny.optimizer)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == tiny.optimizer.weight_decay and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} >= {"pos_embed", "cls_token", "norm.weight", "head.bias"}
    assert all(p.ndim == 2 or p.ndim == 4 for p in decay["params"])


def test_every_block_gets_gradient_from_the_first_step(tiny):
    # A zero-initialised head passes no gradient back; the blocks then idle until it grows, which
    # cost 3 to 4 points of validation accuracy after one short epoch on real CIFAR-10.
    model = ViT(tiny.model, image_size=32, num_classes=10)
    torch.nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.arange(8)).backward()
    starved = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert starved == []


def test_warmup_then_cosine():
    lrs = [lr_at(s, 100, 10, 1.0, 0.01) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.01, abs=1e-3)


@pytest.mark.parametrize("name", ["adan", "adamw", "adam"])
def test_each_optimizer_learns_the_synthetic_classes(name):
    lr = {"adan": 2e-2, "adamw": 3e-3, "adam": 3e-3}[name]  # Adan takes 5-10x AdamW's lr
    result = train(tiny_config(**{"optimizer.name": name, "optimizer.lr": lr, "train.epochs": 3}))
    assert result.stop_reason == "completed" and result.epochs_run == 3
    assert result.best_val_acc > 0.3  # chance is 0.1
    assert result.test is not None and result.test.acc > 0.3
    assert len(result.history) == 3 and [h["epoch"] for h in result.history] == [1, 2, 3]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_on_a_cpu_without_it_warns_once_and_runs_fp32(precision, monkeypatch, recwarn):
    monkeypatch.setattr(device_mod, "cpu_native", lambda p: p == "fp32")
    monkeypatch.setattr(device_mod, "_WARNED", set())
    with pytest.warns(VitsweepWarning, match=f"train.precision = {precision} on a CPU without native {precision}"):
        result = train(tiny_config(**{"train.precision": precision, "train.epochs": 1}))
    assert result.precision == "fp32"
    recwarn.clear()
    # a sweep's next trials in this process: the same choice, said once (not once per trial)
    assert device_mod.effective_precision(precision, torch.device("cpu")) == "fp32"
    assert not [w for w in recwarn if w.category is VitsweepWarning]


def test_fp16_on_a_cpu_with_native_bf16_suggests_bf16(monkeypatch):
    monkeypatch.setattr(device_mod, "cpu_native", lambda p: p in ("fp32", "bf16"))
    monkeypatch.setattr(device_mod, "_WARNED", set())
    with pytest.warns(VitsweepWarning, match="this CPU has native bf16: use train.precision=bf16"):
        assert device_mod.effective_precision("fp16", torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_takes_bf16_only_where_the_cpu_has_it_and_never_warns(native, expected, monkeypatch, recwarn):
    monkeypatch.setattr(device_mod, "cpu_native", lambda p: p == "fp32" or native)
    assert device_mod.effective_precision("auto", torch.device("cpu")) == expected
    assert device_mod.effective_precision("auto", torch.device("mps")) == "fp32"
    if not native:
        result = train(tiny_config(**{"train.precision": "auto", "train.epochs": 1}))
        assert result.precision == "fp32"
    assert not [w for w in recwarn if w.category is VitsweepWarning]


@pytest.mark.skipif(not device_mod.cpu_native("bf16"), reason="this CPU has no native bf16")
def test_bf16_trains_in_bf16_on_a_cpu_with_native_bf16(recwarn):
    result = train(tiny_config(**{"train.precision": "bf16", "train.epochs": 2, "optimizer.lr": 3e-3}))
    assert result.precision == "bf16" and not [w for w in recwarn if w.category is VitsweepWarning]
    assert result.best_val_acc > 0.3  # it learns (chance is 0.1)


def test_early_stopping_ends_before_the_limit():
    # lr so small no epoch gains min_delta (50 points) over the first: patience 2 stops at epoch 3 of 20.
    cfg = tiny_config(**{"optimizer.lr": 1e-9, "train.epochs": 20, "train.patience": 2, "train.min_delta": 0.5})
    result = train(cfg)
    assert result.stop_reason == "early_stopped" and result.epochs_run == 3


def test_target_accuracy_stops_the_run():
    result = train(tiny_config(**{"train.epochs": 20, "train.target_acc": 0.3, "optimizer.lr": 3e-3}))
    assert result.stop_reason == "target_reached" and result.epochs_run < 20
    assert result.history[-1]["val_acc"] >= 0.3


def test_divergence_stops_with_reason(tmp_path):
    cfg = tiny_config(**{"optimizer.lr": 1e6, "optimizer.grad_clip": None, "schedule.warmup_epochs": 0, "train.epochs": 5})
    result = train(cfg, run_dir=tmp_path / "run")
    assert result.stop_reason == "diverged" and result.epochs_run < 5


def test_exception_in_on_epoch_stops_cleanly_after_checkpointing(tmp_path):
    class Stop(Exception):
        pass

    seen = []

    def on_epoch(epoch, metrics):
        seen.append(epoch)
        if epoch == 2:
            raise Stop()

    with pytest.raises(Stop):
        train(tiny_config(**{"train.epochs": 5}), on_epoch, run_dir=tmp_path / "run")
    assert seen == [1, 2]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["state"]["epoch"] == 2


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    cfg = tiny_config(**{"train.epochs": 4, "augment.policy": "extended", "augment.mixup": 0.4, "model.drop_path": 0.1})
    full, resumed = killed_then_resumed(cfg, tmp_path)
    assert [h["val_acc"] for h in resumed.history] == [h["val_acc"] for h in full.history]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "part" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # resuming a finished run does no more training
    again = train(cfg, run_dir=tmp_path / "part", resume=True)
    assert again.epochs_run == 4 and again.history == resumed.history


def test_resume_refuses_a_different_config(tmp_path):
    cfg = tiny_config(**{"train.epochs": 1})
    train(cfg, run_dir=tmp_path / "run")
    with pytest.raises(VitsweepError, match=r"optimizer.lr: 0.003 -> 0.1"):
        train(cfg.replace(**{"optimizer.lr": 0.1}), run_dir=tmp_path / "run", resume=True)


def test_best_checkpoint_loads_with_weights_only_and_reproduces_val_acc(tmp_path):
    result = train(tiny_config(), run_dir=tmp_path / "run")
    model, cfg, meta = load_model(tmp_path / "run" / "best.pt")
    assert meta["val_acc"] == result.best_val_acc and meta["epoch"] == result.best_epoch
    assert cfg == tiny_config() and len(meta["classes"]) == 10


def test_cli_train_sigkill_then_resume_matches_uninterrupted(tmp_path, spawn):
    """A real `vitsweep train` process killed with SIGKILL mid-run, resumed with --resume."""
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        "data: {source: synthetic, synthetic_train: 1200, synthetic_test: 100, val_size: 100}\n"
        "model: {preset: custom, dim: 32, depth: 2, heads: 2, patch_size: 8}\n"
        "train: {epochs: 4, batch_size: 64, device: cpu}\n"
    )
    cmd = [sys.executable, "-m", "vitsweep", "train", str(cfg_file)]
    subprocess.run([*cmd, "--run-dir", "full"], check=True, capture_output=True)
    proc = spawn([*cmd, "--run-dir", "killed"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: (tmp_path / "killed" / "last.pt").exists() or None, "no last.pt written", proc, every=0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert load_checkpoint("killed/last.pt")["state"]["epoch"] < 4
    out = subprocess.run([*cmd, "--resume", "killed"], check=True, capture_output=True, text=True).stdout
    assert "stopped: completed after 4 epoch(s)" in out
    full, resumed = load_checkpoint("full/last.pt"), load_checkpoint("killed/last.pt")
    assert [h["val_acc"] for h in full["state"]["history"]] == [h["val_acc"] for h in resumed["state"]["history"]]
    assert all(torch.equal(full["model"][k], resumed["model"][k]) for k in full["model"])


def test_cli_train_says_when_no_checkpoint_was_written_and_a_divergence_fails(tmp_path, capsys):
    from tests.helpers import cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {source: synthetic, synthetic_train: 300, synthetic_test: 50, val_size: 60}\n"
                   "model: {preset: custom, dim: 16, depth: 1, heads: 2, patch_size: 8}\n"
                   "train: {epochs: 1, batch_size: 64, device: cpu, checkpoint: false}\n")
    code, out, _ = cli("train", str(cfg), "--run-dir", "r", capsys=capsys)
    assert code == 0 and "checkpoint:   none written (train.checkpoint: false)" in out and "--resume" not in out
    code, out, err = cli("train", str(cfg), "--run-dir", "d", "--set", "optimizer.lr=1e6", "--set", "optimizer.grad_clip=null",
                         "--set", "train.checkpoint=true", "--set", "schedule.warmup_epochs=0", capsys=capsys)
    assert code == 1 and "stopped: diverged" in out and "error: training diverged" in err
    assert "best.pt" not in out


def test_cli_train_interrupted_says_how_to_continue(tmp_path, capsys, monkeypatch):
    from tests.helpers import cli
    from vitsweep.train import loop as trainer

    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {source: synthetic, synthetic_train: 300, synthetic_test: 50, val_size: 60}\n"
                   "model: {preset: custom, dim: 16, depth: 1, heads: 2, patch_size: 8}\n"
                   "train: {epochs: 3, batch_size: 64, device: cpu}\n")
    real = trainer.train

    def interrupted(config, on_epoch=None, **kw):
        def stop(epoch, metrics):
            on_epoch(epoch, metrics)
            raise KeyboardInterrupt
        return real(config, stop, **kw)

    monkeypatch.setattr(trainer, "train", interrupted)
    code, _, err = cli("train", str(cfg), "--run-dir", "r", capsys=capsys)
    assert code == 130 and "continue with  vitsweep train --resume r" in err


def test_train_smoke_header_suggestions_work_without_the_data_folder(capsys):
    """Every `vitsweep train sweeps/train_smoke.yaml --set data.source=synthetic ...` line in the
    file's header runs as written (here for a fraction of an epoch's worth of images)."""
    import shlex
    from pathlib import Path

    from tests.helpers import cli

    path = Path(__file__).resolve().parents[1] / "sweeps" / "train_smoke.yaml"
    lines = [ln.lstrip("# ").strip() for ln in path.read_text().splitlines() if "data.source=synthetic" in ln
             and ln.lstrip("# ").startswith("vitsweep train")]
    assert lines
    for line in lines:
        args = shlex.split(line)[1:]
        args[1] = str(path)
        code, out, err = cli(*args, "--set", "train.device=cpu", "--set", "model.depth=1", "--run-dir", "r",
                             capsys=capsys)
        assert code == 0, err
        assert "stopped: completed after 1 epoch(s)" in out
