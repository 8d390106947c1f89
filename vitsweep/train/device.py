"""Which device, precision and CPU threads a run really gets."""

from __future__ import annotations

import contextlib
import platform
import warnings

import torch

from vitsweep.errors import ConfigError, VitsweepWarning

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device = {name}: no CUDA device is visible here; use auto or cpu")
        index = torch.device(name).index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"train.device = {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device = mps: MPS is not available here; use auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r}: not a device; use auto, cpu, cuda, cuda:N or mps") from None


def cpu_native(precision: str) -> bool:
    """Whether this CPU computes ``precision`` natively (oneDNN's own check: AVX512_BF16 or AMX for
    bf16, AVX512_FP16 or AMX-FP16 for fp16). Without it, CPU autocast emulates the type and runs
    several times slower than fp32 (pytorch #86550, #118499)."""
    if precision == "fp32":
        return True
    check = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[precision]
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


_WARNED: set[str] = set()  # the precisions effective_precision has warned about in this process


def effective_precision(precision: str, device: torch.device) -> str:
    """What a run asked to train in ``precision`` on ``device`` really trains in.

    GPUs and MPS: as asked. CPUs: bf16 where the CPU has native bf16 (measured here on Zen 4 with
    AVX512_BF16: 1.06-1.7x faster than fp32 for our ViTs, more for wider ones); fp16 only where it
    is native too (and bf16, the better CPU choice, is suggested); otherwise a warning and fp32.
    ``auto``: bf16 where the device computes it natively (a CPU with AVX512_BF16 or AMX, a CUDA GPU
    with bf16), fp32 elsewhere (MPS included), with no warning: the choice for a recipe that has to
    run well on any machine."""
    if precision == "auto":
        if device.type == "cpu":
            return "bf16" if cpu_native("bf16") else "fp32"
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "fp32"
    if precision == "fp32" or device.type != "cpu" or cpu_native(precision):
        return precision
    if precision in _WARNED:  # once per process: a sweep's every bf16 trial would repeat it
        return "fp32"
    _WARNED.add(precision)
    hint = " (this CPU has native bf16: use train.precision=bf16)" if cpu_native("bf16") else ""
    warnings.warn(
        f"train.precision = {precision} on a CPU without native {precision}: autocast there is several times "
        f"slower than fp32, so this run uses fp32{hint}. Set train.precision=fp32 to silence this.",
        VitsweepWarning,
        stacklevel=2,
    )
    return "fp32"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def set_threads(threads: int | None) -> None:
    """``--threads N``: torch's intra-op threads for this process (None: leave torch's choice)."""
    from vitsweep.train.checks import check_threads

    if check_threads(threads) is not None:
        torch.set_num_threads(threads)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (none for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])
