"""Tests of clcourse.data: digits, shapes, CIFAR-10/STL-10 (on small fake files), views, ViewLoader."""

from __future__ import annotations

import pickle
import urllib.error

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import datasets

from clcourse.data import (
    load_folder,
    COLOR_NAMES,
    COLOR_VALUES,
    FACTOR_NAMES,
    SHAPE_NAMES,
    TEXTURE_NAMES,
    DatasetNotFoundError,
    ImageData,
    MultiCrop,
    TwoViews,
    ViewLoader,
    as_image_data,
    cifar10,
    collate_views,
    load_digits,
    make_shapes,
    stl10,
)
from clcourse.data import shapes as shapes_module
from fake_datasets import (
    accept_fake_cifar10,
    accept_fake_stl10,
    write_fake_cifar10,
    write_fake_stl10,
    write_image_folder,
)

# ---------------------------------------------------------------- ImageData


def test_image_data_is_a_dataset_with_subset():
    images = torch.rand(5, 3, 4, 4)
    data = ImageData(images, torch.arange(5), {"color": torch.arange(5) % 2})
    assert len(data) == 5
    image, label = data[3]
    assert torch.equal(image, images[3]) and label == 3
    sub = data.subset([4, 1])
    assert torch.equal(sub.labels, torch.tensor([4, 1]))
    assert torch.equal(sub.factors["color"], torch.tensor([0, 1]))
    assert "n=5" in repr(data)


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (torch.rand(5, 4, 4), torch.arange(5), r"\[N, C, H, W\]"),
        (torch.rand(5, 1, 4, 4), torch.arange(4), "N=5"),
        (torch.rand(5, 1, 4, 4), torch.zeros(5), "int64"),
        (torch.zeros(5, 1, 4, 4, dtype=torch.uint8), torch.arange(5), "floating point"),
    ],
)
def test_image_data_rejects_bad_input(images, labels, match):
    with pytest.raises(ValueError, match=match):
        ImageData(images, labels)


# ---------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_range():
    data = load_digits(image_size=16, split="train")
    assert data.images.shape == (1257, 1, 16, 16) and data.images.dtype == torch.float32
    assert data.labels.shape == (1257,) and data.labels.dtype == torch.int64
    assert data.images.min() >= 0 and data.images.max() <= 1
    assert load_digits(split="test").images.shape == (540, 1, 16, 16)


def test_digits_native_size_is_pixel_over_16():
    from sklearn.datasets import load_digits as sklearn_load_digits

    raw = sklearn_load_digits()
    data = load_digits(image_size=8, split="all")
    assert torch.allclose(data.images[:, 0] * 16, torch.as_tensor(raw.images, dtype=torch.float32))
    assert torch.equal(data.labels, torch.as_tensor(raw.target))


def test_digits_split_is_fixed_disjoint_and_stratified():
    train, test, every = (load_digits(8, split) for split in ("train", "test", "all"))
    assert torch.equal(load_digits(8, "train").images, train.images)  # same split every call
    # Every image lands in exactly one split: the sorted multiset of images matches.
    union = torch.cat([train.images, test.images]).flatten(1)
    assert sorted(map(tuple, union.tolist())) == sorted(map(tuple, every.images.flatten(1).tolist()))
    test_fraction = test.labels.bincount() / every.labels.bincount()
    assert torch.all((test_fraction - 0.3).abs() < 0.01)


def test_digits_rejects_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        load_digits(split="val")
    with pytest.raises(ValueError, match="image_size"):
        load_digits(image_size=4)


# ---------------------------------------------------------------- shapes


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(600, image_size=32, seed=0)


def _chroma(images):
    """max - min over RGB [N, H, W]: 0 on the grey background, >= 0.65 on a fully covered pixel."""
    return images.max(dim=1).values - images.min(dim=1).values


def test_shapes_shapes_dtypes_ranges_and_factor_codes(shapes):
    assert shapes.images.shape == (600, 3, 32, 32) and shapes.images.dtype == torch.float32
    assert shapes.images.min() >= 0 and shapes.images.max() <= 1
    assert set(shapes.factors) == set(FACTOR_NAMES)
    assert torch.equal(shapes.labels, shapes.factors["shape"])
    sizes = {"shape": len(SHAPE_NAMES), "color": len(COLOR_NAMES), "texture": len(TEXTURE_NAMES),
             "x": 3, "y": 3, "scale": 3, "rotation": 4}
    assert len(SHAPE_NAMES) >= 6
    for name, size in sizes.items():
        values = shapes.factors[name]
        assert values.dtype == torch.int64
        assert set(values.unique().tolist()) == set(range(size)), name  # every code occurs
    assert make_shapes(10, image_size=16).images.shape == (10, 3, 16, 16)


def test_shapes_are_deterministic_from_seed(shapes):
    again = make_shapes(600, image_size=32, seed=0)
    assert torch.equal(again.images, shapes.images)
    assert all(torch.equal(again.factors[k], shapes.factors[k]) for k in FACTOR_NAMES)
    assert not torch.equal(make_shapes(600, image_size=32, seed=1).images, shapes.images)


def test_color_factor_is_the_colour_of_the_shape(shapes):
    chroma = _chroma(shapes.images)
    for image, c, color in zip(shapes.images, chroma, shapes.factors["color"]):
        interior = c >= 0.95 * c.max()  # fully covered pixels, not the blended edge
        mean = image[:, interior].mean(dim=1)
        assert torch.allclose(mean, COLOR_VALUES[color], atol=0.03)


def test_background_is_grey_and_plain_means_flat(shapes):
    images, texture = shapes.images, shapes.factors["texture"]
    corner = images[:, :, 0, 0]
    assert torch.allclose(corner, corner[:, :1].expand(-1, 3))  # the shape never reaches a corner
    background = _chroma(images) == 0
    spread = torch.stack([img[0][bg].std() for img, bg in zip(images, background)])
    plain = texture == TEXTURE_NAMES.index("plain")
    assert torch.all(spread[plain] < 1e-6) and torch.all(spread[~plain] > 0.02)


def test_position_and_scale_factors_match_the_mask(shapes):
    mask = (_chroma(shapes.images) > 0.3).float()  # [N, H, W]
    area = mask.sum(dim=(1, 2))
    axis = torch.arange(32.0)
    centre_col = (mask.sum(1) * axis).sum(1) / area
    centre_row = (mask.sum(2) * axis).sum(1) / area

    def mean_by(values, factor):
        return torch.stack([values[shapes.factors[factor] == code].mean() for code in range(3)])

    assert torch.all(mean_by(centre_col, "x").diff() > 2)  # left -> right
    assert torch.all(mean_by(centre_row, "y").diff() > 2)  # top -> bottom
    for code in range(len(SHAPE_NAMES)):  # larger scale code, larger area, within a shape
        of_shape = shapes.factors["shape"] == code
        areas = [area[of_shape & (shapes.factors["scale"] == s)].mean() for s in range(3)]
        assert areas[0] < areas[1] < areas[2], SHAPE_NAMES[code]


def test_rotation_stays_within_each_shapes_symmetry_period():
    periods = torch.tensor([shapes_module.SYMMETRY_PERIOD[n] for n in SHAPE_NAMES])
    assert torch.all(periods <= 2 * torch.pi)
    # A square turned by its full period looks the same: the square's period must be 90 degrees.
    assert shapes_module.SYMMETRY_PERIOD["square"] == pytest.approx(torch.pi / 2)


def test_correlated_color_plants_a_spurious_correlation():
    always = make_shapes(300, image_size=16, seed=0, correlated_color=1.0)
    assert torch.equal(always.factors["color"], always.factors["shape"])
    half = make_shapes(3000, image_size=8, seed=0, correlated_color=0.5)
    agree = (half.factors["color"] == half.factors["shape"]).float().mean()
    assert abs(agree - (0.5 + 0.5 / len(COLOR_NAMES))) < 0.04
    independent = make_shapes(3000, image_size=8, seed=0)
    assert abs((independent.factors["color"] == independent.factors["shape"]).float().mean() - 1 / 6) < 0.03
    with pytest.raises(ValueError, match="correlated_color"):
        make_shapes(10, correlated_color=1.5)


# ---------------------------------------------------------------- CIFAR-10 on fake files (fake_datasets.py)

def test_cifar10_round_trips_fake_files(tmp_path, monkeypatch):
    written = write_fake_cifar10(tmp_path)
    accept_fake_cifar10(tmp_path, monkeypatch)

    train = cifar10(root=tmp_path, train=True)
    assert len(train) == 10 and train.classes[3] == "class3"
    image, label = train[2]  # first image of data_batch_2
    data, labels = written["data_batch_2"]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert torch.allclose(image, torch.from_numpy(data[0]).float() / 255)
    assert image[1, 5, 7] == pytest.approx(data[0, 1, 5, 7] / 255)  # channel 1, row 5, column 7
    assert label == labels[0]

    test = cifar10(root=tmp_path, train=False, transform=lambda x: x * 0 + 0.5)
    assert len(test) == 2 and torch.all(test[0][0] == 0.5)  # the transform sees a float tensor

    everything = as_image_data(train)
    assert everything.images.shape == (10, 3, 32, 32)
    assert torch.equal(everything.images[2], image)
    assert torch.equal(pickle.loads(pickle.dumps(train))[2][0], image)  # spawned DataLoader workers pickle it


def test_cifar10_corrupted_files_fail_the_md5_check(tmp_path):
    write_fake_cifar10(tmp_path)  # fake files, real md5s: torchvision rejects them
    with pytest.raises(DatasetNotFoundError, match="not found or incomplete"):
        cifar10(root=tmp_path)


def test_cifar10_missing_says_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        cifar10(root=tmp_path / "nowhere")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str((tmp_path / "nowhere" / "cifar-10-batches-py").resolve()) in message
    assert "download=True" in message and "cifar-10-python.tar.gz" in message


def test_cifar10_offline_download_raises_the_clear_error(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(datasets.cifar, "download_and_extract_archive", no_network)
    with pytest.raises(DatasetNotFoundError, match="Downloading failed.*name resolution"):
        cifar10(root=tmp_path, download=True)


def test_default_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CLCOURSE_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetNotFoundError, match="elsewhere"):
        cifar10()


# ---------------------------------------------------------------- STL-10 on fake files (fake_datasets.py)

@pytest.mark.parametrize("split", ["train", "test", "unlabeled"])
def test_stl10_round_trips_fake_files(tmp_path, monkeypatch, split):
    written = write_fake_stl10(tmp_path)
    accept_fake_stl10(tmp_path, monkeypatch)
    images, labels = written[split]

    data = stl10(root=tmp_path, split=split)
    assert len(data) == len(images) and data.classes[0] == "class0"
    image, label = data[0]
    assert image.shape == (3, 96, 96) and image.dtype == torch.float32
    assert image[2, 5, 70] == pytest.approx(123 / 255)
    assert torch.allclose(image, torch.from_numpy(images[0]).float() / 255)
    assert label == (-1 if split == "unlabeled" else labels[0])
    assert torch.equal(as_image_data(data).images[0], image)


def test_stl10_missing_or_offline_raises_the_clear_error(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError, match="stl10_binary.tar.gz"):
        stl10(root=tmp_path)

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Network is unreachable")

    monkeypatch.setattr(datasets.stl10, "download_and_extract_archive", no_network)
    with pytest.raises(DatasetNotFoundError, match="Downloading failed"):
        stl10(root=tmp_path, download=True)
    with pytest.raises(ValueError, match="split"):
        stl10(root=tmp_path, split="validation")


# ---------------------------------------------------------------- your own folder of images


def test_load_folder_resizes_to_rgb_and_splits_stratified(tmp_path):
    root = write_image_folder(tmp_path / "pictures", per_class=6)
    train, test = load_folder(root, 8, split="train"), load_folder(root, 8, split="test")
    assert train.images.shape == (8, 3, 8, 8) and test.images.shape == (4, 3, 8, 8)  # 2 of 6 per class held out
    assert train.images.dtype == torch.float32 and 0 <= train.images.min() and train.images.max() <= 1
    assert train.labels.tolist().count(0) == 4 and set(test.labels.tolist()) == {0, 1}
    assert (train.images[train.labels == 1, 0].mean() > train.images[train.labels == 0, 0].mean() + 0.3)
    assert torch.equal(load_folder(root, 8, split="test").images, test.images)  # the same split every time


def test_load_folder_keeps_a_train_and_test_split_of_its_own(tmp_path):
    write_image_folder(tmp_path / "own" / "train", per_class=3)
    write_image_folder(tmp_path / "own" / "val", per_class=2)
    assert len(load_folder(tmp_path / "own", 8, "train")) == 6 and len(load_folder(tmp_path / "own", 8, "test")) == 4


def test_load_folder_says_what_layout_it_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder at"):
        load_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"the folder is empty; expected PATH/<class>/<image>"):
        load_folder(tmp_path / "empty")
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"found files \['a.png'\] but no class folders"):
        load_folder(tmp_path / "loose")
    root = write_image_folder(tmp_path / "gap", per_class=2)
    (root / "bird").mkdir()
    (root / "bird" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="bird"):
        load_folder(root)
    broken = write_image_folder(tmp_path / "broken", per_class=2)
    (broken / "cat" / "9.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read .*9.png"):
        load_folder(broken)
    with pytest.raises(ValueError, match="split must be one of"):
        load_folder(root, split="val")


# ---------------------------------------------------------------- per-sample views


def _jitter(x):
    return x + 0.01 * torch.randn_like(x)


def _local_crop(x):
    return x[:, :8, :8]


def test_two_views_and_collate_give_a_list_of_batches():
    data = load_digits(16, "test")
    loader = DataLoader(TwoViews(data, _jitter), batch_size=32, collate_fn=collate_views)
    views, labels = next(iter(loader))
    assert len(views) == 2 and all(v.shape == (32, 1, 16, 16) for v in views)
    assert not torch.equal(views[0], views[1])  # two independent draws
    assert torch.equal(labels, data.labels[:32]) and labels.dtype == torch.int64


def test_multicrop_gives_global_then_local_views():
    data = load_digits(16, "test")
    dataset = MultiCrop(data, _jitter, _local_crop, n_global=2, n_local=3)
    views, label = dataset[0]
    assert len(views) == 5 and label == int(data.labels[0])
    views, labels = collate_views([dataset[i] for i in range(4)])
    assert [tuple(v.shape) for v in views] == [(4, 1, 16, 16)] * 2 + [(4, 1, 8, 8)] * 3


# ---------------------------------------------------------------- ViewLoader


def noise_augment(x, generator=None):
    """Stand-in for BatchedAugment: noise drawn on the CPU from the generator."""
    return x + torch.rand(x.shape, generator=generator).to(x.device)


@pytest.fixture
def indexed():
    """Image i is filled with the value i, and its label is i: batches reveal their indices."""
    n = 50
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4).clone()
    return ImageData(images, torch.arange(n))


def _epoch(loader):
    return [([v.clone() for v in views], labels.clone()) for views, labels in loader]


def _same(a, b):
    return all(
        torch.equal(la, lb) and all(torch.equal(va, vb) for va, vb in zip(views_a, views_b))
        for (views_a, la), (views_b, lb) in zip(a, b, strict=True)
    )


def test_view_loader_batches_views_and_labels(indexed):
    loader = ViewLoader(indexed, noise_augment, batch_size=16, n_views=3, seed=0, device="cpu")
    assert len(loader) == 3  # 50 // 16 with drop_last
    batches = _epoch(loader)
    assert len(batches) == 3
    for views, labels in batches:
        assert len(views) == 3 and all(v.shape == (16, 1, 4, 4) for v in views)
        assert not torch.equal(views[0], views[1])
        # Each view is its image plus noise in [0, 1): the label i sits under the noise.
        assert torch.all(views[0].flatten(1).min(1).values.floor() == labels)


def test_view_loader_covers_the_data_without_drop_last(indexed):
    loader = ViewLoader((indexed.images, indexed.labels), None, batch_size=16, drop_last=False)
    assert len(loader) == 4
    labels = torch.cat([labels for _, labels in loader])
    assert sorted(labels.tolist()) == list(range(50))
    unshuffled = ViewLoader(indexed, None, batch_size=16, shuffle=False, drop_last=False)
    assert torch.equal(torch.cat([labels for _, labels in unshuffled]), torch.arange(50))


def test_view_loader_epochs_are_a_function_of_seed_and_epoch(indexed):
    def loader(seed=0):
        return ViewLoader(indexed, noise_augment, batch_size=16, seed=seed)

    running = loader()
    epoch0, epoch1 = _epoch(running), _epoch(running)  # advances on its own
    assert not _same(epoch0, epoch1)

    resumed = loader()
    resumed.set_epoch(1)
    assert _same(_epoch(resumed), epoch1)  # a resumed run sees the same epoch 1
    resumed.set_epoch(0)
    assert _same(_epoch(resumed), epoch0)
    assert not _same(_epoch(loader(seed=1)), epoch0)


def test_view_loader_rejects_bad_input(indexed):
    with pytest.raises(ValueError, match="no batch"):
        ViewLoader(indexed, None, batch_size=64)
    with pytest.raises(TypeError, match="ImageData"):
        ViewLoader(indexed.images, None)
    with pytest.raises(ValueError, match="epoch"):
        ViewLoader(indexed, None, batch_size=8).set_epoch(-1)
