import pytest
import torch

from vitsweep.train.augment import BatchAugment, random_crop, random_erasing, random_flip
from vitsweep.train.config import build_config

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def batch(n=32, size=32):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g), torch.arange(n) % 10


@pytest.mark.parametrize("policy", ["none", "basic", "extended", "randaugment", "autoaugment"])
@pytest.mark.parametrize("mix", [{}, {"mixup": 0.8}, {"mixup": 0.8, "cutmix": 1.0}])
def test_shapes_dtypes_and_targets(policy, mix):
    cfg = build_config({"augment": {"policy": policy, **mix}}).augment
    x, y = batch()
    out, target = BatchAugment(cfg, 10, MEAN, STD, torch.device("cpu"))(x, y)
    assert out.shape == (32, 3, 32, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
    if mix:
        assert target.shape == (32, 10) and torch.allclose(target.sum(1), torch.ones(32))
    else:
        assert torch.equal(target, y)


@pytest.mark.parametrize("policy", ["basic", "extended", "randaugment", "autoaugment"])
def test_same_seed_same_batch_different_seed_different_batch(policy):
    aug = BatchAugment(build_config({"augment": {"policy": policy, "mixup": 0.5}}).augment, 10, MEAN, STD, torch.device("cpu"))
    x, y = batch()
    torch.manual_seed(7)
    a = aug(x, y)
    torch.manual_seed(7)
    b = aug(x, y)
    torch.manual_seed(8)
    c = aug(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_crop_is_a_shifted_window_of_the_padded_image_and_flip_mirrors():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.int64).view(2, 3, 8, 8)
    torch.manual_seed(0)
    out = random_crop(x, 2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):  # each output equals some window of its own padded image
        windows = [padded[i, :, r : r + 8, c : c + 8] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    torch.manual_seed(0)
    flipped = random_flip(x)
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))


def test_erasing_fills_rectangles_with_value():
    x = torch.ones(64, 3, 16, 16)
    out = random_erasing(x, p=1.0, value=0.0)
    erased = (out == 0).all(1)  # (B, H, W)
    assert erased.any(dim=(1, 2)).all()  # every image got a rectangle
    for i in range(4):
        rows, cols = erased[i].nonzero(as_tuple=True)
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert erased[i].sum() == h * w  # one solid rectangle
