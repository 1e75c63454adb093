"""Your own images: a folder in torchvision's ImageFolder layout, loaded into memory.

    PATH/cat/0001.png, PATH/cat/0002.jpg, ..., PATH/dog/0001.png, ...

one sub-folder per class (the folder names, sorted, are the classes). A folder with ``train/``
and ``test/`` (or ``val/``) sub-folders, each in that layout, keeps its own split; otherwise a
stratified 70/30 split with seed 0 is made, as for the digits. Every image is converted to RGB,
resized so that its shorter side is S, centre-cropped to S x S and kept in memory as an
:class:`~clcourse.data.ImageData` in [0, 1], the input of the fast training path.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from clcourse.data.image_data import ImageData

__all__ = ["load_folder", "FOLDER_SPLITS"]

FOLDER_SPLITS = ("train", "test")
TEST_FRACTION = 0.3
LAYOUT = "PATH/<class>/<image>.png|jpg|... (torchvision's ImageFolder layout)"


def load_folder(path: str | Path, image_size: int = 32, split: str = "train") -> ImageData:
    """The ``split`` of the images under ``path`` at ``image_size`` x ``image_size``, RGB in [0, 1].

    Returns:
        `ImageData` with images float32 [N, 3, S, S] and labels int64 [N] (class index in
        the sorted folder names).

    Raises:
        FileNotFoundError: ``path`` is not a folder.
        ValueError: the folder is empty or not in the layout, or a class has no image.
    """
    if split not in FOLDER_SPLITS:
        raise ValueError(f"split must be one of {FOLDER_SPLITS}, got {split!r}")
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
    root = Path(path).expanduser().resolve()
    images, labels, own_split = _load(str(root), image_size, _fingerprint(root))
    if own_split:
        wanted = images[split]
        return ImageData(wanted, labels[split])
    train_index = _stratified_train_index(labels.numpy())
    mask = np.zeros(len(labels), dtype=bool)
    mask[train_index] = True
    rows = torch.from_numpy(mask if split == "train" else ~mask)
    return ImageData(images[rows], labels[rows])


def _fingerprint(root: Path) -> tuple:
    """Every file under ``root`` with its size and modification time: the cache key of its contents."""
    if not root.is_dir():
        return ()
    return tuple(sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()))


@lru_cache(maxsize=2)
def _load(path: str, image_size: int, fingerprint: tuple):
    """Decode a folder once per content (``fingerprint``): (images, labels, has_own_split)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder at {root}: expected images in {LAYOUT}")
    test_name = next((name for name in ("test", "val") if (root / name).is_dir()), None)
    if (root / "train").is_dir() and test_name is not None:
        train, train_classes = _read_image_folder(root / "train", image_size)
        test, test_classes = _read_image_folder(root / test_name, image_size)
        if train_classes != test_classes:
            raise ValueError(f"{root / 'train'} and {root / test_name} must hold the same class folders, got "
                             f"{train_classes} and {test_classes}")
        return {"train": train[0], "test": test[0]}, {"train": train[1], "test": test[1]}, True
    (images, labels), _ = _read_image_folder(root, image_size)
    return images, labels, False


def _read_image_folder(root: Path, image_size: int):
    """((images [N, 3, S, S], labels [N]), class names) of one ImageFolder root, with clear errors."""
    from torchvision import datasets
    from torchvision.transforms import v2

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = [p.name for p in root.iterdir() if p.is_file()][:3]
        found = f"found files {loose} but no class folders" if loose else "the folder is empty"
        raise ValueError(f"{root}: {found}; expected {LAYOUT}")
    transform = v2.Compose([v2.ToImage(), v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size),
                            v2.ToDtype(torch.float32, scale=True)])
    try:
        # Raises FileNotFoundError naming the class folders that hold no readable image file.
        dataset = datasets.ImageFolder(str(root), transform=transform)
    except FileNotFoundError as error:
        raise ValueError(f"{root}: {error}; expected {LAYOUT}") from error
    images, labels = [], []
    for index in range(len(dataset)):
        try:
            image, label = dataset[index]
        except OSError as error:  # a file with an image extension that is not an image
            raise ValueError(f"cannot read {dataset.samples[index][0]}: {error}") from error
        images.append(image)
        labels.append(label)
    return (torch.stack(images), torch.tensor(labels, dtype=torch.long)), dataset.classes


def _stratified_train_index(labels: np.ndarray) -> np.ndarray:
    """Sorted indices of a stratified 70% training part (seed 0); every class keeps a test image when it can."""
    rng = np.random.default_rng(0)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_test = int(round(TEST_FRACTION * len(idx))) if len(idx) > 1 else 0
        chosen.append(rng.permutation(idx)[n_test:])
    return np.sort(np.concatenate(chosen))
