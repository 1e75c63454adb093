"""`DenseLoader`: shuffled batches of images and their class masks, augmented together on the device.

The dense counterpart of `ViewLoader` for segmentation-style training on a `DenseData` held in
memory (the generated scenes and lesions): each batch is sliced out of the device copy and
augmented in one call, the masks moved by the same crop, flip and rotation as their images
(`BatchedAugment.dense`).  Epochs are reproducible exactly as `ViewLoader`'s: order and
augmentation of epoch e are a pure function of ``(seed, e)``, drawn from CPU generators.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from clcourse.data.dense_data import DenseData
from clcourse.data.views import EpochLoader, epoch_generators

__all__ = ["DenseLoader"]


class DenseLoader(EpochLoader):
    """Shuffled batches ``(images, masks)`` of a `DenseData`, augmented a batch at a time.

    Works with :func:`clcourse.train.fit`: it has ``len`` (batches per epoch) and
    ``set_epoch(e)``, which picks the epoch of the next iteration (without it, each new iteration
    advances the epoch by one), so a resumed run sees the same batches.

    Args:
        data: a `DenseData` (images float [N, C, H, W], masks int64 [N, H, W]); its boxes are not used.
        augment: an object with ``dense(images, masks, generator=g) -> (images', masks')``, e.g.
            :class:`clcourse.augment.BatchedAugment`; ``None`` yields the batches unchanged.
        batch_size: B.
        shuffle: a new random order every epoch, else the dataset order.
        drop_last: skip the last incomplete batch.
        seed: base seed of order and augmentation.
        device: where batches are produced; default the data's device.

    Yields:
        ``(images, masks)``: float [B, C, s, s] (float32 when the data is stored in half precision)
        and int64 [B, s, s] on ``device``, s the
        augmentation's output size (H = W = s without augmentation); mask pixels an augmentation
        invented (a rotation's corners) are ``IGNORE_INDEX``.
    """

    def __init__(
        self,
        data: DenseData,
        augment=None,
        batch_size: int = 256,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(data, DenseData):
            raise TypeError(f"data must be a DenseData (images, masks, boxes), got {type(data).__name__}")
        if augment is not None and not callable(getattr(augment, "dense", None)):
            raise TypeError(f"augment must have a dense(images, masks, generator=g) method (a BatchedAugment) or be "
                            f"None, got {type(augment).__name__}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if drop_last and len(data) < batch_size:
            raise ValueError(f"batch_size={batch_size} is larger than the dataset ({len(data)} images) and "
                             "drop_last=True: the loader would yield no batch")
        self.device = data.images.device if device is None else torch.device(device)
        self.images = data.images.to(self.device)
        self.masks = data.masks.to(self.device)
        self.augment = augment
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0

    def _batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        order_generator, augment_generator = epoch_generators(self.seed, epoch)
        n = len(self.images)
        order = torch.randperm(n, generator=order_generator) if self.shuffle else torch.arange(n)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size].to(self.device)
            images, masks = self.images[index], self.masks[index]
            if images.dtype in (torch.float16, torch.bfloat16):
                images = images.float()  # large sets are stored in half precision; augment and train in float32
            if self.augment is not None:
                images, masks = self.augment.dense(images, masks, generator=augment_generator)
            yield images, masks
