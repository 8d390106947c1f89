"""Augmentation on whole batches, on the training device, with no per-image Python loop.

``BatchAugment(cfg, ...)(x_uint8, y) -> (x_float_normalized, target)``. Randomness comes from the
global torch RNG, which the trainer seeds once per epoch: the same seed and epoch give the same
batch, which is what makes kill-and-resume reproduce an uninterrupted run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from vitsweep.train.config import AugmentConfig


def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Random crop of each image from a zero-padded copy. (B, C, H, W) -> (B, C, H, W), any dtype."""
    if padding == 0:
        return x
    B, C, H, W = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * padding + 1, (B, 1), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (B, 1), device=x.device)
    rows = (dy + torch.arange(H, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx + torch.arange(W, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    b = torch.arange(B, device=x.device)[:, None, None, None]
    c = torch.arange(C, device=x.device)[None, :, None, None]
    return padded[b, c, rows, cols]


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of a random half of the batch."""
    flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
    return torch.where(flip, x.flip(-1), x)


def color_jitter(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-image brightness, contrast and saturation factors in [1-s, 1+s]. x: float in [0, 1]."""
    B = x.shape[0]

    def factor() -> torch.Tensor:
        return 1 + (torch.rand(B, 1, 1, 1, device=x.device) * 2 - 1) * strength

    gray_w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    x = x * factor()
    mean = (x * gray_w).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)  # (B, 1, 1, 1)
    x = (x - mean) * factor() + mean
    gray = (x * gray_w).sum(1, keepdim=True)  # (B, 1, H, W)
    x = (x - gray) * factor() + gray
    return x.clamp_(0, 1)


def random_rotation(x: torch.Tensor, max_degrees: float) -> torch.Tensor:
    """Rotate each image by its own angle in [-max, max] (bilinear, zero fill). x: float."""
    B = x.shape[0]
    angle = (torch.rand(B, device=x.device) * 2 - 1) * math.radians(max_degrees)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_erasing(x: torch.Tensor, p: float, value: float = 0.0) -> torch.Tensor:
    """With probability p per image, fill a random rectangle (2-33% of the area) with `value`."""
    B, _, H, W = x.shape
    dev = x.device
    area = torch.empty(B, device=dev).uniform_(0.02, 0.33) * H * W
    ratio = torch.empty(B, device=dev).uniform_(math.log(0.3), math.log(3.3)).exp()
    h = (area * ratio).sqrt().round().clamp(1, H)
    w = (area / ratio).sqrt().round().clamp(1, W)
    top = (torch.rand(B, device=dev) * (H - h + 1)).floor()
    left = (torch.rand(B, device=dev) * (W - w + 1)).floor()
    rows = torch.arange(H, device=dev).view(1, H, 1)
    cols = torch.arange(W, device=dev).view(1, 1, W)
    inside = (
        (rows >= top.view(B, 1, 1)) & (rows < (top + h).view(B, 1, 1))
        & (cols >= left.view(B, 1, 1)) & (cols < (left + w).view(B, 1, 1))
    )  # (B, H, W)
    erase = inside & (torch.rand(B, 1, 1, device=dev) < p)
    return x.masked_fill(erase[:, None], value)


class BatchAugment:
    """The training-time pipeline of one config: uint8 batch in, normalized float batch out.

    Targets are class indices, or soft labels (B, classes) when mixup/cutmix is on.
    """

    def __init__(self, cfg: AugmentConfig, num_classes: int, mean, std, device: torch.device):
        self.cfg = cfg
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.randaugment = (  # the policy op drawn per chunk: RandAugment, or AutoAugment's CIFAR-10 policy
            v2.RandAugment(num_ops=cfg.randaugment_ops, magnitude=cfg.randaugment_magnitude)
            if cfg.policy == "randaugment"
            else v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10) if cfg.policy == "autoaugment" else None
        )
        mixers = []
        if cfg.mixup > 0:
            mixers.append(v2.MixUp(alpha=cfg.mixup, num_classes=num_classes))
        if cfg.cutmix > 0:
            mixers.append(v2.CutMix(alpha=cfg.cutmix, num_classes=num_classes))
        self.mix = v2.RandomChoice(mixers) if len(mixers) > 1 else (mixers[0] if mixers else None)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float32 normalized; also what evaluation uses."""
        return (x.float().div_(255) - self.mean) / self.std

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        if cfg.policy != "none":
            if self.randaugment is not None:
                # One op draw per chunk of the batch: per-image variety without a per-image loop.
                x = torch.cat([self.randaugment(c) for c in x.chunk(min(16, x.shape[0]))])
            x = random_crop(x, cfg.crop_padding)
            if cfg.flip:
                x = random_flip(x)
        if cfg.policy == "extended":
            xf = x.float().div_(255)
            if cfg.jitter > 0:
                xf = color_jitter(xf, cfg.jitter)
            if cfg.rotation > 0:
                xf = random_rotation(xf, cfg.rotation)
            x = (xf - self.mean) / self.std
            if cfg.erasing > 0:
                x = random_erasing(x, cfg.erasing)  # 0 = the mean colour after normalization
        else:
            x = self.normalize(x)
        if self.mix is not None:
            x, y = self.mix(x, y)
        return x, y
