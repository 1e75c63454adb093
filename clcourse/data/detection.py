"""Batches for detection: images with the boxes and classes of their annotated objects.

An open-world task annotates only its own classes (:func:`task_annotations`); every other object stays in the
pictures, unlabelled, as in the task splits of ORE [1]. :class:`DetectionBatches` feeds them to
:func:`clcourse.train.fit`.

[1] Joseph et al., Towards Open World Object Detection (ORE), CVPR 2021.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from clcourse.checks import shape_of

__all__ = ["DetectionBatch", "DetectionBatches", "task_annotations"]


@dataclass
class DetectionBatch:
    """A batch for :meth:`ORE.training_step`: images [B, 3, S, S] in [0, 1], per image its annotated boxes
    float [n_i, 4] ``(x0, y0, x1, y1)`` and their classes int64 [n_i] (only the known classes' objects)."""

    images: Tensor
    boxes: list[Tensor]
    labels: list[Tensor]

    def __len__(self) -> int:
        return len(self.images)


def task_annotations(boxes: Sequence[Tensor], labels: Sequence[Tensor], classes: Sequence[int]
                ) -> tuple[list[Tensor], list[Tensor]]:
    """Keep only the annotations of ``classes``: what a task's training set labels, every other object unlabelled.

    Shapes: per image boxes [n_i, 4] and labels [n_i]; returns the same lists with the other classes' rows removed.
    """
    if len(boxes) != len(labels):
        raise ValueError(f"boxes and labels need one entry per image, got {len(boxes)} and {len(labels)}")
    wanted = torch.tensor(sorted({int(c) for c in classes}), dtype=torch.long)
    kept = [torch.isin(image_labels, wanted.to(image_labels.device)) for image_labels in labels]
    return [b[k] for b, k in zip(boxes, kept)], [lab[k] for lab, k in zip(labels, kept)]


class DetectionBatches:
    """Batches of images with their annotations, reshuffled every epoch with a seed (``set_epoch``, as the loop
    calls it): an iterable for :func:`clcourse.train.fit`. ``indices`` restricts it to some images (an exemplar set).
    The last incomplete batch is dropped."""

    def __init__(self, images: Tensor, boxes: Sequence[Tensor], labels: Sequence[Tensor], batch_size: int,
                 seed: int = 0, indices: Tensor | None = None):
        if not isinstance(images, Tensor) or images.ndim != 4:
            raise ValueError(f"images must be [N, 3, S, S], got {shape_of(images)}")
        if not len(images) == len(boxes) == len(labels):
            raise ValueError(f"need one boxes and one labels entry per image: {len(images)} images, {len(boxes)} "
                             f"boxes, {len(labels)} labels")
        self.indices = torch.arange(len(images)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        if not isinstance(batch_size, int) or not 1 <= batch_size <= len(self.indices):
            raise ValueError(f"batch_size must be an int in [1, {len(self.indices)}] (the images), got {batch_size!r}")
        self.images, self.boxes, self.labels = images, list(boxes), list(labels)
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices) // self.batch_size

    def __iter__(self) -> Iterator[DetectionBatch]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = self.indices[torch.randperm(len(self.indices), generator=g)]
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            chosen = order[start:start + self.batch_size].tolist()
            yield DetectionBatch(self.images[chosen], [self.boxes[i] for i in chosen],
                                 [self.labels[i] for i in chosen])
