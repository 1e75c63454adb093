"""`DenseData`: images with a class per pixel and a box per object, as one in-memory Dataset.

The generated scene and lesion sets (segmentation, detection) share this container, the dense counterpart of
:class:`~clcourse.data.ImageData`: the whole set is a few tensors, so a lesson slices batches out of it and
augments them on the device, masks moved with their images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import Dataset

IGNORE_INDEX = 255  # a mask value no loss or metric counts: pixels an augmentation invented (rotation's fill)


@dataclass(eq=False)  # eq=False: comparing tensors element-wise has no single truth value
class DenseData(Dataset):
    """Images, their class masks and their objects' boxes.

    Attributes:
        images: float32 [N, C, H, W] in [0, 1].
        masks: int64 [N, H, W], the class of every pixel: 0 is the background, 1..K-1 the object classes
            (``class_names[k]``); :data:`IGNORE_INDEX` marks pixels that carry no label.
        boxes: one float32 tensor [n_i, 4] per image, each object's box ``(x0, y0, x1, y1)`` in pixels
            (x1, y1 exclusive: a one-pixel object at column 3 spans 3 to 4); empty [0, 4] for none.
        box_labels: one int64 tensor [n_i] per image, each box's class in 1..K-1.
        class_names: K names, ``class_names[0]`` the background's.
        factors: name -> int64 [N], per-image generation settings worth reporting (e.g. ``"scanner"``).

    Indexing returns ``(image [C, H, W], mask [H, W])``.
    """

    images: Tensor
    masks: Tensor
    boxes: list[Tensor]
    box_labels: list[Tensor]
    class_names: tuple[str, ...]
    factors: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor) or self.images.ndim != 4 or not self.images.is_floating_point():
            got = f"{self.images.dtype} {list(self.images.shape)}" if isinstance(self.images, Tensor) \
                else type(self.images).__name__
            raise ValueError(f"images must be a floating-point tensor [N, C, H, W] in [0, 1], got {got}")
        n, _, h, w = self.images.shape
        if not isinstance(self.masks, Tensor) or self.masks.shape != (n, h, w) or self.masks.dtype != torch.long:
            got = f"{self.masks.dtype} {list(self.masks.shape)}" if isinstance(self.masks, Tensor) \
                else type(self.masks).__name__
            raise ValueError(f"masks must be int64 [N, H, W] = [{n}, {h}, {w}] (one class per pixel), got {got}")
        if len(self.class_names) < 2:
            raise ValueError(f"class_names must name the background and at least one class, got {self.class_names!r}")
        labelled = self.masks[self.masks != IGNORE_INDEX]
        if labelled.numel() and (int(labelled.min()) < 0 or int(labelled.max()) >= len(self.class_names)):
            raise ValueError(f"mask values must lie in [0, {len(self.class_names)}) or be {IGNORE_INDEX}, got "
                             f"{int(labelled.min())}..{int(labelled.max())}")
        if len(self.boxes) != n or len(self.box_labels) != n:
            raise ValueError(f"boxes and box_labels need one entry per image ({n}), got {len(self.boxes)} and "
                             f"{len(self.box_labels)}")
        for i, (box, label) in enumerate(zip(self.boxes, self.box_labels)):
            if box.ndim != 2 or box.shape[1] != 4 or label.shape != (box.shape[0],):
                raise ValueError(f"image {i}: boxes must be [n, 4] with n labels, got {list(box.shape)} and "
                                 f"{list(label.shape)}")
        for name, values in self.factors.items():
            if not isinstance(values, Tensor) or values.shape != (n,):
                raise ValueError(f"factor {name!r} must be a tensor [N] with N={n}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Return ``(image [C, H, W], mask [H, W])`` for one index."""
        return self.images[index], self.masks[index]

    @property
    def num_classes(self) -> int:
        """K, the background included."""
        return len(self.class_names)

    def subset(self, index: Tensor | list[int] | slice) -> DenseData:
        """A new `DenseData` with the selected images (int64 indices, a bool mask [N], a list or a slice)."""
        rows = torch.arange(len(self))[torch.as_tensor(index) if isinstance(index, list) else index].tolist()
        return DenseData(self.images[rows], self.masks[rows], [self.boxes[i] for i in rows],
                         [self.box_labels[i] for i in rows], self.class_names,
                         {name: values[rows] for name, values in self.factors.items()})

    def to(self, device: torch.device | str) -> DenseData:
        """A copy with images and masks on ``device`` (boxes stay on the CPU: they are a list)."""
        return DenseData(self.images.to(device), self.masks.to(device), self.boxes, self.box_labels,
                         self.class_names, {name: values.to(device) for name, values in self.factors.items()})

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        objects = sum(len(b) for b in self.boxes)
        return f"DenseData(n={n}, image=[{c}, {h}, {w}], classes={list(self.class_names)}, objects={objects})"


def tight_boxes(object_masks: Tensor) -> tuple[Tensor, Tensor]:
    """The tight box of every object's pixels, in the convention of `DenseData.boxes`.

    Args:
        object_masks: bool [N, K, H, W], the pixels of object k of image n.

    Returns:
        boxes float32 [N, K, 4], ``(x0, y0, x1, y1)`` in pixels with x1, y1 exclusive (zeros
        for an object without pixels), and present bool [N, K]: whether the object has a pixel.
    """
    columns, rows = object_masks.any(2), object_masks.any(3)  # [N, K, W], [N, K, H]
    present = columns.any(2)
    columns, rows = columns.byte(), rows.byte()  # argmax takes no bool
    # argmax returns the first maximum: the first occupied column from the left, and from the right when flipped.
    x0, x1 = columns.argmax(2), object_masks.shape[3] - columns.flip(2).argmax(2)
    y0, y1 = rows.argmax(2), object_masks.shape[2] - rows.flip(2).argmax(2)
    boxes = torch.stack([x0, y0, x1, y1], dim=2).float() * present[..., None]
    return boxes, present
