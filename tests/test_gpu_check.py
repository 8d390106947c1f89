"""benchmarks/gpu_check.sh: it runs end to end on a CPU (--device cpu --quick) and prints every
section, so that it has not rotted on the day a GPU is lent; bad options exit 2 with a message; and
the profiler trace is read as it should be (GPU idle time split into waiting on the host and launch
latency), on a trace made up here, since no GPU trace can be made on this machine."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_trace_reader_splits_the_gpu_s_time():
    gc = load_gpu_check()

    def op(name, ts, dur, cat="cpu_op", **args):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "args": args}

    # Two optimizer steps end at 100 and 200 (host time, µs): the window is the second step.
    events = [op("Optimizer.step#AdamW.step", 90, 10), op("Optimizer.step#AdamW.step", 190, 10),
              op("Optimizer.step#AdamW.step", 190, 10, cat="gpu_user_annotation")]
    launches = [(110, 112, 20), (115, 132, 8), (160, 165, 30), (170, 195, 5)]  # (launch, kernel start, duration)
    for i, (launch, start, dur) in enumerate(launches):
        events += [op("cudaLaunchKernel", launch, 3, cat="cuda_runtime", correlation=i),
                   op(f"kernel{i}", start, dur, cat="kernel", correlation=i)]
    events.append(op("cudaStreamSynchronize", 150, 2, cat="cuda_runtime"))
    events.append(op("cudaLaunchKernel", 50, 3, cat="cuda_runtime", correlation=99))  # a warm-up step's kernel
    events.append(op("kernel99", 60, 5, cat="kernel", correlation=99))
    r = gc.read_trace(events, warm=1, cuda=True)
    # GPU span 112..200 = 88 µs: kernels 20 + 8 + 30 + 5 = 63; idle 132..132 none, 140..165 = 25 µs of
    # which the host launched the next kernel only at 160: 20 waiting on the host, 5 launch latency;
    # 195..195 none.
    assert r["steps"] == 1
    assert r["busy_pct"] == pytest.approx(100 * 63 / 88)
    assert r["host_wait_pct"] == pytest.approx(100 * 20 / 88)
    assert r["launch_pct"] == pytest.approx(100 * 5 / 88)
    assert r["syncs_per_step"] == 1 and "cudaStreamSynchronize x1" in r["sync_detail"]


def test_bad_options_exit_2_with_a_message(capsys):
    gc = load_gpu_check()
    with pytest.raises(SystemExit) as e:
        gc.main(["--only", "throughput,speed"])
    assert e.value.code == 2 and "--only speed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        gc.main(["--tta-minutes", "0"])
    assert e.value.code == 2
    assert gc.main(["--device", "cpu"]) == 2  # full sizes on a CPU: hours
    assert "add --quick" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert gc.main(["--device", "cuda", "--quick"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.slow
def test_the_quick_run_on_a_cpu_prints_every_section(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "VITSWEEP_STORAGE")}
    env["PYTHON"] = sys.executable
    out = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--quick"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    if shutil.which("nvidia-smi") is None:
        assert "NO GPU" in text.splitlines()[1]  # said at the top
    for heading in ("== 1. trainer throughput", "== 2. host waits", "== 3. vitsweep run --workers 1 against --workers 2",
                    "== 1. trainer throughput, compiled", "== 4. time to accuracy: sweeps/gpu_recipe.yaml", "== summary"):
        assert heading in text, heading
    for model in ("mi300x preset", "dim-512 ViT"):
        for precision in ("bf16", "fp32"):
            for mode in ("eager", "compiled"):
                assert any(line.split()[:4] == [*model.split(), precision, mode] for line in text.splitlines()), \
                    (model, precision, mode)
    assert "| mi300x preset |" in text and "| dim-512 ViT |" in text
    assert "host syncs per step" in text
    assert "--workers 1:" in text and "--workers 2:" in text and "--workers 2 / --workers 1:" in text
    assert "time to accuracy (gpu_recipe" in text and "best val" in text
    assert "Traceback" not in out.stderr
    assert not list(tmp_path.glob("storage/gpu-check-venv"))  # this interpreter had everything: no venv made


def test_the_gpu_recipe_trains_on_the_full_split_within_ten_minutes():
    from vitsweep.train.config import load_config

    cfg = load_config(REPO / "sweeps" / "gpu_recipe.yaml")
    assert cfg.data.source == "imagefolder" and cfg.data.train_limit is None and cfg.data.val_size == 5000
    assert cfg.schedule.by_time and cfg.train.time_limit <= 540  # + start-up, data and the test pass: 10 minutes
    assert (50_000 - cfg.data.val_size) % cfg.train.batch_size == 0  # no ragged last batch to recompile for
    assert cfg.train.precision == "auto" and cfg.train.compile is True
