"""`ImageData`: a labelled image tensor that is also a torch Dataset.

The course's small datasets (digits, shapes) live entirely in memory as one
tensor, so the fast training path (`ViewLoader`) can slice batches out of it
directly instead of going through a per-sample `DataLoader`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import Dataset


@dataclass(eq=False)  # eq=False: comparing tensors element-wise has no single truth value
class ImageData(Dataset):
    """Images with class labels and optional per-image factor labels.

    Attributes:
        images: float32 [N, C, H, W] in [0, 1].
        labels: int64 [N], the class of each image.
        factors: name -> int64 [N], generative factors (e.g. ``"color"``,
            ``"texture"`` for the shapes dataset); empty when unknown.

    Indexing returns ``(image [C, H, W], label)`` like any torch Dataset, so it
    works with `torch.utils.data.DataLoader` and the view wrappers.
    """

    images: Tensor
    labels: Tensor
    factors: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor) or self.images.ndim != 4:
            got = list(self.images.shape) if isinstance(self.images, Tensor) else type(self.images).__name__
            raise ValueError(f"images must be a tensor [N, C, H, W], got {got}")
        if not self.images.is_floating_point():
            raise ValueError(f"images must be floating point in [0, 1], got dtype {self.images.dtype}")
        n = self.images.shape[0]
        if not isinstance(self.labels, Tensor) or self.labels.shape != (n,):
            got = list(self.labels.shape) if isinstance(self.labels, Tensor) else type(self.labels).__name__
            raise ValueError(f"labels must be a tensor [N] with N={n} (one per image), got {got}")
        if self.labels.is_floating_point() or self.labels.is_complex():
            raise ValueError(f"labels must be integers (int64), got dtype {self.labels.dtype}")
        for name, values in self.factors.items():
            if not isinstance(values, Tensor) or values.shape != (n,):
                got = list(values.shape) if isinstance(values, Tensor) else type(values).__name__
                raise ValueError(f"factor {name!r} must be a tensor [N] with N={n}, got {got}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """Return ``(image [C, H, W], label)`` for one index."""
        return self.images[index], int(self.labels[index])

    @property
    def num_classes(self) -> int:
        """Number of classes, ``max(label) + 1`` (0 for an empty set)."""
        return int(self.labels.max()) + 1 if len(self) else 0

    def subset(self, index: Tensor | list[int] | slice) -> ImageData:
        """A new `ImageData` with the selected images, labels and factors.

        Args:
            index: int64 indices [M], a bool mask [N], a list of ints or a slice.
        """
        if isinstance(index, list):
            index = torch.as_tensor(index, dtype=torch.long)
        return ImageData(
            self.images[index],
            self.labels[index],
            {name: values[index] for name, values in self.factors.items()},
        )

    def to(self, device: torch.device | str) -> ImageData:
        """A copy with every tensor on ``device`` (no copy when already there)."""
        return ImageData(
            self.images.to(device),
            self.labels.to(device),
            {name: values.to(device) for name, values in self.factors.items()},
        )

    def __repr__(self) -> str:
        # The default dataclass repr would print whole tensors.
        n, c, h, w = self.images.shape
        return (
            f"ImageData(n={n}, image=[{c}, {h}, {w}], classes={self.num_classes}, "
            f"factors={list(self.factors)})"
        )
