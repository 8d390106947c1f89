"""The worker placement plan: which device and which CPU cores each sweep worker gets."""

from __future__ import annotations

import pytest

from vitsweep.sweep import placement


@pytest.mark.parametrize("gpus", [1, 4, 8])
@pytest.mark.parametrize("workers", [1, 3, 8])
def test_workers_take_gpus_round_robin(gpus, workers):
    plan = placement.plan(workers, "auto", gpus=gpus, cores=list(range(16)))
    assert [p.device for p in plan] == [f"cuda:{i % gpus}" for i in range(workers)]
    # with more workers than GPUs, every GPU is used before any is shared
    assert len({p.device for p in plan}) == min(gpus, workers)


@pytest.mark.parametrize("workers", [1, 3, 8])
def test_without_gpus_workers_split_the_cores_each_used_once(workers):
    cores = list(range(8))
    plan = placement.plan(workers, "auto", gpus=0, cores=cores)
    assert all(p.device == "cpu" for p in plan)
    assert sum(p.threads for p in plan) == len(cores)
    if workers == 1:
        assert plan[0].cores is None and plan[0].threads == 8  # one worker: all cores, OS affinity
    else:
        used = [c for p in plan for c in p.cores]
        assert sorted(used) == cores  # each core exactly once
        assert max(p.threads for p in plan) - min(p.threads for p in plan) <= 1
        assert all(p.threads == len(p.cores) for p in plan)


def test_two_workers_on_two_cores_get_one_thread_each():
    plan = placement.plan(2, "auto", gpus=0, cores=[0, 1])
    assert [(p.threads, p.cores) for p in plan] == [(1, (0,)), (1, (1,))]
    assert plan[0].env() == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    assert placement.warnings_for(plan, gpus=0, cores=[0, 1]) == []


def test_more_workers_than_cores_share_them_and_warn():
    plan = placement.plan(3, "auto", gpus=0, cores=[0, 1])
    assert [p.cores for p in plan] == [(0,), (1,), (0,)] and all(p.threads == 1 for p in plan)
    (warning,) = placement.warnings_for(plan, gpus=0, cores=[0, 1])
    assert "3 workers on 2 CPU core(s)" in warning and "--workers 2" in warning


def test_more_workers_than_gpus_warns():
    plan = placement.plan(8, "auto", gpus=4, cores=list(range(16)))
    assert placement.warnings_for(plan, gpus=4, cores=list(range(16))) == [
        "8 workers on 4 GPU(s): workers share GPUs, each trial runs slower"]
    assert placement.warnings_for(placement.plan(4, "auto", gpus=4, cores=[0, 1, 2, 3]), gpus=4, cores=[0, 1, 2, 3]) == []


@pytest.mark.parametrize("device", ["cpu", "cuda:1", "mps"])
def test_a_pinned_device_is_kept(device):
    plan = placement.plan(3, device, gpus=4, cores=list(range(6)))
    assert [p.device for p in plan] == [device] * 3
    assert [p.threads for p in plan] == [2, 2, 2]


def test_plain_cuda_is_spread_over_the_gpus():
    assert [p.device for p in placement.plan(3, "cuda", gpus=2, cores=[0, 1, 2, 3])] == ["cuda:0", "cuda:1", "cuda:0"]


def test_the_plan_reads_as_a_line_per_worker():
    plan = placement.plan(2, "auto", gpus=0, cores=[0, 1, 2, 3, 4])
    assert [p.describe() for p in plan] == ["worker 0: cpu, 3 CPU threads on cores 0-2",
                                            "worker 1: cpu, 2 CPU threads on cores 3-4"]


def test_started_with_sets_then_restores_the_thread_variables(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    import os

    with placement.started_with(placement.plan(2, "auto", gpus=0, cores=[0, 1])[1]):
        assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["MKL_NUM_THREADS"] == "1"
    assert os.environ["OMP_NUM_THREADS"] == "7" and "MKL_NUM_THREADS" not in os.environ


@pytest.mark.parametrize("command", ["train", "evaluate", "promote"])
def test_threads_option_is_checked(command, capsys):
    from tests.helpers import cli

    args = {"train": ["train", "missing.yaml"], "evaluate": ["evaluate", "missing.pt"],
            "promote": ["promote", "--top", "1", "--epochs", "2"]}[command]
    code, _, err = cli(*args, "--threads", "0", capsys=capsys)
    assert code == 2 and "--threads 0: must be between 1 and this machine's" in err


def test_train_threads_sets_torch_threads(capsys, tmp_path):
    import torch

    from tests.helpers import cli

    before = torch.get_num_threads()
    try:
        cfg = tmp_path / "c.yaml"
        cfg.write_text("data: {source: synthetic, synthetic_train: 200, synthetic_test: 50, val_size: 50}\n"
                       "model: {preset: custom, dim: 16, depth: 1, heads: 2, patch_size: 8}\n"
                       "train: {epochs: 1, batch_size: 64, device: cpu, checkpoint: false}\n")
        code, out, _ = cli("train", str(cfg), "--threads", "1", capsys=capsys)
        assert code == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
