"""The trainer's cost cutters: micro-batches, torch.compile with its fallback, a time limit,
progressive resolution and patch dropout; and the compute each run records."""

from __future__ import annotations

import pytest
import torch

from vitsweep.train.checkpoint import load_checkpoint
from vitsweep.train.config import build_config
from vitsweep.errors import ConfigError, VitsweepWarning
from vitsweep.train.model import ViT, forward_flops
from vitsweep.train.compile import compile_pays
from vitsweep.train.loop import micro_batch_size, train
from vitsweep.train.schedules import Schedule

from tests.helpers import killed_then_resumed, tiny_config

CPU = torch.device("cpu")


def test_micro_batches_give_the_same_training_up_to_rounding():
    cfg = tiny_config(**{"train.epochs": 2, "train.batch_size": 64})
    whole = train(cfg.replace(**{"train.micro_batch": 64}))
    split = train(cfg.replace(**{"train.micro_batch": 16}))
    for a, b in zip(whole.history, split.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)


def test_micro_batch_auto_is_cache_sized_on_a_cpu_and_whole_elsewhere():
    tc = build_config({"train": {"batch_size": 512}}).train
    assert micro_batch_size(tc, CPU) == 128
    assert micro_batch_size(tc, torch.device("cuda")) == 512
    assert micro_batch_size(build_config({"train": {"batch_size": 64}}).train, CPU) == 64
    with pytest.raises(ConfigError, match=r"train.micro_batch = 600: must be in \[1, train.batch_size \(512\)\]"):
        build_config({"train": {"batch_size": 512, "micro_batch": 600}})


def test_a_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken_compile(model, **kw):
        def fail(x):
            raise RuntimeError("InductorError: no C++ compiler found\nmore detail")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(VitsweepWarning, match="torch.compile failed .*no C\\+\\+ compiler found.*eager mode"):
        result = train(tiny_config(**{"train.compile": True}))
    assert result.stop_reason == "completed" and not result.compiled and result.best_val_acc > 0


def test_compile_auto_stays_eager_for_a_short_run(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: calls.append(m) or m)
    result = train(tiny_config(**{"train.epochs": 3}))  # train.compile defaults to auto
    assert calls == [] and not result.compiled


def test_compile_pays_only_when_the_rest_of_the_run_repays_it():
    cuda = torch.device("cuda")
    # 60 s to compile per image size, 15% faster steps: a 10-minute epoch with 5 left saves
    # 450 s >= 2 x 2 x 60 s (one size to come, plus the smaller last batch)
    assert compile_pays(cuda, 600, epochs_left=5, sizes_left=1)
    assert not compile_pays(cuda, 30, epochs_left=5, sizes_left=1)  # a short trial
    assert not compile_pays(cuda, 600, epochs_left=5, sizes_left=4)  # every new image size recompiles
    assert not compile_pays(torch.device("mps"), 6000, epochs_left=50, sizes_left=1)
    # on this project's CPU compiled steps measured no faster (0.96-1.03x): auto never compiles there
    assert not compile_pays(CPU, 6000, epochs_left=50, sizes_left=1)


def test_compile_config_accepts_auto_true_false():
    assert build_config({}).train.compile == "auto"
    assert build_config({"train": {"compile": True}}).train.compile is True
    with pytest.raises(ConfigError, match="train.compile"):
        build_config({"train": {"compile": "sometimes"}})


def test_time_limit_stops_at_an_epoch_end_with_its_own_reason(tmp_path):
    result = train(tiny_config(**{"train.epochs": 50, "train.time_limit": 0.01}), run_dir=tmp_path / "run")
    assert result.stop_reason == "time_limit" and result.epochs_run == 1
    assert result.test is not None  # the best checkpoint is still tested
    assert load_checkpoint(tmp_path / "run" / "last.pt")["state"]["stop_reason"] == "time_limit"


def test_time_limit_does_not_start_an_epoch_it_cannot_finish():
    sched = Schedule(tiny_config(**{"train.epochs": 50, "train.time_limit": 100.0}), 260, 32)
    state = {"epoch": 3, "elapsed": 75.0, "history": [{"epoch_time": 25.0}]}
    assert not sched.out_of_time(state, eval_time=1.0, size=32)  # 75 + 24 + 1 = 100: fits
    assert sched.out_of_time({**state, "elapsed": 76.0}, eval_time=1.0, size=32)


def test_by_time_schedule_stretches_the_decay_to_the_time_limit():
    cfg = tiny_config(**{"train.epochs": 100, "train.time_limit": 100.0, "schedule.by_time": True,
                         "schedule.warmup_epochs": 1.0, "optimizer.lr": 1.0, "schedule.min_lr_ratio": 0.0})
    sched = Schedule(cfg, 260, 32)  # 5 steps per epoch
    assert sched.lr(0) == pytest.approx(0.2)  # warmup is step-based
    assert sched.lr(10, elapsed=10.0, warmup_end_s=10.0) == pytest.approx(1.0)
    assert sched.lr(50, elapsed=55.0, warmup_end_s=10.0) == pytest.approx(0.5)  # half-way in time
    assert sched.lr(90, elapsed=100.0, warmup_end_s=10.0) == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="schedule.by_time = true: needs train.time_limit"):
        tiny_config(**{"schedule.by_time": True})


def test_progressive_resolution_schedule_grows_in_patch_multiples():
    cfg = tiny_config(**{"train.epochs": 8, "schedule.res_start": 16, "schedule.res_until": 0.5})
    sched = Schedule(cfg, 260, 32)
    sizes = [sched.image_size(sched.progress(e, 0.0)) for e in range(1, 9)]
    assert sizes == [16, 16, 24, 24, 32, 32, 32, 32]  # patch 8: 16 -> 32 by half the run
    with pytest.raises(ConfigError, match="schedule.res_start = 20: must be a multiple of model.patch_size"):
        tiny_config(**{"schedule.res_start": 20})


def test_position_embedding_is_resampled_for_smaller_images(tiny):
    model = ViT(tiny.model, image_size=32, num_classes=10)  # patch 8: a 4x4 grid
    assert model.grid_pos_embed(4) is not None and model.grid_pos_embed(4).shape == (1, 16, 32)
    assert model.grid_pos_embed(2).shape == (1, 4, 32)
    assert model(torch.zeros(3, 3, 16, 16)).shape == (3, 10)
    # gradients from a low-resolution pass reach the full-grid embedding
    model(torch.randn(3, 3, 16, 16)).sum().backward()
    assert model.pos_embed.grad[:, 1:].abs().sum() > 0


def test_progressive_resolution_trains_small_first_then_full_size():
    cfg = tiny_config(**{"train.epochs": 4, "schedule.res_start": 16, "schedule.res_until": 0.5})
    result = train(cfg)
    assert [h["image_size"] for h in result.history] == [16, 24, 32, 32]
    flops = [h["flops"] for h in result.history]
    assert flops[1] - flops[0] < flops[3] - flops[2]  # low-resolution epochs cost less


def test_resume_in_the_middle_of_a_resolution_change_reproduces_the_run(tmp_path):
    cfg = tiny_config(**{"train.epochs": 4, "schedule.res_start": 16, "schedule.res_until": 0.75,
                         "model.patch_dropout": 0.25})
    full, resumed = killed_then_resumed(cfg, tmp_path)
    assert [h["image_size"] for h in resumed.history] == [h["image_size"] for h in full.history] == [16, 16, 24, 32]
    assert [h["val_acc"] for h in resumed.history] == [h["val_acc"] for h in full.history]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]


def test_patch_dropout_keeps_a_fraction_of_tokens_in_training_and_all_in_evaluation(tiny):
    cfg = tiny.replace(**{"model.patch_dropout": 0.5, "model.patch_size": 4})  # 8x8 = 64 patches
    model = ViT(cfg.model, image_size=32, num_classes=10)
    seen = []
    model.blocks[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    model.train()(torch.zeros(2, 3, 32, 32))
    model.eval()(torch.zeros(2, 3, 32, 32))
    assert seen == [32 + 1, 64 + 1]  # kept patches + [cls]; evaluation sees every patch


def test_patch_dropout_cuts_the_recorded_compute():
    plain = train(tiny_config(**{"train.epochs": 1, "model.patch_size": 4}))
    dropped = train(tiny_config(**{"train.epochs": 1, "model.patch_size": 4, "model.patch_dropout": 0.5}))
    assert dropped.flops < 0.75 * plain.flops and dropped.best_val_acc > 0
    assert plain.flops == pytest.approx(plain.history[-1]["flops"])


def test_forward_flops_matches_a_hand_count():
    m = build_config({"model": {"preset": "custom", "dim": 8, "depth": 1, "heads": 2, "patch_size": 16,
                                "mlp_ratio": 2.0}}).model  # 32px: 4 patches + cls = 5 tokens
    embed = 2 * 4 * (3 * 16 * 16) * 8
    block = 2 * 5 * 8 * 24 + 2 * 5 * 8 * 8 + 4 * 5 * 5 * 8 + 4 * 5 * 8 * 16
    assert forward_flops(m, 32, 10) == embed + block + 2 * 8 * 10


def test_the_explicit_attention_used_for_bf16_on_a_cpu_computes_what_the_fused_kernel_does():
    from torch.nn import functional as F

    from vitsweep.train.model import explicit_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(4, 3, 17, 16, requires_grad=True) for _ in range(3))
    fused = F.scaled_dot_product_attention(q, k, v)
    grads = torch.autograd.grad(fused.square().sum(), (q, k, v))
    ours = explicit_attention(q, k, v, 0.0)
    torch.testing.assert_close(ours, fused, rtol=1e-5, atol=1e-5)
    for a, b in zip(torch.autograd.grad(ours.square().sum(), (q, k, v)), grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_model_in_bf16_on_a_cpu_takes_the_explicit_attention_and_matches_fp32(monkeypatch):
    from vitsweep.train import model as model_module

    calls = []
    real = model_module.explicit_attention
    monkeypatch.setattr(model_module, "explicit_attention", lambda *a: calls.append(1) or real(*a))
    cfg = tiny_config(**{"model.patch_size": 4})
    torch.manual_seed(0)
    vit = ViT(cfg.model, 32, 10).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ref = vit(x)
        assert not calls  # fp32: PyTorch's fused kernel
        with torch.autocast("cpu", torch.bfloat16):
            low = vit(x)
    assert len(calls) == cfg.model.depth
    torch.testing.assert_close(low.float(), ref, rtol=0.05, atol=0.05)
