"""The compile policy: ``train.compile`` true, false, or auto (compile after the first epoch when
the measured epoch time says the rest of the run repays the compile time)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from vitsweep.errors import VitsweepWarning, first_line

# torch.compile's cost (seconds to compile the training step, per image size) and gain (the
# fraction of step time it saves). CPU: measured by benchmarks/train_throughput.py on this project's
# 2-core Zen 4 (14-16 s to compile; 0.96x fp32, 1.03x bf16: no gain), so auto stays eager on CPUs.
# CUDA: not measured here (no GPU was available): typical figures, to be replaced by measurements.
COMPILE_COST_S = {"cpu": 15.0, "cuda": 60.0}
COMPILE_GAIN = {"cpu": 0.0, "cuda": 0.15}


def compile_pays(device: torch.device, epoch_train_s: float, epochs_left: float, sizes_left: int) -> bool:
    """``train.compile: auto``: compile when the rest of the run saves at least twice what compiling
    costs (one compile per image size still to come, plus one for a smaller last batch)."""
    if device.type not in COMPILE_COST_S or COMPILE_GAIN[device.type] <= 0:
        return False  # mps: torch.compile is experimental there; cpu: measured no faster
    saving = COMPILE_GAIN[device.type] * epoch_train_s * epochs_left
    return saving >= 2 * COMPILE_COST_S[device.type] * (sizes_left + 1)


class Forward:
    """The training forward: the model, or ``torch.compile(model)`` (``train.compile``). A compile
    error (no C++ compiler, an unsupported op) falls back to eager with a warning, never a failed run.
    With ``auto``, :meth:`decide` is called after the first epoch, with the measured verdict."""

    def __init__(self, model: nn.Module, mode: bool | str):
        self.model, self.compiled = model, None
        self.undecided = mode == "auto"
        if mode is True:
            self.decide(True)

    def decide(self, compile_: bool) -> None:
        self.undecided = False
        if compile_:
            self.compiled = torch.compile(self.model)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except Exception as e:  # noqa: BLE001 - any compiler failure: eager computes the same
                warnings.warn(f"torch.compile failed ({type(e).__name__}: {first_line(e)}); training continues "
                              f"in eager mode", VitsweepWarning, stacklevel=2)
                self.compiled = None
        return self.model(x)
