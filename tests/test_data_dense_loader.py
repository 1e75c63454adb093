"""Tests of clcourse.data.DenseLoader: shuffled, augmented (images, masks) batches that fit() can train on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clcourse.augment import BatchedAugment
from clcourse.data import IGNORE_INDEX, DenseData, DenseLoader, make_scenes
from clcourse.data.views import epoch_generators
from clcourse.train import fit

N = 50


@pytest.fixture
def indexed():
    """Image i is filled with the value i and its mask with the class i: batches reveal their indices."""
    images = torch.arange(N, dtype=torch.float32).view(N, 1, 1, 1).expand(N, 1, 6, 6).clone()
    masks = torch.arange(N).view(N, 1, 1).expand(N, 6, 6).clone()
    empty = [torch.zeros(0, 4)] * N
    return DenseData(images / N, masks, empty, [torch.zeros(0, dtype=torch.long)] * N,
                     tuple(f"class {i}" for i in range(N)))


def _epoch(loader):
    return [(images.clone(), masks.clone()) for images, masks in loader]


def _same(a, b):
    return all(torch.equal(ia, ib) and torch.equal(ma, mb) for (ia, ma), (ib, mb) in zip(a, b, strict=True))


def test_batches_keep_images_and_masks_together(indexed):
    loader = DenseLoader(indexed, None, batch_size=16, seed=0, device="cpu")
    assert len(loader) == 3  # 50 // 16 with drop_last
    seen = []
    for images, masks in _epoch(loader):
        assert images.shape == (16, 1, 6, 6) and masks.shape == (16, 6, 6) and masks.dtype == torch.int64
        index = masks[:, 0, 0]
        assert torch.equal(images[:, 0, 0, 0], index.float() / N)
        seen += index.tolist()
    assert len(set(seen)) == 48


def test_without_drop_last_every_image_comes_once_and_shuffle_off_keeps_order(indexed):
    loader = DenseLoader(indexed, None, batch_size=16, drop_last=False)
    assert len(loader) == 4
    assert sorted(torch.cat([m[:, 0, 0] for _, m in loader]).tolist()) == list(range(N))
    unshuffled = DenseLoader(indexed, None, batch_size=16, shuffle=False, drop_last=False)
    assert torch.equal(torch.cat([m[:, 0, 0] for _, m in unshuffled]), torch.arange(N))


def test_epochs_are_a_function_of_seed_and_epoch():
    scenes = make_scenes(40, 32, seed=0)
    augment = BatchedAugment.simclr(24, rotation_degrees=20)

    def loader(seed=0):
        return DenseLoader(scenes, augment, batch_size=16, seed=seed)

    running = loader()
    epoch0, epoch1 = _epoch(running), _epoch(running)  # advances on its own
    assert not _same(epoch0, epoch1)
    resumed = loader()
    resumed.set_epoch(1)
    assert _same(_epoch(resumed), epoch1)
    resumed.set_epoch(0)
    assert _same(_epoch(resumed), epoch0)
    assert not _same(_epoch(loader(seed=1)), epoch0)

    # Each batch is BatchedAugment.dense of its rows with the epoch's augmentation generator.
    order, generator = epoch_generators(0, 0)
    rows = torch.randperm(40, generator=order)[:16]
    images, masks = augment.dense(scenes.images[rows], scenes.masks[rows], generator=generator)
    assert torch.equal(epoch0[0][0], images) and torch.equal(epoch0[0][1], masks)
    assert images.shape == (16, 3, 24, 24) and (masks == IGNORE_INDEX).any()


class _PixelClassifier(nn.Module):
    """A 1x1 convolution trained with per-pixel cross-entropy, rotation's fill ignored."""

    def __init__(self, classes: int):
        super().__init__()
        self.head = nn.Conv2d(3, classes, 1)

    def training_step(self, batch):
        images, masks = batch
        return F.cross_entropy(self.head(images), masks, ignore_index=IGNORE_INDEX)


def test_fit_trains_on_a_dense_loader(tmp_path):
    scenes = make_scenes(64, 32, seed=0)
    loader = DenseLoader(scenes, BatchedAugment.simclr(32, rotation_degrees=15), batch_size=16, seed=0)
    history = fit(_PixelClassifier(scenes.num_classes), loader, epochs=2, device="cpu", progress=False,
                  checkpoint_dir=tmp_path)
    assert len(history.step_loss) == 8 and len(history.epoch_loss) == 2
    assert all(torch.isfinite(torch.tensor(history.step_loss)))


def test_rejects_bad_input(indexed):
    with pytest.raises(ValueError, match="no batch"):
        DenseLoader(indexed, None, batch_size=64)
    with pytest.raises(TypeError, match="DenseData"):
        DenseLoader((indexed.images, indexed.masks), None)
    with pytest.raises(TypeError, match="dense"):
        DenseLoader(indexed, lambda x, generator=None: x)
    with pytest.raises(ValueError, match="batch_size"):
        DenseLoader(indexed, None, batch_size=0)
    with pytest.raises(ValueError, match="epoch"):
        DenseLoader(indexed, None, batch_size=8).set_epoch(-1)
