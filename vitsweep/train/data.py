"""Data: load a source once as uint8 tensors, split it, and keep it on the training device.

Sources: ``cifar10`` (torchvision's CIFAR10 in ``data.root``), ``imagefolder`` (``train/`` and
``test/`` class folders, decoded once and cached under ``data.cache_dir``) and ``synthetic``
(small generated data whose classes are learnable, for tests).

The validation split is held out of the training set (stratified, seeded by ``data.split_seed``),
so trials and early stopping never see the test set.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from vitsweep.train.config import DataConfig
from vitsweep.errors import DataError, VitsweepWarning, first_line
from vitsweep.paths import atomic_write

@dataclass
class Dataset:
    """Splits as uint8 images (N, 3, H, W) and int64 labels (N,), all on one device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, float, float]  # per channel, of the training split, in [0, 1]
    std: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    def to(self, device: torch.device) -> Dataset:
        moved = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return Dataset(**moved, classes=self.classes, mean=self.mean, std=self.std)


# An in-process memo so that the trials of one sweep decode and upload the data once.
_MEMO: dict[tuple[DataConfig, str], Dataset] = {}


def load_data(cfg: DataConfig, device: torch.device | str = "cpu") -> Dataset:
    key = (cfg, str(device))
    if key not in _MEMO:
        if len(_MEMO) >= 2:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = _load(cfg).to(torch.device(device))
    return _MEMO[key]


def _load(cfg: DataConfig) -> Dataset:
    source = _SOURCES[cfg.source](cfg)
    n_pool = len(source.train_labels)
    if cfg.val_size >= n_pool:
        raise DataError(
            f"data.val_size = {cfg.val_size}: the training set has only {n_pool} images; "
            f"set data.val_size below {n_pool} (e.g. --set data.val_size={max(1, n_pool // 10)})"
        )
    val_idx, rest = stratified_split(source.train_labels, cfg.val_size, cfg.split_seed)
    train_idx = rest
    if cfg.train_limit is not None:
        if cfg.train_limit > len(rest):
            warnings.warn(
                f"data.train_limit = {cfg.train_limit} but only {len(rest)} training images remain "
                f"after the validation split: using all {len(rest)}",
                VitsweepWarning,
                stacklevel=2,
            )
        else:
            picked, _ = stratified_split(source.train_labels[rest], cfg.train_limit, cfg.split_seed + 1)
            train_idx = rest[picked]
    test_idx = torch.arange(len(source.test_labels))
    if cfg.test_limit is not None and cfg.test_limit < len(test_idx):
        test_idx, _ = stratified_split(source.test_labels, cfg.test_limit, cfg.split_seed + 2)

    both = torch.cat([train_idx, val_idx])
    images = source.decode_train(both)
    train_x, val_x = images[: len(train_idx)], images[len(train_idx) :]
    mean, std = channel_stats(train_x)
    return Dataset(
        train_x=train_x,
        train_y=source.train_labels[train_idx],
        val_x=val_x,
        val_y=source.train_labels[val_idx],
        test_x=source.decode_test(test_idx),
        test_y=source.test_labels[test_idx],
        classes=source.classes,
        mean=mean,
        std=std,
    )


def stratified_split(labels: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``n`` indices keeping class proportions (largest remainder). Returns (picked, rest), sorted."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g)
    classes, counts = labels.unique(return_counts=True)
    quota = counts.double() * n / len(labels)
    k = quota.floor().long()
    k[(quota - k).argsort(descending=True, stable=True)[: n - int(k.sum())]] += 1
    shuffled = labels[perm]
    picked = torch.cat([perm[shuffled == c][:kc] for c, kc in zip(classes.tolist(), k.tolist())]).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[picked] = False
    return picked, torch.arange(len(labels))[mask]


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, 3, H, W), scaled to [0, 1]; chunked."""
    s = torch.zeros(x.shape[1], dtype=torch.float64)
    s2 = torch.zeros_like(s)
    for chunk in x.split(4096):
        c = chunk.to(torch.float64).div_(255)
        s += c.sum(dim=(0, 2, 3))
        s2 += c.square().sum(dim=(0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    std = (s2 / n - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Sources: labels up front (cheap), images decoded only for the indices a run uses.


@dataclass
class _Source:
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    decode_train: Callable[[torch.Tensor], torch.Tensor]
    decode_test: Callable[[torch.Tensor], torch.Tensor]


def _cifar10(cfg: DataConfig) -> _Source:
    from torchvision.datasets import CIFAR10

    root = Path(cfg.root)
    try:
        train = CIFAR10(str(root), train=True, download=cfg.download)
        test = CIFAR10(str(root), train=False, download=cfg.download)
    except Exception as e:  # offline download, corrupt archive, missing files
        raise DataError(
            f"data.source = cifar10: CIFAR-10 is not in data.root = {root} and could not be downloaded "
            f"({type(e).__name__}: {first_line(e, 10_000)}).\n"
            f"  Fix: put torchvision's files there ({root}/cifar-10-batches-py/, from cifar-10-python.tar.gz), "
            f"or point vitsweep at class folders: --set data.source=imagefolder --set data.root=PATH "
            f"(PATH/train/<class>/*.png and PATH/test/<class>/*.png, e.g. ../shared/data/cifar10)."
        ) from None

    def as_tensor(ds) -> tuple[torch.Tensor, torch.Tensor]:  # numpy (N, H, W, C) -> (N, C, H, W)
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

    (trx, try_), (tex, tey) = as_tensor(train), as_tensor(test)
    if cfg.image_size != trx.shape[-1]:
        raise DataError(f"data.image_size = {cfg.image_size}: CIFAR-10 images are {trx.shape[-1]}x{trx.shape[-1]}")
    return _Source(try_, tey, list(train.classes), lambda i: trx[i], lambda i: tex[i])


def _imagefolder(cfg: DataConfig) -> _Source:
    from torchvision.datasets.folder import find_classes

    root = Path(cfg.root)
    layout = f"expected {root}/train/<class>/<image> and {root}/test/<class>/<image>"
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"data.root = {root}: no {split}/ folder ({layout})")
    try:
        classes, class_to_idx = find_classes(str(root / "train"))
        test_classes, _ = find_classes(str(root / "test"))
    except FileNotFoundError as e:
        raise DataError(f"data.root = {root}: {e} ({layout})") from None
    if test_classes != classes:
        raise DataError(f"data.root = {root}: train/ has classes {classes} but test/ has {test_classes}")
    if len(classes) < 2:
        raise DataError(f"data.root = {root}: train/ has {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); "
                        f"classification needs at least 2 ({layout})")
    splits = {}
    for split in ("train", "test"):
        samples = _scan(root / split, class_to_idx)
        if not samples:
            raise DataError(f"data.root = {root}: no images in {split}/ ({layout})")
        labels = torch.tensor([c for _, c in samples])
        empty = [c for i, c in enumerate(classes) if not (labels == i).any()]
        if empty:
            raise DataError(f"data.root = {root}: {', '.join(f'{split}/{c}/' for c in empty)} "
                            f"{'has' if len(empty) == 1 else 'have'} no images: a model would never see "
                            f"{'that class' if len(empty) == 1 else 'those classes'}; add images or remove the folder(s)")
        splits[split] = ([p for p, _ in samples], labels)

    def decoder(split: str) -> Callable[[torch.Tensor], torch.Tensor]:
        paths = splits[split][0]
        return lambda idx: _decode_cached([paths[i] for i in idx.tolist()], root, cfg)

    return _Source(splits["train"][1], splits["test"][1], classes, decoder("train"), decoder("test"))


def _scan(split_dir: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """(path, class index) of every image under ``split_dir/<class>/``, in torchvision's
    ``make_dataset`` order (classes sorted, then folders, then files). Symlinks are followed, but a
    folder reached twice (a symlink loop, or a second link to the same folder) is refused: it would
    count the same images again, under the wrong class for a loop to the parent."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    out: list[tuple[str, int]] = []
    for cls in sorted(class_to_idx):
        seen = {os.path.realpath(split_dir): str(split_dir)}  # a link up to the split folder is a loop too
        walked = []
        for dirpath, _, fnames in os.walk(split_dir / cls, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:
                raise DataError(f"{dirpath} leads to {seen[real]} again (a symlink loop, or a second link to the same "
                                f"folder): its images would be counted twice; remove the link")
            seen[real] = dirpath
            walked.append((dirpath, fnames))
        for dirpath, fnames in sorted(walked):
            out.extend((os.path.join(dirpath, f), class_to_idx[cls]) for f in sorted(fnames)
                       if has_file_allowed_extension(f, IMG_EXTENSIONS))
    return out


def _decode_cached(paths: list[str], root: Path, cfg: DataConfig) -> torch.Tensor:
    """Decode image files to uint8 (N, 3, S, S) once; later calls load the cached tensor file."""
    rel = [os.path.relpath(p, root) for p in paths]
    key = hashlib.sha256(json.dumps([str(root.resolve()), cfg.image_size, rel]).encode()).hexdigest()[:20]
    cache = Path(cfg.cache_dir) / f"imagefolder-{key}.pt"
    if cache.is_file():
        try:
            return torch.load(cache, weights_only=True)
        except Exception:
            cache.unlink(missing_ok=True)  # corrupt or truncated: decode again
    images = _decode(paths, cfg.image_size)
    try:
        atomic_write(cache, lambda tmp: torch.save(images, tmp))
    except OSError as e:  # a read-only storage/, a full disk: say which setting, before anything else is made
        raise DataError(f"data.cache_dir = {cfg.cache_dir}: cannot write the decoded images there ({e.strerror}); "
                        f"make it writable, or point data.cache_dir at a writable folder "
                        f"(--set data.cache_dir=PATH)") from None
    return images


def _decode(paths: list[str], size: int) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    with _progress(len(paths), "decoding images") as advance:
        for i, p in enumerate(paths):
            try:
                with Image.open(p) as im:
                    im = im.convert("RGB")
                    if im.size != (size, size):
                        im = im.resize((size, size), Image.Resampling.BILINEAR)
                    out[i] = torch.as_tensor(np.array(im)).permute(2, 0, 1)
            except Exception as e:
                raise DataError(f"cannot decode image {p}: {e}") from None
            advance()
    return out


class _progress:
    """A rich progress bar on stderr for long decodes (silent for small ones)."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.bar = total, label, None

    def __enter__(self) -> Callable[[], None]:
        if self.total < 2000:
            return lambda: None
        from rich.progress import Progress

        self.bar = Progress(transient=True)
        self.bar.start()
        task = self.bar.add_task(self.label, total=self.total)
        return lambda: self.bar.advance(task)  # type: ignore[union-attr]

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _synthetic(cfg: DataConfig) -> _Source:
    """Class = a colour and a low-frequency pattern, plus noise: learnable in a few epochs."""
    g = torch.Generator().manual_seed(1234)
    k, s = cfg.synthetic_classes, cfg.image_size
    colours = torch.rand(k, 3, 1, 1, generator=g) * 0.6 + 0.2
    coarse = torch.rand(k, 1, 4, 4, generator=g)
    patterns = torch.nn.functional.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)

    def make(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % k
        labels = labels[torch.randperm(n, generator=gen)]
        x = 0.6 * colours[labels] + 0.4 * patterns[labels] + 0.25 * torch.randn(n, 3, s, s, generator=gen)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels

    trx, try_ = make(cfg.synthetic_train, 1)
    tex, tey = make(cfg.synthetic_test, 2)
    return _Source(try_, tey, [f"class{i}" for i in range(k)], lambda i: trx[i], lambda i: tex[i])


_SOURCES: dict[str, Callable[[DataConfig], _Source]] = {
    "cifar10": _cifar10,
    "imagefolder": _imagefolder,
    "synthetic": _synthetic,
}
