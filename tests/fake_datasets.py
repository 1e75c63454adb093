"""Small fake CIFAR-10 and STL-10 files in their real on-disk formats, accepted by torchvision.

CIFAR-10: pickled dicts with "data" uint8 [n, 3072] (R, G, B planes, each 32x32 row-major) and
"labels". STL-10: raw uint8 files, each image 3 x 96 x 96 stored channel by channel in
column-major order (Fortran order, as written by MATLAB); labels are uint8 1..10.
torchvision's `_check_integrity` compares each file's md5 with class attributes; `accept_fake_*`
patch those to the md5s of the fake files, so the real check still runs and passes.
"""

import hashlib
import pickle
from pathlib import Path

import numpy as np
from torchvision import datasets

CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_fake_cifar10(root: Path, per_batch: int = 2) -> dict[str, np.ndarray]:
    """Write CIFAR-10's files with `per_batch` random images each; return name -> data [n, 3, 32, 32]."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in CIFAR_BATCHES:
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        filenames = [f"{name}_{i}.png" for i in range(per_batch)]
        entry = {"batch_label": name, "labels": labels, "data": data, "filenames": filenames}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        written[name] = (data.reshape(per_batch, 3, 32, 32), labels)
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written


def accept_fake_cifar10(root: Path, monkeypatch) -> None:
    folder = root / "cifar-10-batches-py"
    train_list = [[name, _md5(folder / name)] for name in CIFAR_BATCHES[:5]]
    monkeypatch.setattr(datasets.CIFAR10, "train_list", train_list)
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", _md5(folder / "test_batch")]])
    meta = {**datasets.CIFAR10.meta, "md5": _md5(folder / "batches.meta")}
    monkeypatch.setattr(datasets.CIFAR10, "meta", meta)


STL_FILES = ["train_X.bin", "train_y.bin", "unlabeled_X.bin", "test_X.bin", "test_y.bin"]


def write_fake_stl10(root: Path, sizes=(("train", 3), ("test", 2), ("unlabeled", 2))) -> dict[str, tuple]:
    """Write STL-10's files; return split -> (images [n, 3, 96, 96] (channel, row, column), labels 0..9)."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    written = {}
    for split, n in sizes:
        images = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        images[0, 2, 5, 70] = 123  # a marked pixel: channel 2, row 5, column 70
        (folder / f"{split}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())  # column-major
        labels = rng.integers(0, 10, n)
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
        written[split] = (images, labels)
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    (folder / "fold_indices.txt").write_text("\n".join("0 1" for _ in range(10)) + "\n")
    return written


def accept_fake_stl10(root: Path, monkeypatch) -> None:
    folder = root / "stl10_binary"
    md5 = {name: _md5(folder / name) for name in STL_FILES}
    monkeypatch.setattr(datasets.STL10, "train_list", [[n, md5[n]] for n in STL_FILES[:3]])
    monkeypatch.setattr(datasets.STL10, "test_list", [[n, md5[n]] for n in STL_FILES[3:]])


def write_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 6, size=(12, 10)) -> Path:
    """An ImageFolder tree: root/<class>/<i>.png, RGB and grayscale PNGs of `size` (w, h); returns root."""
    from PIL import Image

    rng = np.random.default_rng(2)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            pixels[..., 0] = 200 if c else 20  # the classes differ in their red channel
            image = Image.fromarray(pixels)
            (image.convert("L") if i == 0 else image).save(folder / f"{i}.png")
    return root
