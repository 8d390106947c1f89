"""evaluate / bench / export on a tiny checkpoint, and checkpoint references (path or MLflow run id)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import cli, tiny_dict
from vitsweep.trained.inference import resolve_checkpoint
from vitsweep.tracking.artifacts import log_checkpoint
from vitsweep.tracking.tags import CHECKPOINT_ARTIFACT
from vitsweep.train.config import build_config
from vitsweep.errors import VitsweepError

# one block (the fp8 layer count below), 60 test images; no test pass while training
CFG = tiny_dict(data={"synthetic_train": 300, "synthetic_test": 60, "val_size": 60}, model={"depth": 1},
                train={"test": False})
N_TEST, N_CLASSES = 60, 10


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    """A best.pt of a tiny ViT trained 2 epochs on synthetic data (about a second)."""
    from vitsweep.train.loop import train

    run_dir = tmp_path_factory.mktemp("run") / "tiny-run"
    train(build_config(CFG, source="tests"), run_dir=run_dir)
    assert (run_dir / "best.pt").is_file()
    return run_dir / "best.pt"


# ---------------------------------------------------------------------------------------------
# evaluate


def test_evaluate_writes_consistent_files(ckpt, tmp_path):
    from vitsweep.trained.evaluate import run_evaluate

    r = run_evaluate(str(ckpt), out=tmp_path / "ev", device="cpu", fp8=True)
    for name in ("metrics.json", "confusion_matrix.csv", "confusion_matrix.png", "per_class_accuracy.csv",
                 "predictions.png"):
        assert (tmp_path / "ev" / name).stat().st_size > 0, name
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    conf = torch.tensor(m["confusion"])
    assert conf.shape == (N_CLASSES, N_CLASSES)
    assert int(conf.sum()) == N_TEST == m["num_images"]
    assert m["acc"] == pytest.approx(float(conf.diag().sum()) / N_TEST)
    per_class = torch.tensor(list(m["per_class_acc"].values()), dtype=torch.float64)
    assert torch.allclose(per_class, conf.diag().double() / conf.sum(1).double())
    assert list(m["per_class_support"].values()) == conf.sum(1).tolist()
    assert 0 < m["loss"] < 10

    rows = list(csv.reader((tmp_path / "ev" / "confusion_matrix.csv").open()))
    assert len(rows) == N_CLASSES + 1 and all(len(row) == N_CLASSES + 1 for row in rows)
    assert [[int(v) for v in row[1:]] for row in rows[1:]] == m["confusion"]
    assert rows[0][1:] == m["classes"]

    import matplotlib.image as mpimg

    for png in ("confusion_matrix.png", "predictions.png"):
        img = mpimg.imread(tmp_path / "ev" / png)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100

    fp8 = m["fp8"]
    assert 0.0 <= fp8["acc"] <= 1.0 and fp8["layers_quantized"] == 1 * 4 + 2  # per block 4 Linear; patch conv, head
    assert fp8["acc_drop"] == pytest.approx(m["acc"] - fp8["acc"])
    assert r.metrics["acc"] == m["acc"]


def test_evaluate_cli_default_out_dir(ckpt, capsys):
    code, out, err = cli("evaluate", str(ckpt), "--device", "cpu", capsys=capsys)
    assert code == 0, err
    assert "test top-1" in out
    assert (Path("storage/eval/tiny-run/metrics.json")).is_file()  # cwd is this test's tmp folder


def test_fp8_round_trip():
    from vitsweep.trained.evaluate import fp8_round_trip, quantize_fp8_weights

    w = torch.randn(64, 64)
    q = fp8_round_trip(w)
    assert q.dtype == w.dtype and q.shape == w.shape
    assert not torch.equal(q, w)
    assert (q - w).abs().max() <= w.abs().max() * 2**-4  # E4M3 has 3 mantissa bits
    assert q.abs().max() == pytest.approx(float(w.abs().max()), rel=1e-6)  # amax maps to 448 exactly
    assert torch.equal(fp8_round_trip(torch.zeros(3)), torch.zeros(3))
    lin = torch.nn.Linear(8, 8)
    q_lin, n = quantize_fp8_weights(lin)
    assert n == 1 and torch.equal(q_lin.bias, lin.bias) and not torch.equal(q_lin.weight, lin.weight)


# ---------------------------------------------------------------------------------------------
# bench


def test_bench_all_batch_sizes(ckpt, tmp_path):
    from vitsweep.trained.bench import parse_batch_sizes, run_bench

    sizes = parse_batch_sizes("1,4,16,64,128")
    r = run_bench(str(ckpt), sizes, device="cpu", out=tmp_path / "bn", min_time=0.02, warmup=1, max_iters=10)
    report = json.loads((tmp_path / "bn" / "bench.json").read_text())
    assert [row["batch_size"] for row in report["results"]] == [1, 4, 16, 64, 128]
    for row in report["results"]:
        assert row["images_per_sec"] > 0 and row["iterations"] >= 5
        assert row["latency_p90_ms"] >= row["latency_median_ms"] > 0
        assert row["speedup_vs_bs1"] == pytest.approx(row["images_per_sec"] / report["results"][0]["images_per_sec"])
    assert report["results"][0]["scaling_efficiency"] == pytest.approx(1.0)
    html = (tmp_path / "bn" / "bench.html").read_text()
    assert "plotly" in html.lower() and "throughput" in html and len(html) > 1_000_000  # plotly.js inlined
    assert r.files[0].name == "bench.json"


def test_bench_bad_batch_sizes(capsys):
    code, _, err = cli("bench", "x.pt", "--batch-sizes", "1,0", capsys=capsys)
    assert code == 2 and "--batch-sizes" in err


@pytest.mark.parametrize("args, expected", [
    (["--min-time", "-1"], "--min-time -1.0: must be a number of seconds >= 0"),
    (["--min-time", "nan"], "--min-time nan: must be a number of seconds >= 0"),
    (["--threads", "1000"], "--threads 1000: must be between 1 and"),
])
def test_bench_refuses_nonsense_numbers(args, expected, ckpt, tmp_path, capsys):
    code, _, err = cli("bench", str(ckpt), "--out", str(tmp_path / "b"), *args, capsys=capsys)
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------------------------
# export


def test_export_onnx_matches_pytorch(ckpt, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from vitsweep.trained.export import run_export
    from vitsweep.train.checkpoint import load_model

    r = run_export(str(ckpt), "onnx", out=tmp_path / "ex")
    assert r.path == tmp_path / "ex" / "model.onnx" and r.max_abs_diff is not None and r.max_abs_diff <= 1e-4
    side = json.loads(r.sidecar.read_text())
    assert side["verification"]["passed"] is True and side["config"]["model"]["dim"] == 32
    assert len(side["classes"]) == N_CLASSES and len(side["mean"]) == 3 and len(side["std"]) == 3

    model, _, _ = load_model(ckpt)
    session = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"])
    x = torch.randn(7, 3, 32, 32)  # a batch size the export never saw: the batch axis is dynamic
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert abs(got - want).max() <= 1e-4


def test_export_torchscript_loads_and_matches(ckpt, tmp_path, capsys):
    from vitsweep.train.checkpoint import load_model

    code, out, err = cli("export", str(ckpt), "--format", "torchscript", "--out", str(tmp_path / "ts"), capsys=capsys)
    assert code == 0, err
    assert "max abs diff" in out
    path = tmp_path / "ts" / "model.torchscript.pt"
    assert json.loads((tmp_path / "ts" / "model.torchscript.pt.json").read_text())["format"] == "torchscript"
    ts = torch.jit.load(str(path))
    model, _, _ = load_model(ckpt)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (ts(x) - model(x)).abs().max() <= 1e-5


def test_export_mismatch_fails_loudly(ckpt, tmp_path, monkeypatch):
    import vitsweep.trained.export as ex

    monkeypatch.setattr(ex, "max_abs_diff", lambda loaded, run: 0.5)
    with pytest.raises(ex.ExportMismatchError, match="differ from PyTorch") as info:
        ex.run_export(str(ckpt), "onnx", out=tmp_path / "bad")
    assert info.value.exit_code != 0
    assert not (tmp_path / "bad" / "model.onnx").exists() and not (tmp_path / "bad" / "model.onnx.json").exists()


def test_export_unknown_format(ckpt, capsys):
    code, _, err = cli("export", str(ckpt), "--format", "tflite", capsys=capsys)
    assert code == 2 and "onnx, torchscript" in err


# ---------------------------------------------------------------------------------------------
# bad references


@pytest.mark.parametrize("command", ["evaluate", "bench", "export"])
def test_missing_checkpoint_exits_2(command, capsys):
    code, _, err = cli(command, "storage/runs/nope/best.pt", capsys=capsys)
    assert code == 2
    assert err.startswith("error: checkpoint storage/runs/nope/best.pt: no such file")
    assert "Traceback" not in err


def test_corrupt_checkpoint_exits_2(ckpt, tmp_path, capsys):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:200])
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    for bad in (truncated, garbage):
        code, _, err = cli("evaluate", str(bad), capsys=capsys)
        assert code == 2 and f"checkpoint {bad}: cannot be read" in err and "Traceback" not in err
    wrong = tmp_path / "wrong.pt"
    torch.save({"weights": torch.zeros(2)}, wrong)
    code, _, err = cli("export", str(wrong), capsys=capsys)
    assert code == 2 and "not a vitsweep checkpoint" in err


def test_folder_reference_uses_its_best(ckpt):
    assert resolve_checkpoint(str(ckpt.parent)) == ckpt


# ---------------------------------------------------------------------------------------------
# MLflow run ids


def test_run_id_resolution(ckpt, tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    # No store at the default location: a clear message, and no empty store created as a side effect.
    with pytest.raises(VitsweepError, match="no MLflow store at sqlite:///storage/mlflow.db"):
        resolve_checkpoint("0123456789abcdef0123456789abcdef")
    assert not Path("storage/mlflow.db").exists()

    Path("storage").mkdir()
    uri = "sqlite:///storage/mlflow.db"  # the default, relative to the cwd (this test's tmp folder)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("evaltest", artifact_location=(tmp_path / "artifacts").as_uri())
    with_model = client.create_run(exp, run_name="with-model").info.run_id
    log_checkpoint(client, with_model, ckpt)
    without = client.create_run(exp, run_name="no-model").info.run_id

    # default tracking URI, then an explicit one, then MLFLOW_TRACKING_URI
    got = resolve_checkpoint(with_model, dst=tmp_path / "dl")
    assert got.is_file() and got.read_bytes() == ckpt.read_bytes()
    assert got == tmp_path / "dl" / "best.pt"
    assert resolve_checkpoint(f"runs:/{with_model}", tracking_uri=uri).read_bytes() == ckpt.read_bytes()

    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy("storage/mlflow.db", moved / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{moved / 'mlflow.db'}")
    code, out, err = cli("export", with_model, "--format", "onnx", capsys=capsys)
    assert code == 0, err
    assert Path("storage/export/with-model/model.onnx").is_file()  # named after the run, not its id
    monkeypatch.delenv("MLFLOW_TRACKING_URI")

    code, _, err = cli("bench", without, "--tracking-uri", uri, capsys=capsys)
    assert code == 2 and f"has no {CHECKPOINT_ARTIFACT} artifact" in err and "no-model" in err
    assert "trials.keep_checkpoints" in err and "vitsweep promote" in err and "log_checkpoint" not in err
    code, _, err = cli("evaluate", "0123456789abcdef0123456789abcdef", "--tracking-uri", uri, capsys=capsys)
    assert code == 2 and "nor a run in the MLflow store" in err and "Traceback" not in err
