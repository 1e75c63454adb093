"""Datasets and view wrappers: everything that feeds images to a contrastive method.

- `DenseData`: images with a class per pixel and a box per object (scenes, lesions).
- `load_digits`: scikit-learn's 8x8 handwritten digits, offline, upsampled.
- `make_shapes`: procedural shapes whose nuisance factors are all labelled.
- `make_scenes`, `SCENE_CLASSES`: several shapes per image, with class masks and boxes.
- `make_lesions`: medical-like grayscale slices with lesion masks and boxes, from two scanners.
- `make_reviews`, `ASPECTS`: restaurant review sentences with their gold aspect (food, service, price, ambience).
- `make_sounds`, `Sounds`: synthesised sound events (tones, chirps, voices, noise bursts) in four timbres.
- `make_clips`, `Clips`, `FrameWindows`: short clips of a moving shape, and windows of their frames as views.
- `cifar10`, `stl10`: torchvision datasets with a clear error when missing.
- `load_folder`: your own images in torchvision's ImageFolder layout.
- `TwoViews`, `MultiCrop`, `collate_views`: per-sample views for a DataLoader.
- `ViewLoader`: batched, on-device views of an in-memory `ImageData`.
- `DenseLoader`: batched, on-device augmented (images, masks) of a `DenseData`.
- `shard_rows`, `ShardedAugment`, `ShardedLoader`: one process's share of every batch.
"""

from clcourse.data.clips import Clips, FrameWindows, make_clips
from clcourse.data.dense_data import IGNORE_INDEX, DenseData
from clcourse.data.dense_loader import DenseLoader
from clcourse.data.detection import DetectionBatch, DetectionBatches, task_annotations
from clcourse.data.digits import load_digits
from clcourse.data.folder import load_folder
from clcourse.data.image_data import ImageData
from clcourse.data.lesions import make_lesions
from clcourse.data.reviews import ASPECTS, Reviews, make_reviews
from clcourse.data.scenes import SCENE_CLASSES, make_scenes
from clcourse.data.shapes import (
    COLOR_NAMES,
    COLOR_VALUES,
    FACTOR_NAMES,
    SHAPE_NAMES,
    TEXTURE_NAMES,
    make_shapes,
)
from clcourse.data.sharding import ShardedAugment, ShardedLoader, shard_rows
from clcourse.data.sounds import Sounds, make_sounds
from clcourse.data.torchvision_sets import (
    DEFAULT_ROOT,
    DatasetNotFoundError,
    as_image_data,
    cifar10,
    default_root,
    stl10,
)
from clcourse.data.views import MultiCrop, TwoViews, ViewLoader, collate_views

__all__ = [
    "ASPECTS",
    "COLOR_NAMES",
    "COLOR_VALUES",
    "Clips",
    "DEFAULT_ROOT",
    "DatasetNotFoundError",
    "DenseData",
    "DenseLoader",
    "DetectionBatch",
    "DetectionBatches",
    "FACTOR_NAMES",
    "FrameWindows",
    "IGNORE_INDEX",
    "ImageData",
    "MultiCrop",
    "Reviews",
    "SCENE_CLASSES",
    "SHAPE_NAMES",
    "ShardedAugment",
    "ShardedLoader",
    "Sounds",
    "TEXTURE_NAMES",
    "TwoViews",
    "ViewLoader",
    "as_image_data",
    "cifar10",
    "collate_views",
    "default_root",
    "load_digits",
    "load_folder",
    "make_clips",
    "make_lesions",
    "make_reviews",
    "make_scenes",
    "make_shapes",
    "make_sounds",
    "shard_rows",
    "stl10",
    "task_annotations",
]
