"""scikit-learn's bundled handwritten digits as an image tensor.

1,797 images of 8x8 pixels, 10 classes, ships inside scikit-learn (no
download), so every lesson can run offline on it.

[1] Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits", UCI
    Machine Learning Repository, 1998.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from clcourse.data.image_data import ImageData

SPLITS = ("train", "test", "all")
TEST_FRACTION = 0.3
SPLIT_SEED = 0
NATIVE_SIZE = 8
MAX_PIXEL = 16.0  # the digits' pixel values are counts of set bits in 4x4 blocks: 0..16


@lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images float [N, 8, 8] in 0..16, labels int [N], train indices sorted)."""
    # Imported here: scikit-learn is slow to import and only this loader needs it.
    from sklearn.datasets import load_digits as sklearn_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_load_digits()
    index = np.arange(len(bunch.target))
    train_index, _ = train_test_split(
        index, test_size=TEST_FRACTION, stratify=bunch.target, random_state=SPLIT_SEED
    )
    return bunch.images, bunch.target, np.sort(train_index)


def load_digits(image_size: int = 16, split: str = "train") -> ImageData:
    """The handwritten digits [1] as float images, with a fixed train/test split.

    The split is stratified 70/30 with seed 0 (1,257 train / 540 test images),
    the same on every machine, so probe accuracies are comparable between runs.

    Args:
        image_size: side S of the returned images; 8 is the native size, larger
            sizes are bilinear upsamplings (16 lets crop augmentations and
            small CNNs work as on real images).
        split: ``"train"``, ``"test"`` or ``"all"`` (all 1,797, original order).

    Returns:
        `ImageData` with images float32 [N, 1, S, S] in [0, 1] (pixel / 16) and
        labels int64 [N] in 0..9; no factors.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(image_size, int) or image_size < NATIVE_SIZE:
        raise ValueError(f"image_size must be an int >= {NATIVE_SIZE} (the native size), got {image_size!r}")

    images, labels, train_index = _raw_digits()
    if split == "all":
        index = np.arange(len(labels))
    else:
        is_train = np.zeros(len(labels), dtype=bool)
        is_train[train_index] = True
        index = np.flatnonzero(is_train if split == "train" else ~is_train)

    x = torch.as_tensor(images[index], dtype=torch.float32).unsqueeze(1) / MAX_PIXEL
    if image_size != NATIVE_SIZE:
        # Bilinear interpolation is a convex combination of pixels: stays in [0, 1].
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    y = torch.as_tensor(labels[index], dtype=torch.long)
    return ImageData(x.contiguous(), y)
