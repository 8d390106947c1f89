"""Training images/s: vitsweep's trainer against a DataLoader + PIL-transforms pipeline.

The baseline is how the popular CIFAR ViT scripts feed a model: a map-style dataset holding
HWC uint8 arrays, PIL conversion per image, RandomCrop(padding=4) + RandomHorizontalFlip +
ToTensor + Normalize per image, and a shuffling DataLoader with worker processes. Both
pipelines train the same ViT with the same optimizer, batch size and precision, in this process.

    python benchmarks/train_throughput.py                       # ../shared/data/cifar10, else synthetic
    python benchmarks/train_throughput.py --images 5000 --epochs 2 --workers 2 --device cuda
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from vitsweep.train.config import build_config
from vitsweep.train.data import load_data
from vitsweep.train.device import resolve_device, synchronize
from vitsweep.train.model import build_model
from vitsweep.train.loop import build_optimizer, train


class PILDataset(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's __getitem__: numpy HWC -> PIL -> per-image transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, C)
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def dataloader_images_per_sec(cfg, data, epochs: int, workers: int, device: torch.device) -> float:
    transform = T.Compose([T.RandomCrop(data.image_size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(data.mean, data.std)])
    ds = PILDataset(data.train_x.cpu(), data.train_y.cpu(), transform)
    loader = DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, data.image_size, data.num_classes).to(device)
    opt = build_optimizer(model, cfg.optimizer)
    rates = []
    for _ in range(epochs):
        model.train()
        t0, seen = time.perf_counter(), 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optimizer.grad_clip)
            opt.step()
            seen += len(y)
        synchronize(device)
        rates.append(seen / (time.perf_counter() - t0))
    return max(rates)  # best epoch: excludes the first epoch's worker start-up if epochs > 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/cifar10", help="class folders; synthetic data if absent")
    ap.add_argument("--images", type=int, default=2000, help="training images per epoch")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader worker processes for the baseline")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32")
    args = ap.parse_args()

    source = {"source": "imagefolder", "root": args.data} if Path(args.data, "train").is_dir() else \
        {"source": "synthetic", "synthetic_train": args.images + 200}
    cfg = build_config({
        "data": {**source, "train_limit": args.images, "val_size": 200, "test_limit": 100},
        "model": {"preset": args.preset, "patch_size": args.patch},
        "augment": {"policy": "basic"},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "device": args.device,
                  "precision": args.precision, "test": False, "checkpoint": False},
    })
    device = resolve_device(args.device)
    data = load_data(cfg.data, device)
    print(f"device {device}, {args.preset} ViT patch {args.patch}, batch {args.batch_size}, "
          f"{len(data.train_y)} images x {args.epochs} epochs, data {cfg.data.source}, torch threads {torch.get_num_threads()}")

    ours = max(h["images_per_sec"] for h in train(cfg, data=data).history)
    baseline = dataloader_images_per_sec(cfg, data, args.epochs, args.workers, device)
    print(f"vitsweep trainer (uint8 on {device.type}, batch augmentation): {ours:10,.1f} images/s")
    print(f"DataLoader + PIL transforms ({args.workers} workers):  {baseline:10,.1f} images/s")
    print(f"ratio (vitsweep / DataLoader): {ours / baseline:.2f}x")


if __name__ == "__main__":
    main()
