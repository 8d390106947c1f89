"""Schedules a sweep's fidelity depends on: warmup-stable-decay, cooldown branches that leave the
trunk alone, a horizon longer than the run, and a run continued from another run's trunk."""

from __future__ import annotations

import pytest

from tests.helpers import tiny_config
from vitsweep.errors import ConfigError, VitsweepError
from vitsweep.train import loop
from vitsweep.train.checkpoint import load_checkpoint
from vitsweep.train.loop import train
from vitsweep.train.schedules import Schedule

WSD = {"schedule.name": "wsd", "schedule.warmup_epochs": 0.5, "train.epochs": 4}


def _curve(result, key="val_acc"):
    return [h[key] for h in result.history]


def test_wsd_is_constant_then_cools_down_over_the_last_fifth_along_one_minus_sqrt():
    cfg = tiny_config(**WSD, **{"schedule.min_lr_ratio": 0.0})
    sched = Schedule(cfg, 320, 32)  # 5 steps an epoch, 20 in all, warmup 2 (rounded from 2.5)
    lrs = [sched.lr(s) for s in range(sched.total_steps)]
    base = cfg.optimizer.lr
    assert lrs[sched.warmup_steps:16] == [base] * (16 - sched.warmup_steps)  # stable
    decay = lrs[17:]
    assert all(a > b for a, b in zip(decay, decay[1:])) and decay[-1] < 0.25 * base
    p = (19 - sched.warmup_steps) / (sched.total_steps - sched.warmup_steps)  # the last step's progress
    q = (p - 0.8) / 0.2
    assert lrs[19] == pytest.approx(base * (1 - q**0.5))


def test_a_horizon_longer_than_the_run_makes_the_run_the_start_of_the_longer_one():
    short = Schedule(tiny_config(**{**WSD, "schedule.name": "cosine", "schedule.horizon": 8}), 320, 32)
    long = Schedule(tiny_config(**{**WSD, "schedule.name": "cosine", "train.epochs": 8}), 320, 32)
    assert [short.lr(s) for s in range(20)] == [long.lr(s) for s in range(20)]


def test_a_cooldown_branch_reports_a_cooled_value_and_leaves_the_trunk_bit_identical():
    plain = train(tiny_config(**WSD))
    branched = train(tiny_config(**WSD, **{"schedule.branches": [1, 3]}))
    for key in ("train_loss", "val_loss", "val_acc", "lr"):
        assert _curve(branched, key) == _curve(plain, key)
    by_epoch = {h["epoch"]: h for h in branched.history}
    assert set(k for h in branched.history for k in h if k.startswith("cooldown_")) == {
        "cooldown_val_acc", "cooldown_val_loss", "cooldown_steps"}
    assert "cooldown_val_acc" in by_epoch[1] and "cooldown_val_acc" in by_epoch[3]
    assert "cooldown_val_acc" not in by_epoch[2] and "cooldown_val_acc" not in by_epoch[4]
    # 20% of the steps so far (5 steps an epoch here): 1 step after epoch 1, 3 after epoch 3
    assert (by_epoch[1]["cooldown_steps"], by_epoch[3]["cooldown_steps"]) == (1, 3)
    assert branched.flops > plain.flops  # a branch's compute is counted


def test_a_run_killed_in_the_middle_of_a_branch_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    cfg = tiny_config(**WSD, **{"schedule.branches": [1, 3]})
    reference = train(cfg)
    real_branch = loop._Run._branch
    calls = []

    def killed_in_second_branch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies inside the branch after epoch 3
        return real_branch(self, *args, **kwargs)

    monkeypatch.setattr(loop._Run, "_branch", killed_in_second_branch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir=tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "last.pt")["state"]["epoch"] == 2  # epoch 3 was never saved
    monkeypatch.setattr(loop._Run, "_branch", real_branch)
    resumed = train(cfg, run_dir=tmp_path / "run", resume=True)
    for key in ("val_acc", "cooldown_val_acc", "train_loss"):
        assert [h.get(key) for h in resumed.history] == [h.get(key) for h in reference.history]


def test_a_trunk_continued_to_a_longer_run_matches_that_run_trained_in_one_go(tmp_path):
    long = {**WSD, "train.epochs": 4, "schedule.horizon": 4}
    whole = train(tiny_config(**long))
    trial = train(tiny_config(**{**long, "train.epochs": 2, "schedule.branches": [1, 2]}), run_dir=tmp_path / "trial")
    assert trial.epochs_run == 2
    continued = train(tiny_config(**long), run_dir=tmp_path / "promoted", continue_from=tmp_path / "trial" / "last.pt")
    assert continued.continued_from == 2 and continued.epochs_run == 4
    assert _curve(continued) == _curve(whole)
    assert _curve(continued, "lr") == _curve(whole, "lr")


def test_a_continued_run_killed_midway_resumes_as_a_continuation(tmp_path):
    long = {**WSD, "train.epochs": 4, "schedule.horizon": 4}
    whole = train(tiny_config(**long))
    train(tiny_config(**{**long, "train.epochs": 1}), run_dir=tmp_path / "trial")

    def killed_at_3(epoch, metrics):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(**long), killed_at_3, run_dir=tmp_path / "p", continue_from=tmp_path / "trial" / "last.pt")
    resumed = train(tiny_config(**long), run_dir=tmp_path / "p", resume=True,
                    continue_from=tmp_path / "trial" / "last.pt")
    assert resumed.continued_from == 1
    assert _curve(resumed) == _curve(whole)


def test_a_trunk_with_another_model_or_data_cannot_be_continued(tmp_path):
    train(tiny_config(**{**WSD, "train.epochs": 1}), run_dir=tmp_path / "trial")
    with pytest.raises(VitsweepError, match=r"the config differs from the checkpoint's \(model\.dim: 32 -> 48\)"):
        train(tiny_config(**{**WSD, "model.dim": 48}), continue_from=tmp_path / "trial" / "last.pt")


@pytest.mark.parametrize(("dotted", "message"), [
    ({"schedule.branches": [1]}, "cooldown branches need a constant-lr trunk"),
    ({"schedule.name": "wsd", "schedule.branches": [5]}, "each must be an epoch in [1, train.epochs (4)]"),
    ({"schedule.horizon": 3}, "schedule.horizon = 3: must be >= train.epochs (4)"),
    ({"schedule.name": "wsd", "schedule.cooldown": 0}, "schedule.cooldown = 0.0: must be in (0, 1]"),
    ({"schedule.name": "step"}, "schedule.name = 'step': must be one of cosine, wsd"),
    ({"schedule.cooldown_shape": "sqrt"}, "must be one of 1-sqrt, linear, cosine"),
])
def test_bad_schedule_settings_name_the_key_and_what_is_allowed(dotted, message):
    with pytest.raises(ConfigError) as e:
        tiny_config(**{"train.epochs": 4, **dotted})
    assert message in str(e.value)
