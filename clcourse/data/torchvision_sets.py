"""CIFAR-10 and STL-10 through torchvision, with a clear error when they are missing.

The full-scale lessons use these; the quick profile never needs them.  Nothing is
downloaded unless asked (``download=True``), and a missing dataset or a failed
download raises `DatasetNotFoundError` saying where the files are expected and
how to get them, instead of torchvision's generic "Dataset not found or corrupted".

[1] Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009.
[2] Coates, Lee & Ng, "An Analysis of Single-Layer Networks in Unsupervised
    Feature Learning", AISTATS 2011.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torchvision import datasets
from torchvision.transforms.v2.functional import pil_to_tensor

from clcourse.data.image_data import ImageData

DATA_ENV = "CLCOURSE_DATA"
STL10_SPLITS = ("train", "test", "unlabeled", "train+unlabeled")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where they are expected (and could not be downloaded)."""


def default_root() -> Path:
    """Where datasets live unless a ``root`` is given.

    ``$CLCOURSE_DATA`` when set; otherwise the ``data/`` folder of the course
    repository when the package runs from a checkout (so notebooks in
    ``notebooks/`` share it); otherwise ``./data``.
    """
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    repository = Path(__file__).resolve().parents[2]
    if (repository / "pyproject.toml").is_file() and (repository / "clcourse").is_dir():
        return repository / "data"
    return Path("data")


DEFAULT_ROOT = default_root()


class _FloatThen:
    """PIL image -> float32 [C, H, W] in [0, 1], then the user's transform.

    A class rather than a lambda so DataLoader workers can pickle it (spawned
    workers, the default on macOS and Windows).
    """

    def __init__(self, transform: Callable | None) -> None:
        self.transform = transform

    def __call__(self, image) -> Tensor:
        x = pil_to_tensor(image).float().div_(255)
        return x if self.transform is None else self.transform(x)


def _resolve(root: str | os.PathLike | None) -> Path:
    return default_root() if root is None else Path(root)


def _open(
    factory: Callable, root: Path, download: bool, expected: Path, how_to_get: str, **kwargs
) -> datasets.VisionDataset:
    """Build a torchvision dataset; turn missing files and failed downloads into one clear error."""
    advice = (
        f"Expected the files in {expected.resolve()}.\n"
        f"To get them: {how_to_get}\n"
        f"(Set ${DATA_ENV} or pass root=... to use another folder.)"
    )
    try:
        return factory(root=str(root), download=download, **kwargs)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise DatasetNotFoundError(f"{expected.name} not found or incomplete. {advice}") from err
    except OSError as err:  # URLError, timeouts, DNS failures, a truncated archive on disk
        action = "Downloading failed" if download else "Reading failed"
        raise DatasetNotFoundError(f"{action} ({err}). {advice}") from err


def cifar10(
    root: str | os.PathLike | None = None,
    train: bool = True,
    download: bool = False,
    transform: Callable | None = None,
) -> datasets.CIFAR10:
    """CIFAR-10 [1]: 50,000 train / 10,000 test colour images of 32x32, 10 classes.

    Args:
        root: folder that holds ``cifar-10-batches-py/``; default `default_root()`.
        train: the training set, else the test set.
        download: fetch the archive (~170 MB) when the files are missing.
        transform: applied to each image after conversion to a float32
            tensor [3, 32, 32] in [0, 1] (e.g. ``clcourse.augment.simclr_transform()``).

    Returns:
        The torchvision dataset; items are ``(image, label)``.

    Raises:
        DatasetNotFoundError: files missing and not downloaded, or the download failed.
    """
    root = _resolve(root)
    how_to_get = (
        "call cifar10(download=True) on a machine that is online, or copy "
        "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
        f"and extract it into {root.resolve()} (it unpacks to cifar-10-batches-py/)."
    )
    return _open(
        datasets.CIFAR10, root, download, root / datasets.CIFAR10.base_folder, how_to_get,
        train=train, transform=_FloatThen(transform),
    )


def stl10(
    root: str | os.PathLike | None = None,
    split: str = "train",
    download: bool = False,
    transform: Callable | None = None,
) -> datasets.STL10:
    """STL-10 [2]: colour images of 96x96, 10 classes, 5,000 train / 8,000 test / 100,000 unlabeled.

    Args:
        root: folder that holds ``stl10_binary/``; default `default_root()`.
        split: ``"train"``, ``"test"``, ``"unlabeled"`` (label -1) or ``"train+unlabeled"``.
        download: fetch the archive (~2.6 GB) when the files are missing.
        transform: applied to each image after conversion to a float32
            tensor [3, 96, 96] in [0, 1].

    Returns:
        The torchvision dataset; items are ``(image, label)``.

    Raises:
        DatasetNotFoundError: files missing and not downloaded, or the download failed.
    """
    if split not in STL10_SPLITS:
        raise ValueError(f"split must be one of {STL10_SPLITS}, got {split!r}")
    root = _resolve(root)
    how_to_get = (
        "call stl10(download=True) on a machine that is online, or copy "
        "stl10_binary.tar.gz from https://cs.stanford.edu/~acoates/stl10/ "
        f"and extract it into {root.resolve()} (it unpacks to stl10_binary/)."
    )
    return _open(
        datasets.STL10, root, download, root / datasets.STL10.base_folder, how_to_get,
        split=split, transform=_FloatThen(transform),
    )


def as_image_data(dataset: datasets.CIFAR10 | datasets.STL10) -> ImageData:
    """All images of a `cifar10` / `stl10` dataset as one in-memory `ImageData`.

    For the fast path (`ViewLoader`): batches are sliced from one tensor and
    augmented on the GPU instead of decoded one PIL image at a time.  Memory:
    float32, so CIFAR-10 train takes 614 MB.

    Returns:
        `ImageData` with images float32 [N, 3, H, W] in [0, 1] and labels int64 [N]
        (-1 for unlabeled STL-10 images).
    """
    if isinstance(dataset, datasets.STL10):
        pixels = torch.from_numpy(np.ascontiguousarray(dataset.data))  # [N, 3, H, W]
        labels = torch.as_tensor(dataset.labels, dtype=torch.long)
    elif isinstance(dataset, datasets.CIFAR10):
        pixels = torch.from_numpy(dataset.data).permute(0, 3, 1, 2)  # stored [N, H, W, 3]
        labels = torch.as_tensor(dataset.targets, dtype=torch.long)
    else:
        raise TypeError(f"dataset must be a torchvision CIFAR10 or STL10, got {type(dataset).__name__}")
    return ImageData(pixels.float().div_(255).contiguous(), labels)
