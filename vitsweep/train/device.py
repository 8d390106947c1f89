"""Which device and precision a run really gets."""

from __future__ import annotations

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
    return torch.device(name)


def effective_precision(precision: str, device: torch.device) -> str:
    """Reduced precision on a CPU runs ~20x slower than fp32 (no native bf16/fp16): warn, use fp32."""
    if precision != "fp32" and device.type == "cpu":
        warnings.warn(
            f"train.precision = {precision} on a CPU: autocast there is many times slower than fp32, "
            f"so this run uses fp32. Use a GPU for {precision}, or set train.precision=fp32 to silence this.",
            VitsweepWarning,
            stacklevel=2,
        )
        return "fp32"
    return precision


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
