import pytest
import torch
from PIL import Image

from vitsweep.train.config import build_config
from vitsweep.train.data import load_data, stratified_split
from vitsweep.errors import DataError


def make_imagefolder(root, per_class=(12, 4), classes=("cat", "dog", "ship"), size=16):
    g = torch.Generator().manual_seed(0)
    for split, n in zip(("train", "test"), per_class):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=g).numpy()
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def data_cfg(**kw):
    return build_config({"data": kw}).data


def test_synthetic_splits_are_disjoint_stratified_and_uint8():
    cfg = data_cfg(source="synthetic", synthetic_train=400, synthetic_test=50, val_size=100, train_limit=200)
    d = load_data(cfg)
    assert d.train_x.dtype == torch.uint8 and d.train_x.shape == (200, 3, 32, 32)
    assert len(d.val_y) == 100 and len(d.test_y) == 50 and d.num_classes == 10
    assert torch.bincount(d.val_y).tolist() == [10] * 10  # stratified
    assert torch.bincount(d.train_y).tolist() == [20] * 10


def test_val_split_is_seeded_and_independent_of_train_limit():
    labels = torch.arange(1000) % 10
    a, rest_a = stratified_split(labels, 100, seed=0)
    b, _ = stratified_split(labels, 100, seed=0)
    c, _ = stratified_split(labels, 100, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(set(a.tolist()) & set(rest_a.tolist())) == 0 and len(a) + len(rest_a) == 1000
    v1 = load_data(data_cfg(source="synthetic", val_size=100)).val_x
    v2 = load_data(data_cfg(source="synthetic", val_size=100, train_limit=50)).val_x
    assert torch.equal(v1, v2)


def test_imagefolder_decodes_resizes_and_caches(tmp_path):
    make_imagefolder(tmp_path / "imgs")
    cfg = data_cfg(source="imagefolder", root=str(tmp_path / "imgs"), val_size=6, image_size=32,
                   cache_dir=str(tmp_path / "cache"))
    d = load_data(cfg)
    assert d.classes == ["cat", "dog", "ship"]
    assert d.train_x.shape == (30, 3, 32, 32) and d.test_x.shape == (12, 3, 32, 32)
    cached = list((tmp_path / "cache").glob("imagefolder-*.pt"))
    assert len(cached) == 2  # train+val pool, test
    # a second load (new process simulated by a different device key) reads the cache, same tensors
    import vitsweep.train.data as data_mod

    data_mod._MEMO.clear()
    for f in (tmp_path / "imgs" / "train" / "cat").iterdir():
        f.write_bytes(b"not a png")  # proves the cache, not the files, is read
    assert torch.equal(load_data(cfg).train_x, d.train_x)


def test_imagefolder_errors_say_where_to_put_files(tmp_path):
    with pytest.raises(DataError, match=r"no train/ folder \(expected .*/train/<class>/<image>"):
        load_data(data_cfg(source="imagefolder", root=str(tmp_path / "nothing")))
    make_imagefolder(tmp_path / "imgs")
    with pytest.raises(DataError, match="data.val_size = 500: the training set has only 36 images"):
        load_data(data_cfg(source="imagefolder", root=str(tmp_path / "imgs"), val_size=500))


def test_cifar10_offline_gives_a_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def no_network(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tv_utils, "download_url", no_network)
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", no_network)
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", no_network)
    with pytest.raises(DataError) as e:
        load_data(data_cfg(source="cifar10", root=str(tmp_path / "cifar")))
    msg = str(e.value)
    assert "could not be downloaded" in msg and "cifar-10-batches-py" in msg and "data.source=imagefolder" in msg


def test_imagefolder_refuses_an_empty_class_folder(tmp_path):
    make_imagefolder(tmp_path / "imgs")
    (tmp_path / "imgs" / "train" / "bird").mkdir()  # a class with no images
    (tmp_path / "imgs" / "test" / "bird").mkdir()
    with pytest.raises(DataError, match=r"train/bird/ has no images: a model would never see that class"):
        load_data(data_cfg(source="imagefolder", root=str(tmp_path / "imgs"), val_size=6))


def test_imagefolder_refuses_a_single_class(tmp_path):
    make_imagefolder(tmp_path / "imgs", classes=("cat",))
    with pytest.raises(DataError, match=r"train/ has 1 class folder\(s\) \(cat\); classification needs at least 2"):
        load_data(data_cfg(source="imagefolder", root=str(tmp_path / "imgs"), val_size=6))


def test_imagefolder_refuses_a_symlink_loop(tmp_path):
    make_imagefolder(tmp_path / "imgs")
    (tmp_path / "imgs" / "train" / "cat" / "loop").symlink_to(tmp_path / "imgs" / "train")
    with pytest.raises(DataError, match=r"cat/loop leads to .* again \(a symlink loop"):
        load_data(data_cfg(source="imagefolder", root=str(tmp_path / "imgs"), val_size=6))


def test_imagefolder_follows_a_plain_symlinked_class_folder(tmp_path):
    make_imagefolder(tmp_path / "imgs")
    real = tmp_path / "elsewhere"
    (tmp_path / "imgs" / "train" / "ship").rename(real)
    (tmp_path / "imgs" / "train" / "ship").symlink_to(real)
    data = load_data(data_cfg(source="imagefolder", root=str(tmp_path / "imgs"), val_size=6))
    assert len(data.train_y) + len(data.val_y) == 36 and data.classes == ["cat", "dog", "ship"]
