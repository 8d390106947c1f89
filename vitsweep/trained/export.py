"""``vitsweep export``: a trained model as ONNX or TorchScript, verified against PyTorch.

The exported model takes normalized float32 images (B, 3, H, W) -- ``(pixels / 255 - mean) / std``
with the training split's mean and std -- and returns logits (B, classes); the batch axis is
dynamic. Beside the file, ``<file>.json`` holds what a consumer needs: classes, mean, std, image
size, the full training config, and the verification result.

Verification runs the exported file (onnxruntime for ONNX, ``torch.jit.load`` for TorchScript) on
seeded random inputs at two batch sizes and compares logits with the PyTorch model's; a max abs
difference over ``atol`` (1e-4) is an error (exit 1) and the bad file is removed.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitsweep.errors import VitsweepError, first_line
from vitsweep.trained.inference import Loaded, load_ref
from vitsweep.paths import EXPORT_DIR

FORMATS = ("onnx", "torchscript")
FILENAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
ONNX_OPSET = 17
VERIFY_BATCH_SIZES = (1, 5)


class ExportMismatchError(VitsweepError):
    """The exported model's logits differ from PyTorch's: a broken export, not bad input."""

    exit_code = 1


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    format: str
    max_abs_diff: float | None  # None: not verified (onnxruntime missing)
    verified_with: str | None


def run_export(ref: str, format: str = "onnx", out: str | Path | None = None, tracking_uri: str | None = None,
               atol: float = 1e-4) -> ExportResult:
    """Export ``ref`` (checkpoint path or MLflow run id) to ``out/`` (default storage/export/<name>/)."""
    fmt = format.lower()
    if fmt not in FORMATS:
        raise VitsweepError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    loaded = load_ref(ref, "cpu", tracking_uri)  # export on the CPU: portable, deterministic
    out_dir = Path(out) if out is not None else EXPORT_DIR / loaded.name
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FILENAMES[fmt]
    example = torch.randn(2, 3, loaded.image_size, loaded.image_size, generator=torch.Generator().manual_seed(0))
    if fmt == "onnx":
        export_onnx(loaded.model, example, path)
        verify, verified_with = _onnx_runner(path)
    else:
        method = export_torchscript(loaded.model, example, path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation notices
            ts = torch.jit.load(str(path), map_location="cpu").eval()
        verify, verified_with = (lambda x: ts(x).detach().numpy()), f"torch.jit.load ({method})"

    diff = None
    if verify is not None:
        diff = max_abs_diff(loaded, verify)
        if not diff <= atol:  # NaN fails too
            path.unlink(missing_ok=True)
            raise ExportMismatchError(
                f"{fmt} export of {loaded.path}: logits differ from PyTorch's by {diff:.3g} (max abs) > {atol:g} "
                f"when run with {verified_with}; the file was removed. This is an exporter problem, not your "
                f"checkpoint: try the other --format, or report it with your torch/onnx versions")
    sidecar = path.with_name(path.name + ".json")
    sidecar.write_text(json.dumps(_sidecar(loaded, fmt, path, diff, atol, verified_with), indent=2) + "\n")
    return ExportResult(path=path, sidecar=sidecar, format=fmt, max_abs_diff=diff, verified_with=verified_with)


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """TorchScript-based ONNX exporter (works offline, no onnxscript needed), dynamic batch axis."""
    kwargs: dict[str, Any] = dict(input_names=["images"], output_names=["logits"], opset_version=ONNX_OPSET,
                                  dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                                  do_constant_folding=True)
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "legacy exporter" deprecation notices
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=False, **kwargs)
        except TypeError:  # a torch without the dynamo switch: the legacy exporter is the only one
            torch.onnx.export(model, (example,), str(path), **kwargs)
        except Exception as e:
            raise VitsweepError(f"ONNX export failed ({type(e).__name__}: {first_line(e, 300)}); "
                                f"try --format torchscript") from None
    try:
        import onnx
    except ImportError:
        return
    try:
        onnx.checker.check_model(onnx.load(str(path)))
    except Exception as e:
        path.unlink(missing_ok=True)
        raise ExportMismatchError(f"the exported ONNX model {path} fails onnx.checker ({e}); the file was removed") from None


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> str:
    """Trace (the model has no data-dependent control flow); fall back to scripting. Returns which."""
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notices
        try:
            with torch.no_grad():
                module = torch.jit.trace(model, example, check_trace=False)
            method = "trace"
        except Exception:
            try:
                module = torch.jit.script(model)
                method = "script"
            except Exception as e:
                raise VitsweepError(f"TorchScript export failed ({type(e).__name__}: "
                                    f"{first_line(e, 300)}); try --format onnx") from None
        torch.jit.save(module, str(path))
    return method


def _onnx_runner(path: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        warnings.warn("onnxruntime is not installed: the ONNX file was written but its logits were not checked "
                      "(pip install onnxruntime to check them)", stacklevel=3)
        return None, None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return (lambda x: session.run(None, {name: x.numpy()})[0]), f"onnxruntime {ort.__version__} (CPU)"


@torch.no_grad()
def max_abs_diff(loaded: Loaded, run) -> float:  # noqa: ANN001
    """Largest |logit difference| between PyTorch and ``run`` over seeded inputs at two batch sizes."""
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for b in VERIFY_BATCH_SIZES:
        x = torch.randn(b, 3, loaded.image_size, loaded.image_size, generator=gen)
        ref = loaded.model(x).numpy()
        got = run(x)
        if got.shape != ref.shape:
            raise ExportMismatchError(f"exported model returned logits of shape {got.shape} for a batch of {b}, "
                                      f"PyTorch returns {ref.shape} (is the batch axis dynamic?)")
        worst = max(worst, float(abs(got - ref).max()))
    return worst


def _sidecar(loaded: Loaded, fmt: str, path: Path, diff: float | None, atol: float, verified_with: str | None) -> dict:
    info = loaded.info()
    return {
        "format": fmt, "file": path.name,
        "opset": ONNX_OPSET if fmt == "onnx" else None,
        "input": {"name": "images" if fmt == "onnx" else "x", "dtype": "float32",
                  "shape": ["batch", 3, loaded.image_size, loaded.image_size],
                  "preprocess": "x = (uint8_pixels / 255 - mean) / std, per RGB channel"},
        "output": {"name": "logits", "shape": ["batch", len(loaded.classes)]},
        "classes": info["classes"], "mean": info["mean"], "std": info["std"], "image_size": info["image_size"],
        "verification": {"max_abs_diff": diff, "atol": atol, "passed": None if diff is None else diff <= atol,
                         "runtime": verified_with, "batch_sizes": list(VERIFY_BATCH_SIZES)},
        "source": {"ref": info["ref"], "checkpoint": info["checkpoint"], "epoch": info["epoch"],
                   "val_acc": info["val_acc"]},
        "num_params": info["num_params"], "torch": torch.__version__,
        "config": info["config"],
    }


def format_summary(r: ExportResult) -> str:
    check = (f"logits match PyTorch: max abs diff {r.max_abs_diff:.2e} ({r.verified_with})"
             if r.max_abs_diff is not None else "not verified (onnxruntime missing)")
    return f"wrote {r.path} ({r.path.stat().st_size / 1e6:.2f} MB) and {r.sidecar.name}\n{check}"
