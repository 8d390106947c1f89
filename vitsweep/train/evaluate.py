"""Evaluation of a model on uint8 images: loss, accuracy, per-class accuracy and the confusion
matrix, accumulated on the device with one host sync."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vitsweep.train.augment import BatchAugment
from vitsweep.train.device import autocast


@dataclass
class EvalResult:
    loss: float
    acc: float
    per_class_acc: list[float]
    confusion: list[list[int]]  # rows: true class, columns: predicted


@torch.no_grad()
def evaluate(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, augment: BatchAugment,
             num_classes: int, batch_size: int, precision: str, device: torch.device) -> EvalResult:
    """Loss, accuracy, per-class accuracy and confusion matrix over uint8 images; one host sync."""
    if isinstance(model, nn.Module):
        model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.long)
    with autocast(device, precision):
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            logits = model(augment.normalize(xb)).float()
            loss_sum += F.cross_entropy(logits, yb, reduction="sum")
            confusion += torch.bincount(yb * num_classes + logits.argmax(1), minlength=num_classes**2)
    conf = confusion.view(num_classes, num_classes).cpu()
    total = max(int(conf.sum()), 1)
    return EvalResult(
        loss=float(loss_sum) / total,
        acc=float(conf.diag().sum()) / total,
        per_class_acc=(conf.diag().double() / conf.sum(1).clamp_min(1)).tolist(),
        confusion=conf.tolist(),
    )
