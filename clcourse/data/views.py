"""Turning a dataset into batches of views, the input of every contrastive method.

Two paths produce the same batch format ``(views, labels)``, with ``views`` a
list of tensors [B, C, H, W] (one per view) and ``labels`` int64 [B]:

- `TwoViews` / `MultiCrop` + `collate_views`: wrap any torch Dataset and a
  per-sample transform, then use a standard `DataLoader`.  The reference
  recipe of SimCLR [1] and SwAV's multi-crop [2], readable and general.
- `ViewLoader`: the fast path for datasets held in one tensor: slice shuffled
  batches and augment a whole batch in one call on the training device.

[1] Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations" (SimCLR), 2020.
[2] Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments" (SwAV), 2020.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from clcourse.data.image_data import ImageData

Batch = tuple[list[Tensor], Tensor]


class TwoViews(Dataset):
    """Each item becomes two independently augmented views of the same image [1].

    Args:
        dataset: items ``(image [C, H, W], label)``.
        transform: a random per-sample transform [C, H, W] -> [C, H', W'].

    Item: ``((view1, view2), label)``.
    """

    def __init__(self, dataset: Dataset, transform: Callable[[Tensor], Tensor]) -> None:
        if not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[tuple[Tensor, Tensor], int]:
        image, label = self.dataset[index]
        return (self.transform(image), self.transform(image)), label


class MultiCrop(Dataset):
    """Each item becomes ``n_global`` large and ``n_local`` small views, SwAV's multi-crop [2].

    Args:
        dataset: items ``(image [C, H, W], label)``.
        global_transform: random transform to the large crops, [C, H, W] -> [C, Hg, Wg].
        local_transform: random transform to the small crops, [C, H, W] -> [C, Hl, Wl].
        n_global, n_local: number of views of each kind.

    Item: ``(views, label)`` with ``views`` a list of ``n_global`` global views
    followed by ``n_local`` local views.
    """

    def __init__(
        self,
        dataset: Dataset,
        global_transform: Callable[[Tensor], Tensor],
        local_transform: Callable[[Tensor], Tensor],
        n_global: int = 2,
        n_local: int = 4,
    ) -> None:
        if not callable(global_transform) or not callable(local_transform):
            raise TypeError("global_transform and local_transform must be callable")
        if n_global < 1 or n_local < 0:
            raise ValueError(
                f"need n_global >= 1 and n_local >= 0, got n_global={n_global}, n_local={n_local}"
            )
        self.dataset = dataset
        self.global_transform = global_transform
        self.local_transform = local_transform
        self.n_global = n_global
        self.n_local = n_local

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[list[Tensor], int]:
        image, label = self.dataset[index]
        views = [self.global_transform(image) for _ in range(self.n_global)]
        views += [self.local_transform(image) for _ in range(self.n_local)]
        return views, label


def collate_views(items: Sequence[tuple[Sequence[Tensor], int | Tensor]]) -> Batch:
    """DataLoader ``collate_fn`` for `TwoViews` / `MultiCrop` items.

    Args:
        items: B items ``(views, label)``, each with the same number V of views;
            view v has the same size in every item (global and local crops may differ).

    Returns:
        ``(views, labels)``: a list of V tensors [B, C, H_v, W_v] and labels int64 [B].
    """
    n_views = len(items[0][0])
    if any(len(views) != n_views for views, _ in items):
        counts = sorted({len(views) for views, _ in items})
        raise ValueError(f"every item must have the same number of views, got counts {counts}")
    views = [torch.stack([item_views[v] for item_views, _ in items]) for v in range(n_views)]
    labels = torch.as_tensor([int(label) for _, label in items], dtype=torch.long)
    return views, labels


def epoch_generators(seed: int, epoch: int) -> tuple[torch.Generator, torch.Generator]:
    """The CPU generators of epoch ``epoch`` of a loader seeded ``seed``: (order, augmentation).

    SeedSequence mixes (seed, epoch) into well-separated streams: seed + epoch would make
    (seed=0, epoch=1) repeat (seed=1, epoch=0).
    """
    order_seed, augment_seed = np.random.SeedSequence([seed, epoch]).generate_state(2)
    return torch.Generator().manual_seed(int(order_seed)), torch.Generator().manual_seed(int(augment_seed))


class EpochLoader:
    """What the in-memory loaders share: ``images`` [N, ...], ``batch_size``, ``drop_last`` and the ``epoch``
    whose order and augmentation (drawn from ``(seed, epoch)``) the next iteration replays. A loader defines
    ``_batches(epoch)``, the batches of one epoch."""

    images: Tensor
    batch_size: int
    drop_last: bool
    epoch: int

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.images)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (order and augmentation from ``(seed, epoch)``)."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = epoch

    def __iter__(self) -> Iterator:
        # Not a generator function: the epoch is claimed when iteration starts, not at the first next().
        epoch = self.epoch
        self.epoch += 1
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator:
        raise NotImplementedError


class ViewLoader(EpochLoader):
    """Shuffled batches of views of an in-memory dataset, augmented a batch at a time.

    The fast path for training: no per-sample Python, no worker processes.
    The dataset is moved to ``device`` once; each batch is sliced out of it and
    ``augment(x, generator=g)`` (e.g. ``clcourse.augment.BatchedAugment``) is
    called ``n_views`` times on the whole batch.

    Reproducibility: epoch e's order and augmentations are a pure function of
    ``(seed, e)``, drawn from CPU generators, so they are the same on every
    device and after resuming.  ``set_epoch(e)`` picks the epoch of the next
    iteration; without it each new iteration advances the epoch by one.

    Args:
        data: `ImageData`, or a tuple ``(images [N, C, H, W], labels [N])``.
        augment: callable ``augment(x [B, C, H, W], generator=g) -> [B, C, H', W']``;
            ``None`` yields the un-augmented batch as every view.
        batch_size: B.
        n_views: V, the number of views per batch.
        shuffle: a new random order every epoch, else the dataset order.
        drop_last: skip the last incomplete batch (contrastive losses prefer a
            constant number of negatives).
        seed: base seed of order and augmentation.
        device: where batches are produced; default the data's device.
        small_augment: multi-crop (SwAV [2]): a second batched augmentation, for small crops
            ``[B, C, H_s, W_s]``, called ``n_small_views`` times after the V views.
        n_small_views: how many small crops follow the V views (0: none).

    Yields:
        ``(views, labels)``: a list of V tensors [B, C, H', W'] (then ``n_small_views`` tensors
        [B, C, H_s, W_s]) and labels int64 [B], all on ``device``.
    """

    def __init__(
        self,
        data: ImageData | tuple[Tensor, Tensor],
        augment: Callable[..., Tensor] | None,
        batch_size: int = 256,
        n_views: int = 2,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        device: torch.device | str | None = None,
        small_augment: Callable[..., Tensor] | None = None,
        n_small_views: int = 0,
    ) -> None:
        if not isinstance(n_small_views, int) or n_small_views < 0:
            raise ValueError(f"n_small_views must be an int >= 0, got {n_small_views!r}")
        if n_small_views and not callable(small_augment):
            raise ValueError(f"n_small_views={n_small_views} small crops need a callable small_augment, "
                             f"got {type(small_augment).__name__}")
        if isinstance(data, (tuple, list)) and len(data) == 2:
            data = ImageData(*data)  # validates the shapes
        if not isinstance(data, ImageData):
            raise TypeError(
                f"data must be an ImageData or a tuple (images, labels), got {type(data).__name__}"
            )
        images, labels = data.images, data.labels
        if augment is not None and not callable(augment):
            raise TypeError(f"augment must be callable or None, got {type(augment).__name__}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(n_views, int) or n_views < 1:
            raise ValueError(f"n_views must be a positive int, got {n_views!r}")
        if drop_last and len(images) < batch_size:
            raise ValueError(
                f"batch_size={batch_size} is larger than the dataset ({len(images)} images) "
                "and drop_last=True: the loader would yield no batch"
            )
        self.device = images.device if device is None else torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.augment = augment
        self.batch_size = batch_size
        self.n_views = n_views
        self.small_augment = small_augment
        self.n_small_views = n_small_views
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0

    def _batches(self, epoch: int) -> Iterator[Batch]:
        order_generator, augment_generator = epoch_generators(self.seed, epoch)
        n = len(self.images)
        order = torch.randperm(n, generator=order_generator) if self.shuffle else torch.arange(n)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size].to(self.device)
            x = self.images[index]
            if x.dtype in (torch.float16, torch.bfloat16):
                x = x.float()  # large sets are stored in half precision; augment and train in float32
            if self.augment is None:
                views = [x] * self.n_views
            else:
                views = [self.augment(x, generator=augment_generator) for _ in range(self.n_views)]
            views += [self.small_augment(x, generator=augment_generator) for _ in range(self.n_small_views)]
            yield views, self.labels[index]
