"""Recipes: one documented configuration per method, dataset and profile, and building a run from one.

A *recipe* says everything a run needs: data, encoder, head, loss settings,
augmentation, batch size, budget, optimiser and schedule, the evaluation
protocol, and what accuracy to expect with the source of that number.  The
``clcourse train`` command (:mod:`clcourse.runs`) and the lessons build their
runs from the same recipe with :func:`build`, so a lesson's "at full scale you
would see ..." is the command line's result.

Two profiles (see :mod:`clcourse.device`):

- ``quick``: digits at their native 8x8 (or procedural shapes, a slice of
  CIFAR-10, or your own folder of images at 32x32) with
  :class:`~clcourse.encoders.SmallCNN`, batch 256, Adam, a budget in seconds, so
  a run costs the same on every laptop.
- ``full``: CIFAR-10 with the CIFAR-stem ResNet-18 on one GPU, with the
  optimiser, schedule, temperature and queue of public CIFAR-10
  reproductions, and their accuracies as the expectation; STL-10 (and your
  own folder) at 96 px with torchvision's ResNet-18 stem.

The quick digits settings are the best ones ``benchmarks/`` measured for a
60-second run on 2 CPU cores (``benchmarks/README.md`` has the figures and the
commands): 8x8 images, a SmallCNN that keeps a 2x2 grid, channels-last weights,
a projection head with 512 hidden units, weight decay 1e-4.

The full CIFAR-10 settings, and where they come from:

===========  =====  ======  ======================================  =====  ================================
method       batch  epochs  optimiser (cosine schedule)             t      source
===========  =====  ======  ======================================  =====  ================================
SimCLR       512    200     SGD lr 0.24 (0.06 x 512/128), m 0.9,    0.5    [LIGHTLY] (its SimCLR entry)
                            wd 5e-4
MoCo v2      512    200     SGD lr 0.06, m 0.9, wd 5e-4             0.1    [MOCO-DEMO]: K 4096, m 0.99,
                                                                           linear head, 8 BN groups
SupCon       512    200     SGD lr 0.25 (0.5 x 512/1024), m 0.9,    0.1    [SUPCON] (its README's command,
                            wd 1e-4, 10 warm-up epochs                     batch and epochs scaled down)
SwAV         512    200     SGD lr 0.24 (0.06 x 512/128), m 0.9,    0.1    [LIGHTLY] (its SwAV entry: 512
                            wd 5e-4                                        prototypes, 2 crops of 32 px)
NNCLR        512    200     SGD lr 0.24 (0.06 x 512/128), m 0.9,    0.5    [LIGHTLY] (its NNCLR entry: support
                            wd 5e-4                                        set 8192, 512-2048-256 head,
                                                                           256-4096-256 predictor)
PCL          512    200     SGD lr 0.06, m 0.9, wd 5e-4             0.1    [MOCO-DEMO]'s MoCo + [PCL]: 500 /
                                                                           1000 / 2000 clusters (ours), 20
                                                                           warm-up epochs
===========  =====  ======  ======================================  =====  ================================

The dense methods train on generated data with a class per pixel, and are scored by their segmentations:

- ``pixel-contrast`` on ``scenes`` (:func:`~clcourse.data.make_scenes`, 7 classes): a
  :class:`~clcourse.encoders.SmallSegmenter` trained with cross-entropy plus [PIXEL-CONTRAST]'s pixel
  contrast on augmented ``(images, masks)`` batches; the ``"segmentation"`` protocol reads the mIoU and
  the IoU of every class of its argmax on the test scenes.
- ``pcrl`` on ``lesions`` (:func:`~clcourse.data.make_lesions`, scanner A): [PCRL] pre-trains a U-Net on
  the *unlabelled* slices (their masks are dropped before the loader sees them; PCRL draws its two views
  itself); the ``"finetune-segmentation"`` protocol fine-tunes
  :meth:`~clcourse.methods.PCRL.segmentation_model` on a small labelled set for ``finetune_steps`` and
  reads the lesion Dice and the mIoU on the test slices.

Their data come from fixed generator seeds (0 training, 1 test, 2 PCRL's labelled fine-tuning set), so
every recipe seed sees the same sets. Both train on one process only (:func:`build` says why). The quick
recipes (a 600-step budget at batch 32 with Adam, the methods' own defaults otherwise, pixel contrast's
term after a warm-up of half the steps) are measured against their baselines by
``benchmarks/bench_dense_recipes.py`` (``benchmarks/README.md``); the full ones are not.

``sscl`` on ``reviews`` (:func:`~clcourse.data.make_reviews` with :data:`~clcourse.data.reviews.HARD`, one draw
of seed 0 cut into training and test sentences) detects the aspect of review sentences [SSCL]: skip-gram word
vectors of the training sentences, then SSCL from aspects initialised by k-means of those vectors, on batches of
word ids (:class:`~clcourse.data.reviews.SentenceLoader`); the ``"aspects"`` protocol maps the learnt aspects to
gold ones with the training sentences' labels and reads per-aspect precision, recall, F1 and macro-F1 on the
test sentences. One process only; the quick recipe is measured by ``benchmarks/bench_sscl.py``.

References (``Recipe.sources`` names them by these keys):

[SIMCLR] Chen et al., A Simple Framework for Contrastive Learning of Visual
    Representations (SimCLR), ICML 2020; appendix B.9 (CIFAR-10).
[LIGHTLY] LightlySSL CIFAR-10 benchmarks, docs.lightly.ai (self-supervised-learning,
    getting_started/benchmarks) and the script ``benchmarks/cifar10_benchmark.py`` it
    links: ResNet-18 with the CIFAR stem, SGD lr 0.06 x batch/128, momentum 0.9,
    weight decay 5e-4, cosine over the epochs, SimCLR augmentations without blur;
    kNN (k = 200, t = 0.1) on the test set, *the maximum over all epochs*.
[MOCO-DEMO] He et al., MoCo CIFAR-10 demo, github.com/facebookresearch/moco,
    ``colab/moco_cifar10_demo.ipynb``: ResNet-18 with the CIFAR stem, batch
    512, SGD lr 0.06, weight decay 5e-4, cosine, 200 epochs, K = 4096,
    m = 0.99, t = 0.1, SplitBatchNorm with 8 groups, a linear 128-d head;
    kNN (k = 200, t = 0.1) on the normalised 128-d output.
[SUPCON] Khosla et al., Supervised Contrastive Learning, NeurIPS 2020, and
    the authors' code github.com/HobbitLong/SupContrast (README: ResNet-50,
    batch 1024, lr 0.5, t = 0.1, cosine, 1000 epochs, 96.0% linear accuracy
    on CIFAR-10).
[NNCLR] Dwibedi et al., With a Little Help from My Friends: Nearest-Neighbor
    Contrastive Learning of Visual Representations, ICCV 2021 (ImageNet: support
    set 98,304, t = 0.1, 4096-256 prediction MLP, batch 4096).
[PCL] Li et al., Prototypical Contrastive Learning of Unsupervised
    Representations, ICLR 2021, and the authors' code github.com/salesforce/PCL
    (ImageNet: 25,000 / 50,000 / 100,000 clusters, r = 16,000 negative
    prototypes, alpha = 10, 20 warm-up epochs of 200; its README: ImageNet
    linear top-1 61.5% (PCL v1) and 67.6% (PCL v2), ResNet-50, 200 epochs;
    no CIFAR-10 result).
[PIXEL-CONTRAST] Wang et al., Exploring Cross-Image Pixel Contrast for Semantic Segmentation, ICCV 2021
    (t = 0.1, lambda = 0.1; :mod:`clcourse.methods.pixel_contrast` lists where the course differs).
[PCRL] Zhou et al., Preservational Learning Improves Self-supervised Medical Image Models by
    Reconstructing Diverse Contexts, ICCV 2021, and the authors' code github.com/Luchixiang/PCRL
    (t = 0.2; :mod:`clcourse.methods.pcrl` lists where the course differs).
[SSCL] Shi et al., A Simple and Effective Self-Supervised Contrastive Learning Framework for Aspect Detection,
    AAAI 2021 (its code: smoothness 0.5, Adam lr 2e-4, batch 50).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clcourse.device import get_profile, seed_everything
from clcourse.train import Budget, parameter_groups

NONCONTRASTIVE_METHODS = ("byol", "simsiam", "barlow-twins")  # no negatives, no temperature
IMAGE_METHODS = ("simclr", "moco", "supcon", "swav", "nnclr", "pcl") + NONCONTRASTIVE_METHODS
IMAGE_DATASETS = ("digits", "shapes", "cifar10", "stl10", "folder")
DENSE_DATASETS = ("scenes", "lesions")
TEXT_DATASETS = ("reviews",)
DATASETS = IMAGE_DATASETS + DENSE_DATASETS + TEXT_DATASETS
PROFILES = ("quick", "full")
DEFAULT_DATASET = {"quick": "digits", "full": "cifar10"}  # of the image methods; a dense method has its own
DENSE_DATASET = {"pixel-contrast": "scenes", "pcrl": "lesions"}  # the dataset each dense method trains on
DENSE_METHODS = tuple(DENSE_DATASET)
TEXT_DATASET = {"sscl": "reviews"}  # the dataset each text method trains on
TEXT_METHODS = tuple(TEXT_DATASET)
OWN_DATASET = {**DENSE_DATASET, **TEXT_DATASET}  # the methods that train on one dataset of their own
METHODS = IMAGE_METHODS + DENSE_METHODS + TEXT_METHODS

SOURCES = {
    "SIMCLR": "Chen et al., SimCLR, ICML 2020, appendix B.9 (CIFAR-10)",
    "LIGHTLY": "LightlySSL CIFAR-10 benchmarks, "
    "https://docs.lightly.ai/self-supervised-learning/getting_started/benchmarks.html",
    "MOCO-DEMO": "MoCo CIFAR-10 demo, github.com/facebookresearch/moco colab/moco_cifar10_demo.ipynb",
    "SUPCON": "Khosla et al., Supervised Contrastive Learning, NeurIPS 2020; github.com/HobbitLong/SupContrast",
    "NNCLR": "Dwibedi et al., With a Little Help from My Friends: Nearest-Neighbor Contrastive Learning of Visual "
    "Representations, ICCV 2021",
    "PCL": "Li et al., Prototypical Contrastive Learning of Unsupervised Representations, ICLR 2021; "
    "github.com/salesforce/PCL",
    "DIGITS-BENCH": "benchmarks/bench_recipes.py and benchmarks/README.md of this course",
    "PIXEL-CONTRAST": "Wang et al., Exploring Cross-Image Pixel Contrast for Semantic Segmentation, ICCV 2021",
    "PCRL": "Zhou et al., Preservational Learning Improves Self-supervised Medical Image Models by Reconstructing "
    "Diverse Contexts, ICCV 2021; github.com/Luchixiang/PCRL",
    "SSCL": "Shi et al., A Simple and Effective Self-Supervised Contrastive Learning Framework for Aspect Detection, "
    "AAAI 2021",
    "BYOL": "Grill et al., Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning, NeurIPS 2020",
    "SIMSIAM": "Chen & He, Exploring Simple Siamese Representation Learning, CVPR 2021",
    "BARLOW": "Zbontar et al., Barlow Twins: Self-Supervised Learning via Redundancy Reduction, ICML 2021",
}


def check_method_and_dataset(method: str, dataset: str) -> None:
    """Raise a ValueError unless ``method`` trains on ``dataset``: an image method on an image dataset, a
    dense method on its own (:data:`DENSE_DATASET`), a text method on its own (:data:`TEXT_DATASET`)."""
    if method in TEXT_DATASET and dataset != TEXT_DATASET[method]:
        raise ValueError(f"{method} detects the aspects of sentences: it trains on {TEXT_DATASET[method]} (review "
                         f"sentences), not {dataset}; use --dataset {TEXT_DATASET[method]}")
    if method in DENSE_DATASET and dataset != DENSE_DATASET[method]:
        raise ValueError(f"{method} is a dense method: it trains on {DENSE_DATASET[method]} (images with a class "
                         f"per pixel), not {dataset}; use --dataset {DENSE_DATASET[method]}")
    if method not in TEXT_DATASET and dataset in TEXT_DATASETS:
        users = " and ".join(m for m, d in TEXT_DATASET.items() if d == dataset)
        raise ValueError(f"{dataset} holds sentences, not images: only {users} trains on it; {method} trains on "
                         f"images")
    if method not in DENSE_DATASET and dataset in DENSE_DATASETS:
        users = " and ".join(m for m, d in DENSE_DATASET.items() if d == dataset)
        raise ValueError(f"{dataset} is a segmentation dataset (a class per pixel), trained on by {users}; "
                         f"{method} learns image representations: use one of "
                         f"{', '.join(d for d in IMAGE_DATASETS if d != 'folder')} or folder:PATH")


@dataclass(frozen=True)
class Recipe:
    """Everything one training run needs, with the expected result and its source.

    Attributes:
        method: one of :data:`METHODS`.
        profile: ``"quick"`` or ``"full"``.
        dataset: one of :data:`DATASETS`; ``"folder"`` reads ``data_path``. The image methods train on
            :data:`IMAGE_DATASETS`, a dense method on its :data:`DENSE_DATASET`.
        data_path: the folder of images of ``dataset="folder"`` (ImageFolder layout).
        image_size, in_channels: the images the encoder sees, [B, in_channels, S, S].
        train_size, test_size: keep the first N images of the training / test set
            (``None``: all); the quick profile trims CIFAR-10 so that evaluation fits. The dense
            datasets are generated, N images each: both are required there.
        encoder: ``"small_cnn"``, ``"resnet18_cifar"`` (3x3 stem, no max-pool [SIMCLR])
            or ``"resnet18"`` (torchvision's 7x7 stride-2 stem, for 96 px images); for the dense
            methods ``"small_segmenter"`` (:class:`~clcourse.encoders.SmallSegmenter`, pixel contrast)
            or ``"unet"`` (:class:`~clcourse.unet.UNetEncoder`, PCRL); ``"smooth_attention"`` for SSCL, whose
            ``encoder_options`` are the arguments of :func:`~clcourse.word_vectors.train_word_vectors` (its
            sentences have no image size: ``image_size`` and ``in_channels`` are 0).
        encoder_width, encoder_options: the SmallCNN's and the SmallSegmenter's width, and further
            arguments (the SmallCNN's ``pool_size``, the SmallSegmenter's ``embedding_dim``, the U-Net's
            ``widths``); ignored by the ResNets.
        channels_last: store the weights channels-last (None: on CUDA only; see
            :func:`clcourse.train.fit`).
        projection_dim, hidden_dim, head_layers: the projection head (``hidden_dim``
            None: the encoder's out_dim); PCRL reads the first two (its head has 2 layers), pixel
            contrast none (its head is the segmenter's).
        temperature: of the contrastive loss (SSCL's compares unscaled cosines, and BYOL, SimSiam and Barlow
            Twins have no softmax: 1.0, unused).
        method_options: further constructor arguments of the method (MoCo's
            ``queue_size``, ``momentum``, ``shuffle_bn_groups``; SupCon's ``variant``; NNCLR's
            ``support_size``, ``prediction_hidden_dim``; PCL's ``num_clusters``, ``warmup_epochs``; BYOL's
            ``momentum``; SimSiam's ``stop_gradient``; Barlow Twins' ``off_diagonal_weight``;
            PixelContrast's ``contrast_weight``, ``anchors_per_class``, memory sizes...; PCRL's MoCo
            options and its switches).
        augment: ``"digits"``, ``"simclr"`` or ``"pcrl"``, the :class:`~clcourse.augment.BatchedAugment`
            preset (``"pcrl"``: :func:`~clcourse.methods.pcrl.pcrl_augment`, which PCRL applies itself);
            ``augment_options`` override its knobs (e.g. ``blur_p=0``). Pixel contrast's loader
            moves the masks with the images.
        small_views, small_size, small_augment_options: multi-crop (SwAV): ``small_views`` crops of
            ``small_size`` px after the two views, the same preset with these options on top.
        batch_size: images per optimiser step, over all processes.
        epochs / steps / seconds: the budget; exactly one is set (:attr:`budget`).
        optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum``, Nesterov off).
        lr: learning rate at ``batch_size``; ``lr_scaling="linear"`` rescales it
            when :meth:`override` changes the batch size (the linear scaling rule
            of [SIMCLR] and [LIGHTLY]); ``"none"`` keeps it.
        weight_decay, schedule (``"constant"`` | ``"cosine"``), warmup (fraction of the budget).
        evaluation: the protocol of :data:`clcourse.evaluate.PROTOCOLS` that measures the run:
            ``"representation"`` (image methods), ``"segmentation"`` (pixel contrast),
            ``"finetune-segmentation"`` (PCRL) or ``"aspects"`` (SSCL).
        knn_k, knn_temperature: the kNN evaluation (k = 200, t = 0.1 in [LIGHTLY]
            and [MOCO-DEMO]; k = 20, t = 0.07 in the lessons).
        probe_draws: label draws averaged by the 1% and 10% linear probes.
        finetune_size, finetune_steps, finetune_lr, finetune_batch_size, finetune_class_weights: the
            ``"finetune-segmentation"`` protocol: labelled images it fine-tunes on, Adam steps (cosine
            decay), learning rate, batch, and the cross-entropy's class weights (None: all 1; see
            :class:`~clcourse.unet.UNet`). The first two are required by that protocol.
        seed: seeds the weights, the data order and the augmentations.
        expected: what a learner should see, with "about" and the source.
        sources: keys of :data:`SOURCES` behind the settings and the expectation.
        notes: differences from the sources worth knowing.
    """

    method: str
    profile: str
    dataset: str
    image_size: int
    in_channels: int
    encoder: str
    batch_size: int
    optimizer: str
    lr: float
    temperature: float
    epochs: int | None = None
    steps: int | None = None
    seconds: float | None = None
    data_path: str | None = None
    train_size: int | None = None
    test_size: int | None = None
    encoder_width: int = 32
    encoder_options: dict[str, Any] = field(default_factory=dict)
    channels_last: bool | None = None
    projection_dim: int = 128
    hidden_dim: int | None = None
    head_layers: int = 2
    method_options: dict[str, Any] = field(default_factory=dict)
    augment: str = "simclr"
    augment_options: dict[str, Any] = field(default_factory=dict)
    small_views: int = 0
    small_size: int | None = None
    small_augment_options: dict[str, Any] = field(default_factory=dict)
    momentum: float = 0.9
    weight_decay: float = 1e-6
    lr_scaling: str = "none"
    schedule: str = "cosine"
    warmup: float = 0.0
    evaluation: str = "representation"
    knn_k: int = 20
    knn_temperature: float = 0.07
    probe_draws: int = 5
    finetune_size: int | None = None
    finetune_steps: int | None = None
    finetune_lr: float = 1e-3
    finetune_batch_size: int = 32
    finetune_class_weights: tuple[float, ...] | None = None
    seed: int = 0
    expected: str = ""
    sources: tuple[str, ...] = ()
    notes: str = ""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        check_method_and_dataset(self.method, self.dataset)
        if (self.dataset == "folder") != (self.data_path is not None):
            raise ValueError("dataset 'folder' needs a data_path (and only it): --dataset folder:PATH")
        Budget.of(self.epochs, self.steps, self.seconds)  # raises unless exactly one budget is set, > 0
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if self.lr <= 0 or self.temperature <= 0:
            raise ValueError(f"lr and temperature must be > 0, got lr={self.lr}, temperature={self.temperature}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.lr_scaling not in ("none", "linear"):
            raise ValueError(f"lr_scaling must be 'none' or 'linear', got {self.lr_scaling!r}")
        if not isinstance(self.probe_draws, int) or self.probe_draws < 1:
            raise ValueError(f"probe_draws must be a positive int, got {self.probe_draws!r}")
        if not isinstance(self.small_views, int) or self.small_views < 0 or (self.small_views > 0) != bool(
                self.small_size):
            raise ValueError(f"small_views must be an int >= 0, with a small_size exactly when > 0; got "
                             f"small_views={self.small_views!r}, small_size={self.small_size!r}")
        required = {}
        if self.dataset in DENSE_DATASETS + TEXT_DATASETS:  # generated: the sizes say how many to draw
            required.update(train_size=self.train_size, test_size=self.test_size)
        if self.evaluation == "finetune-segmentation":
            required.update(finetune_size=self.finetune_size, finetune_steps=self.finetune_steps,
                            finetune_batch_size=self.finetune_batch_size)
        for name, value in required.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int for {self.dataset} / {self.evaluation}, "
                                 f"got {value!r}")
        if self.finetune_lr <= 0:
            raise ValueError(f"finetune_lr must be > 0, got {self.finetune_lr}")

    @property
    def budget(self) -> Budget:
        """The recipe's :class:`~clcourse.train.Budget` (epochs, steps or seconds)."""
        return Budget.of(self.epochs, self.steps, self.seconds)

    def override(self, **changes) -> Recipe:
        """A copy with ``changes`` applied; ``None`` values are ignored (unset command-line options).

        Giving one budget (``epochs``, ``steps`` or ``seconds``) replaces the
        recipe's budget.  Changing ``batch_size`` without ``lr`` rescales the
        learning rate when ``lr_scaling == "linear"``.
        """
        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown recipe fields {sorted(unknown)}")
        if set(Budget.KINDS) & set(changes):
            changes = {**dict.fromkeys(Budget.KINDS), **changes}
        if "batch_size" in changes and "lr" not in changes and self.lr_scaling == "linear":
            changes["lr"] = self.lr * changes["batch_size"] / self.batch_size
        return dataclasses.replace(self, **changes)

    @property
    def views_per_image(self) -> int:
        """Views the method encodes per training image, for the throughput: 1 for pixel contrast (the
        augmented image itself), 2 for the others (SwAV's small crops are not counted)."""
        return 1 if self.method in ("pixel-contrast", "sscl") else 2

    def evaluation_options(self) -> dict[str, Any]:
        """Keyword arguments of the recipe's evaluation protocol."""
        if self.evaluation in ("segmentation", "aspects"):
            return {}
        if self.evaluation == "finetune-segmentation":
            return dict(steps=self.finetune_steps, lr=self.finetune_lr, batch_size=self.finetune_batch_size,
                        class_weights=self.finetune_class_weights, seed=self.seed)
        return dict(knn_k=self.knn_k, knn_temperature=self.knn_temperature, draws=self.probe_draws)

    def as_dict(self) -> dict[str, Any]:
        """The recipe as plain JSON-able values (written to ``metrics.json``)."""
        d = dataclasses.asdict(self)
        d["sources"] = {key: SOURCES[key] for key in self.sources}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        """The recipe :meth:`as_dict` wrote (a run's ``metrics.json["config"]``)."""
        d = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}}
        d["sources"] = tuple(d.get("sources") or ())
        return cls(**d)

    def summary(self) -> str:
        """A few lines a run prints before it starts: what is trained, how, and what to expect."""
        opt = f"{self.optimizer.upper()} lr {self.lr:g}"
        if self.optimizer == "sgd":
            opt += f" momentum {self.momentum:g}"
        opt += f" wd {self.weight_decay:g}, {self.schedule}" + (f", warm-up {self.warmup:.0%}" if self.warmup else "")
        options = "".join(f", {k} {v}" for k, v in self.method_options.items())
        data = f"{self.dataset}:{self.data_path}" if self.data_path else self.dataset
        if self.method in TEXT_METHODS:
            words = ", ".join(f"{k} {v}" for k, v in self.encoder_options.items())
            lines = [f"recipe  {self.method} / {data} / {self.profile}: {self.train_size} training sentences, word "
                     f"vectors ({words}), batch {self.batch_size}, {self.budget}",
                     f"        {opt}{options}"]
        else:
            lines = [
                f"recipe  {self.method} / {data} / {self.profile}: {self.encoder} at "
                f"{self.image_size}x{self.image_size}, batch {self.batch_size}, {self.budget}",
                f"        {opt}" + ("" if self.method in NONCONTRASTIVE_METHODS else f"; temperature "
                                      f"{self.temperature:g}") + options,
            ]
        if self.evaluation == "finetune-segmentation":
            lines.append(f"eval    fine-tune {self.finetune_steps} steps on {self.finetune_size} labelled images, "
                         f"batch {self.finetune_batch_size}, Adam lr {self.finetune_lr:g}, cosine")
        if self.expected:
            lines.append(f"expect  {self.expected}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- the recipes


def _quick_data(dataset: str) -> dict[str, Any]:
    """Data, encoder and augmentation of the quick profile for ``dataset``."""
    if dataset == "digits":
        # The digits' native size; the SmallCNN keeps its last 2x2 map (where the strokes are).
        # A head of 512 hidden units, weight decay 1e-4, lr 3e-3 after a 5% warm-up and channels-last
        # weights: each measured in benchmarks/README.md. 10 label draws: at 1% and 10% of the labels the
        # draw moves a probe by 3-4 and 0.5 points, so fewer would blur the comparison with the targets.
        return dict(image_size=8, in_channels=1, augment="digits", encoder_options={"pool_size": 2},
                    hidden_dim=512, weight_decay=1e-4, lr=3e-3, warmup=0.05, channels_last=True, probe_draws=10)
    if dataset == "shapes":
        return dict(image_size=32, in_channels=3, augment="simclr", train_size=5000, test_size=2000)
    if dataset == "cifar10":
        # 10k / 2k images: the probes on 128-d features then take seconds, not minutes, on a CPU.
        return dict(image_size=32, in_channels=3, augment="simclr", augment_options={"blur_p": 0.0},
                    train_size=10000, test_size=2000)
    if dataset == "folder":
        return dict(image_size=32, in_channels=3, augment="simclr")
    raise ValueError(
        f"{dataset} runs at 96x96 with a ResNet-18 in the full profile only; use --profile full "
        "(a GPU), or digits, shapes, cifar10 or folder:PATH in the quick profile"
    )


# The quick profile's loss settings per method: the papers' CIFAR-10 temperatures, and on the digits
# the temperatures that measured best there in 60-second runs (benchmarks/README.md).
_QUICK_LOSS = {
    "simclr": dict(temperature=0.5),
    "moco": dict(temperature=0.2, method_options=dict(queue_size=1024, momentum=0.99, shuffle_bn_groups=4)),
    "supcon": dict(temperature=0.1, method_options=dict(variant="out")),
    "swav": dict(temperature=0.1, method_options=dict(num_prototypes=100, epsilon=0.05, sinkhorn_iterations=3,
                                                      freeze_prototypes_steps=100)),
    # 512 projections: two batches of 256, about 50 per digit class. The loader drops the last 233 of the
    # 1,257 digits, so an epoch is n = 4 batches. An image in batch i of an epoch was in batch j of the one
    # before, i, j uniform: its old projection is still in a support set of m batches when j - i >= n - m,
    # in m (m + 1) / 2 of the n^2 pairs (m <= n). So a support set of 1,024 (m = 4) holds the image's own
    # projection from the previous epoch (likely its nearest neighbour: SimCLR's positive, one epoch old,
    # instead of another digit) for 10 of 16 lookups; one of 512 (m = 2) for 3 of 16 (with 256, 1 of 16, but
    # the support set is then the last batch alone).
    "nnclr": dict(temperature=0.1, method_options=dict(support_size=512)),
    # MoCo's settings, plus k-means of the training set into 25, 50 and 100 clusters: about 50, 25 and 13 of the
    # 1,257 digits per prototype, the ratio of [PCL]'s 25,000-100,000 clusters of ImageNet's 1.28 million images.
    # 20 warm-up epochs as [PCL] (an epoch of the digits is 4 steps: 80 steps, about 5% of a 60 s run).
    "pcl": dict(temperature=0.2, method_options=dict(queue_size=1024, momentum=0.99, shuffle_bn_groups=4,
                                                     num_clusters=(25, 50, 100), warmup_epochs=20)),
    # No softmax, so no temperature (1.0 is a placeholder the methods never read).
    "byol": dict(temperature=1.0, method_options=dict(momentum=0.99)),
    # [SIMSIAM]'s predictor learning rate held fixed (its table 1) and its projector's batch norm on the output too;
    # a bottleneck of 64, half the projection (its own is a quarter): benchmarks/README.md's screening.
    "simsiam": dict(temperature=1.0, method_options=dict(fixed_predictor_lr=True, projection_batch_norm=True,
                                                         predictor_hidden_dim=64)),
    "barlow-twins": dict(temperature=1.0, projection_dim=256, head_layers=3),
}
_DIGITS_TEMPERATURE = {"simclr": 1.0, "moco": 0.5, "supcon": 0.1, "swav": 0.1, "nnclr": 0.1, "pcl": 0.5,
                       "byol": 1.0, "simsiam": 1.0, "barlow-twins": 1.0}
_QUICK_NOTES = {
    "simclr": "",
    # K = 1024 keys = one epoch of 4 batches of 256 (the last 233 of the 1,257 digits are dropped): by
    # the count at _QUICK_LOSS["nnclr"] above, for 10 of 16 queries the image's own key from the previous
    # epoch, made by an older key encoder, is still in the queue, a negative.
    "moco": "MoCo v2 settings [MOCO-DEMO] scaled to a 1,257-image dataset: K 1024, m 0.99, t 0.2 (MoCo v2); "
            "on the digits t 0.5, with which the probes read 1-1.5 points higher at 10% of the labels and about "
            "7 at 1%. ",
    "supcon": "t 0.1 and L_out as recommended in [SUPCON]. ",
    "swav": "SwAV's t 0.1, epsilon 0.05 and 3 Sinkhorn iterations; 100 prototypes (ten per class), frozen for "
            "the first 100 steps; two crops, as [LIGHTLY] on CIFAR-10 (multi-crop needs images larger than 8 px). ",
    "nnclr": "[NNCLR]'s t 0.1, the paper's ImageNet value (no temperature sweep on the digits yet); a support set "
             "of 512 projections (two batches, about 50 per class: large enough that a "
             "neighbour can be another image of the same digit, small enough that only 3 in 16 lookups can find "
             "the image's own projection from the previous epoch); a 128-512-128 prediction head. ",
    "pcl": "MoCo's quick settings (K 1024, m 0.99; on the digits t 0.5, MoCo's best there, not tuned for PCL), "
           "k-means of the whole training set into 25, 50 and 100 clusters at the start of every epoch after 20 "
           "warm-up epochs of InfoNCE alone ([PCL]'s warm-up; the images per prototype of [PCL] on ImageNet); all "
           "the other prototypes are each image's negatives (r = M - 1). ",
    "byol": "[BYOL]'s online projector and predictor (2 layers each, here 512 hidden units and 128 outputs) and a "
            "momentum target; tau fixed at 0.99 ([BYOL] raises it from 0.996 to 1 over training on ImageNet; 0.99 "
            "suits a run of a few thousand steps). SimCLR's quick settings otherwise, so the two cost the same. ",
    "simsiam": "[SIMSIAM]'s predictor with a learning rate held fixed (its table 1: no warm-up, no decay), its "
               "projector ending in batch norm, and the stop-gradient (method_options stop_gradient=False is the "
               "collapsing ablation of its section 4.1); a 128 -> 64 -> 128 predictor (its bottleneck is a quarter "
               "of the projection; a half scored higher here). SimCLR's quick settings otherwise (Adam: SGD at lr "
               "0.05-0.1 scored lower in 500-step runs). With SimCLR's settings alone it barely beat raw pixels "
               "(59% / 90.4%; benchmarks/README.md). ",
    "barlow-twins": "[BARLOW]'s 3-layer projector (here 512 hidden, 256 outputs, not its 8,192) and lambda 5e-3; "
                    "SimCLR's quick settings otherwise. ",
}
_MEASURED = ("60 s on 2 idle CPU threads (1,250-1,730 steps) gave, in 6 runs of 3 seeds, a linear probe of about "
             "{} with 1% of the labels and {} with 10% (raw pixels: 57% and 89.5%; a random encoder: 57% and 89%; "
             "benchmarks/README.md)")
_STEPS_1500 = ("1,500 steps (the command's --steps 1500; 60 s fit about 1,400 of SimCLR's) gave, in one run of 3 "
               "seeds, a linear probe of about {} with 1% of the labels and {} with 10% (raw pixels: 57% and 89.5%; a "
               "random encoder: 57% and 89%; SimCLR in 60 s: 90% and 97.5%; benchmarks/README.md)")
_QUICK_EXPECTED = {
    "simclr": _MEASURED.format("90% (89-91%)", "97.5% (96.98-98.1%)"),
    "moco": _MEASURED.format("80% (79-82%)", "96.8% (96.4-97.1%)"),
    "supcon": _MEASURED.format("96% (95-97%)", "99% (98.7-99.5%)") + ", with every label in training; "
              "cross-entropy for the same number of steps: 98-99% test accuracy",
    "swav": "60 s on 2 idle CPU threads (1,490-1,740 steps) gave, in one run of 3 seeds, a linear probe of about "
            "73% (72-74%) with 1% of the labels and 96.6% (96.3-97.2%) with 10% (raw pixels: 57% and 89.5%; a "
            "random encoder: 57% and 89%; SimCLR: 90% and 97.5%; benchmarks/README.md)",
    "nnclr": "60 s on 2 idle CPU threads (1,060-1,090 steps: the prediction head and the lookup make a step dearer) "
             "gave, in one run of 3 seeds, a linear probe of about 74% (73-76%) with 1% of the labels and 96% "
             "(95.7-96.2%) with 10% (raw pixels: 57% and 89.5%; a random encoder: 57% and 89%; SimCLR: 90% and "
             "97.5%; benchmarks/README.md)",
    "byol": _STEPS_1500.format("80% (79.9-80.6%)", "97.1% (96.6-97.4%)"),
    "simsiam": _STEPS_1500.format("83% (81.9-84.3%)", "96.0% (95.9-96.0%)"),
    "barlow-twins": _STEPS_1500.format("77% (76.0-77.9%)", "96.5% (96.1-96.9%)"),
    "pcl": "60 s on 2 idle CPU threads (540-585 steps: every epoch of 4 steps after the warm-up begins with "
           "k-means of the 1,257 digits at three granularities) gave, in one run of 3 seeds, a linear probe of about "
           "84% (83.5-84.7%) with 1% of the labels and 96.6% (96.3-96.9%) with 10% (raw pixels: 57% and 89.5%; a "
           "random encoder: 57% and 89%; MoCo: 80% and 96.8% in 1,250-1,730 steps; benchmarks/README.md)",
}


def _small_data_recipe(method: str, profile: str, dataset: str, data_path: str | None) -> Recipe:
    """Quick profile (and ``full`` on digits / shapes): SmallCNN, batch 256, Adam with cosine decay.

    MoCo and SupCon keep everything but their own loss settings, so the lessons compare
    methods at equal cost.
    """
    data = _quick_data(dataset)
    budget = dict(seconds=60.0) if profile == "quick" else dict(epochs=300 if dataset == "digits" else 100)
    busy = ("The budget is wall-clock seconds: a busy machine fits fewer steps in it and scores lower; "
            "give --steps or --epochs for a fixed amount of training. " if profile == "quick" else "")
    expected = _QUICK_EXPECTED[method] if dataset == "digits" and profile == "quick" else ""
    settings = dict(encoder="small_cnn", encoder_width=32, batch_size=256, optimizer="adam", lr=2e-3,
                    schedule="cosine", **_QUICK_LOSS[method], **budget)
    if dataset == "digits":
        settings["temperature"] = _DIGITS_TEMPERATURE[method]
    return Recipe(method=method, profile=profile, dataset=dataset, data_path=data_path, sources=("DIGITS-BENCH",),
                  expected=expected, notes=busy + _QUICK_NOTES[method], **{**settings, **data})


def _cifar_swav(common: dict) -> Recipe:
    return Recipe(
        lr=0.06 * 512 / 128, weight_decay=5e-4, temperature=0.1, hidden_dim=512, head_layers=2,
        method_options=dict(num_prototypes=512, epsilon=0.05, sinkhorn_iterations=3, freeze_prototypes_steps=98),
        augment_options={"blur_p": 0.0, "crop_scale": (0.14, 1.0)},
        expected="kNN (k=200) about 0.84 after 200 epochs and about 0.88 after 800 (LightlySSL CIFAR-10 "
                 "benchmark, batch 512: 0.842 / 0.884, max over epochs).",
        sources=("LIGHTLY",),
        notes="[LIGHTLY]'s SwAV: a 512-512-128 head, 512 prototypes, two 32 px crops of at least 14% of the "
              "image, no blur; the prototypes are frozen for the first epoch (98 steps), as SwAV's code does.",
        **common,
    )


def _cifar_nnclr(common: dict) -> Recipe:
    return Recipe(
        lr=0.06 * 512 / 128, weight_decay=5e-4, temperature=0.5, projection_dim=256, hidden_dim=2048, head_layers=2,
        method_options=dict(support_size=8192, prediction_hidden_dim=4096),
        augment_options={"blur_p": 0.0},
        expected="kNN (k=200) about 0.82 after 200 epochs and about 0.89 after 800 (LightlySSL CIFAR-10 "
                 "benchmark, batch 512, memory bank 8192: 0.815 / 0.892, max over epochs; NNCLR warms up slowly "
                 "and overtakes SimCLR only in the long run there). Not a reproduction: the loss here is "
                 "[NNCLR]'s eq. 3, see the notes.",
        sources=("LIGHTLY", "NNCLR"),
        notes="[LIGHTLY]'s NNCLR: a 512-2048-256 projection head, a 256-4096-256 prediction head, a support set "
              "of 8192 (its memory bank, doubled from 4096 for batch 512), t 0.5 (the default of its NTXentLoss), "
              "no blur. Two differences: [LIGHTLY] contrasts neighbours and predictions with NT-Xent (2N - 2 "
              "negatives, the neighbours among them), this course with [NNCLR]'s eq. 3 (the N - 1 other "
              "predictions); and [LIGHTLY]'s projection head also batch-normalises its 256-d output. [NNCLR] itself "
              "uses t 0.1 with batches of 4096 on ImageNet.",
        **common,
    )


def _cifar_pcl(common: dict) -> Recipe:
    return Recipe(
        lr=0.06, weight_decay=5e-4, temperature=0.1, head_layers=1,
        method_options=dict(queue_size=4096, momentum=0.99, shuffle_bn_groups=8, symmetric=False,
                            num_clusters=(500, 1000, 2000), warmup_epochs=20),
        augment_options={"blur_p": 0.0},
        expected="no published reference at this scale: [PCL] reports ImageNet, VOC and Places results only, and "
                 "no ResNet-18 CIFAR-10 figure from its authors or a benchmark suite was found; not measured here. "
                 "The same settings without the prototypes are the MoCo recipe (kNN about 0.83 after 200 epochs, "
                 "[MOCO-DEMO]). For scale, [PCL]'s published ImageNet linear-classification top-1 with a ResNet-50 "
                 "after 200 epochs (the authors' README): 61.5% (PCL v1) and 67.6% (PCL v2, with MoCo v2's MLP head, "
                 "stronger augmentation and cosine schedule); ImageNet figures, not a CIFAR-10 target.",
        sources=("PCL", "MOCO-DEMO"),
        notes="[MOCO-DEMO]'s MoCo (K 4096, m 0.99, t 0.1, linear head, 8 shuffle-BN groups) with [PCL]'s "
              "prototypes: k-means of the 50,000 momentum features into 500, 1,000 and 2,000 clusters (100, 50 and "
              "25 images per prototype, our choice: [PCL]'s ImageNet ratio, 51 / 26 / 13, would mean 1,000-4,000 "
              "clusters and a slower E-step on the CPU) at the start of every epoch after 20 warm-up epochs (as "
              "[PCL]: 20 of 200); every other prototype is a negative (r = M - 1; [PCL] samples 16,000 of 25,000 "
              "or more); alpha 10. The E-step runs scikit-learn's k-means on the CPU: expect it to add seconds to "
              "every epoch.",
        **common,
    )


_LIGHTLY_KNN = {"byol": ("0.868", "0.910"), "simsiam": ("0.764", "0.904"), "barlow-twins": ("0.819", "0.859")}
_CIFAR_HEADS = {  # projection / prediction heads after [LIGHTLY]'s ResNet-18 benchmark models
    "byol": dict(projection_dim=256, hidden_dim=1024, head_layers=2,
                 method_options=dict(momentum=0.99, prediction_hidden_dim=1024)),
    "simsiam": dict(projection_dim=128, hidden_dim=512, head_layers=2, method_options=dict(predictor_hidden_dim=64)),
    "barlow-twins": dict(projection_dim=2048, hidden_dim=2048, head_layers=3),
}


def _cifar_noncontrastive(method: str, common: dict) -> Recipe:
    two, eight = _LIGHTLY_KNN[method]
    paper = {"byol": "BYOL", "simsiam": "SIMSIAM", "barlow-twins": "BARLOW"}[method]
    return Recipe(
        lr=0.06 * 512 / 128, weight_decay=5e-4, temperature=1.0, augment_options={"blur_p": 0.0},
        expected=f"kNN (k=200) about {two} after 200 epochs and about {eight} after 800 (LightlySSL CIFAR-10 "
                 f"benchmark, batch 512, max over epochs; SimCLR there: 0.848 / 0.879). Not measured here.",
        sources=("LIGHTLY", paper),
        notes="[LIGHTLY]'s SGD schedule and head sizes for a ResNet-18 (read from its benchmark page and models, "
              "not a line-by-line reproduction); BYOL's tau stays at 0.99 where [LIGHTLY] and [BYOL] raise it to "
              "1 with a cosine schedule.",
        **_CIFAR_HEADS[method], **common,
    )


def _cifar_recipe(method: str) -> Recipe:
    """The full profile on CIFAR-10: ResNet-18 (CIFAR stem), batch 512, 200 epochs, SGD + cosine."""
    common = dict(method=method, profile="full", dataset="cifar10", image_size=32, in_channels=3,
                  encoder="resnet18_cifar", batch_size=512, epochs=200, optimizer="sgd", momentum=0.9,
                  lr_scaling="linear", schedule="cosine", knn_k=200, knn_temperature=0.1, probe_draws=3)
    if method == "swav":
        return _cifar_swav(common)
    if method == "nnclr":
        return _cifar_nnclr(common)
    if method == "pcl":
        return _cifar_pcl(common)
    if method in NONCONTRASTIVE_METHODS:
        return _cifar_noncontrastive(method, common)
    if method == "simclr":
        return Recipe(
            lr=0.06 * 512 / 128, weight_decay=5e-4, temperature=0.5, hidden_dim=512, head_layers=2,
            augment_options={"blur_p": 0.0},
            expected="kNN (k=200) about 0.85 after 200 epochs and about 0.88 after 800 (LightlySSL CIFAR-10 "
                     "benchmark, batch 512: 0.848 / 0.879; an earlier run of the same script gave 0.828 / 0.875; "
                     "max over epochs, so the final epoch can be a little lower); the linear probe is usually "
                     "a few points higher. [SIMCLR] reports about 94% linear accuracy with a ResNet-50 "
                     "trained much longer.",
            sources=("LIGHTLY", "SIMCLR"),
            notes="[LIGHTLY] normalises images with ImageNet statistics; here they stay in [0, 1] (the first "
                  "batch norm absorbs the offset). Temperature 0.5 is [LIGHTLY]'s NTXentLoss default and the best "
                  "CIFAR-10 value of [SIMCLR] B.9.",
            **common,
        )
    if method == "moco":
        return Recipe(
            lr=0.06, weight_decay=5e-4, temperature=0.1, head_layers=1,
            method_options=dict(queue_size=4096, momentum=0.99, shuffle_bn_groups=8, symmetric=False),
            augment_options={"blur_p": 0.0},
            expected="kNN (k=200) about 0.83 after 200 epochs ([MOCO-DEMO]: 82.6 with the asymmetric loss, "
                     "85.3 with symmetric=True; 88.7 / 89.7 after 800 epochs). [LIGHTLY]'s MoCo (symmetric, "
                     "2-layer head, K 8192) reaches about 0.85 after 200 epochs.",
            sources=("MOCO-DEMO", "LIGHTLY"),
            notes="[MOCO-DEMO] measures kNN on the 128-d head output; this course measures it on the 512-d "
                  "encoder features (the head is dropped), so expect a difference of a point or two either way.",
            **common,
        )
    return Recipe(
        lr=0.5 * 512 / 1024, weight_decay=1e-4, temperature=0.1, head_layers=2, warmup=0.05,
        method_options=dict(variant="out"),
        augment_options={"crop_scale": (0.2, 1.0), "blur_p": 0.0},
        expected="no published ResNet-18 / 200-epoch number to hold it to: [SUPCON] reports 96.0% linear "
                 "accuracy with a ResNet-50 after 1000 epochs at batch 1024 (cross-entropy: 95.0%); expect "
                 "lower here, above the self-supervised recipes.",
        sources=("SUPCON",),
        notes="Batch 1024 -> 512 and 1000 -> 200 epochs so that it costs what the SimCLR and MoCo recipes do; "
              "lr scaled linearly; 10 of 200 epochs warm-up as the reference's 10 warm-up epochs; crops of "
              "20-100% of the area and no blur as in the reference code.",
        **common,
    )


def _large_image_recipe(method: str, dataset: str, data_path: str | None) -> Recipe:
    """The full profile at 96 px (STL-10, your folder): the CIFAR-10 recipe with torchvision's ResNet-18 stem.

    SimCLR and MoCo train on STL-10's 105,000 images of ``train+unlabeled``; SupCon on
    the 5,000 labelled ``train`` images.  These settings are ours, not a
    reproduction: no expected accuracy is claimed.
    """
    cifar = _cifar_recipe(method)
    options = {k: v for k, v in cifar.augment_options.items() if k != "blur_p"}  # blur helps at 96 px [SIMCLR]
    return dataclasses.replace(
        cifar, dataset=dataset, image_size=96, encoder="resnet18", augment_options=options,
        epochs=100 if method != "supcon" else 200,
        expected="", sources=cifar.sources,
        notes="Our extrapolation of the CIFAR-10 recipe (7x7 stride-2 stem at 96 px, Gaussian blur on); "
              "not checked against a published number.",
        data_path=data_path,
    )


_NOT_MEASURED = ("not measured yet (the figure will come from training this recipe in benchmarks/, recorded in "
                 "benchmarks/README.md)")
_MEASURED_QUICK = "(benchmarks/bench_dense_recipes.py, seeds 0-2, recorded in benchmarks/README.md)"
_SSCL_QUICK_EXPECTED = ("about 73% (73.3 +- 16.0%: 86.6, 77.9 and 55.5% for seeds 0-2, seed 2 mapping none of its "
                        "12 aspects to ambience) (clcourse train sscl --seed N, recorded in benchmarks/README.md "
                        "with benchmarks/bench_sscl.py's baselines)")


def _pixel_contrast_recipe(profile: str) -> Recipe:
    """Pixel contrast on the scenes: a SmallSegmenter, Adam + cosine, a step budget, PixelContrast's defaults."""
    quick = profile == "quick"
    test_size = 500 if quick else 2000
    return Recipe(
        method="pixel-contrast", profile=profile, dataset="scenes", in_channels=3, encoder="small_segmenter",
        image_size=32 if quick else 64, train_size=2000 if quick else 20000, test_size=test_size,
        encoder_width=32 if quick else 64, batch_size=32 if quick else 128, steps=600 if quick else 10000,
        optimizer="adam", lr=2e-3, weight_decay=1e-4, schedule="cosine", temperature=0.1,
        method_options=dict(warmup_steps=300 if quick else 5000),
        augment="simclr", augment_options=dict(crop_scale=(0.5, 1.0), blur_p=0.0), evaluation="segmentation",
        expected=(f"mIoU of the argmax over the 7 classes of the {test_size} test scenes: about 84% (83.9 +- 0.7%; "
                  f"cross-entropy alone 83.4 +- 0.7%) {_MEASURED_QUICK}" if quick else
                  f"mIoU of the argmax over the 7 classes of the {test_size} test scenes: {_NOT_MEASURED}."),
        sources=("PIXEL-CONTRAST",),
        notes="PixelContrast's defaults (t 0.1 and lambda 0.1 as [PIXEL-CONTRAST]; 32 anchors per class, half of "
              "them hard; a pixel memory of 512 and a region memory of 128 per class) after a warm-up of cross-entropy "
              "alone for half the steps (from scratch, the term from the first step cost seed 0 3.9 points of mIoU in "
              "lesson 12; [PIXEL-CONTRAST]'s code waits 5,000 of 40,000 iterations). Crops of 50-100% of the area, "
              "flips, colour jitter and grayscale; no blur, which "
              "would smear the object boundaries the masks draw. "
              + ("" if quick else "The full profile is our extrapolation for one GPU (64 px scenes, a SmallSegmenter "
                                  "of width 64, batch 128), unmeasured."),
    )


def _pcrl_recipe(profile: str) -> Recipe:
    """PCRL on the lesions: pre-training on unlabelled slices, then fine-tuning on a few labelled ones."""
    quick = profile == "quick"
    test_size = 500 if quick else 2000
    return Recipe(
        method="pcrl", profile=profile, dataset="lesions", in_channels=1, encoder="unet", image_size=64,
        encoder_options=dict(widths=(8, 16, 32, 64) if quick else (16, 32, 64, 128)),
        train_size=2000 if quick else 20000, test_size=test_size,
        batch_size=32 if quick else 128, steps=600 if quick else 10000,
        optimizer="adam", lr=1e-3, schedule="cosine", temperature=0.2, augment="pcrl",
        method_options={} if quick else dict(queue_size=4096),
        evaluation="finetune-segmentation", finetune_size=200, finetune_steps=300, finetune_lr=1e-3,
        finetune_batch_size=32, finetune_class_weights=(1.0, 10.0),
        expected=(f"lesion Dice on the {test_size} test slices (scanner A) after fine-tuning on the 200 labelled "
                  f"ones: about 42% (42.0 +- 1.9%), below the same fine-tuning from scratch (45.4 +- 3.1%): no gain "
                  f"from pre-training at this budget yet {_MEASURED_QUICK}" if quick else
                  f"lesion Dice on the {test_size} test slices (scanner A) after fine-tuning on the 200 labelled "
                  f"ones: {_NOT_MEASURED}."),
        sources=("PCRL",),
        notes="Settings not tuned (a search of sizes, widths, label counts and learning rates within a lesson's "
              "budget found no setting where pre-training clearly beat scratch): PCRL's defaults (t 0.2 as [PCRL]'s code, queue "
              f"{1024 if quick else 4096}, m 0.99, 2 shuffle-BN groups, the three paths on) and its own views "
              "(pcrl_augment). The pre-training sees the slices without their masks; the evaluation fine-tunes "
              "the pre-trained U-Net on 200 other, labelled slices (cross-entropy weighted 1 : 10 for the lesions, "
              "under 1% of the pixels; no augmentation). "
              + ("" if quick else "The full profile is our extrapolation for one GPU (20,000 slices, U-Net widths "
                                  "16-128, batch 128), unmeasured."),
    )


_DENSE_RECIPES = {"pixel-contrast": _pixel_contrast_recipe, "pcrl": _pcrl_recipe}


def _sscl_recipe(profile: str) -> Recipe:
    """SSCL [SSCL] on the generated reviews: word vectors of the training sentences, then SSCL from k-means aspects."""
    quick = profile == "quick"
    test_size = 600 if quick else 4000
    return Recipe(
        method="sscl", profile=profile, dataset="reviews", image_size=0, in_channels=0, encoder="smooth_attention",
        train_size=2400 if quick else 40000, test_size=test_size,
        encoder_options=dict(dim=24 if quick else 64), batch_size=64 if quick else 50,
        steps=300 if quick else 10000, optimizer="adam", lr=3e-3 if quick else 2e-4, weight_decay=0.0,
        schedule="constant", temperature=1.0, method_options=dict(num_aspects=12, smooth=2.0 if quick else 0.5),
        evaluation="aspects",
        expected=(f"macro-F1 over the 4 aspects of the {test_size} test sentences (neutral ones included): "
                  f"{_SSCL_QUICK_EXPECTED}" if quick else
                  f"macro-F1 over the 4 aspects of the {test_size} test sentences: {_NOT_MEASURED}."),
        sources=("SSCL",),
        notes="The corpus is make_reviews with clcourse.data.reviews.HARD (shared words and nouns, distractor "
              "clauses, filler phrases, 20% neutral sentences), one draw of seed 0 cut into training and test "
              "sentences. Skip-gram word vectors of the training sentences (kept fixed, as [SSCL]), 12 learnt "
              "aspects initialised by k-means of the word vectors, each mapped afterwards to the gold aspect most "
              "of its training sentences carry (at least half of them, else to none). "
              + ("The quick profile's smoothness 2.0 and lr 3e-3 are what benchmarks/bench_sscl.py found to work in "
                 "300 steps; [SSCL]'s code uses 0.5, lr 2e-4 and batch 50, which the full profile keeps (0.5 "
                 "scored lower on this corpus in the quick budget, see benchmarks/README.md)." if quick else
                 "The full profile is [SSCL]'s code's smoothness 0.5, lr 2e-4 and batch 50 on a larger corpus, "
                 "unmeasured."),
    )


def get_recipe(method: str, profile: str | None = None, dataset: str | None = None) -> Recipe:
    """The recipe for ``method`` on ``dataset`` in ``profile``.

    Args:
        method: one of :data:`METHODS`.
        profile: ``"quick"``, ``"full"``, ``"auto"`` or None (``$CLCOURSE_PROFILE``,
            default auto: quick on a CPU, full on a GPU).
        dataset: ``"digits"``, ``"shapes"``, ``"cifar10"``, ``"stl10"`` or ``"folder:PATH"``
            (a folder of your images, ImageFolder layout) for the image methods, ``"scenes"`` for
            pixel contrast, ``"lesions"`` for PCRL; None = the dense method's dataset, else digits
            in the quick profile and cifar10 in the full one.

    Raises:
        ValueError: an unknown name, a method on a dataset it does not train on, or stl10 in the
            quick profile.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    profile = get_profile(profile).name if profile in (None, "auto") else profile
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES} or 'auto', got {profile!r}")
    dataset = OWN_DATASET.get(method, DEFAULT_DATASET[profile]) if dataset is None else dataset
    dataset, _, data_path = dataset.partition(":")
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS} (folder as folder:PATH), got {dataset!r}")
    if (dataset == "folder") != bool(data_path):
        raise ValueError("give your images as folder:PATH, e.g. --dataset folder:~/pictures "
                         "(one sub-folder per class)" if dataset == "folder"
                         else f"only the folder dataset takes a path, got {dataset}:{data_path}")
    check_method_and_dataset(method, dataset)
    if method in DENSE_METHODS:
        return _DENSE_RECIPES[method](profile)
    if method == "sscl":
        return _sscl_recipe(profile)
    if profile == "full" and dataset == "cifar10":
        return _cifar_recipe(method)
    if profile == "full" and dataset in ("stl10", "folder"):
        return _large_image_recipe(method, dataset, data_path or None)
    return _small_data_recipe(method, profile, dataset, data_path or None)


# --------------------------------------------------------------------------- building a run


def _limit(data, n: int | None):
    return data if n is None or n >= len(data) else data.subset(slice(0, n))


def _stl10_images(dataset):
    """An STL-10 split as float16 `ImageData` in [0, 1].

    float16 halves the memory of the 105,000 96x96 images of train+unlabeled
    (6 GB instead of 12 GB); :class:`~clcourse.data.ViewLoader` turns each batch back into float32.
    """
    from clcourse.data import ImageData

    pixels = torch.from_numpy(dataset.data).to(torch.float16).div_(255)
    return ImageData(pixels, torch.as_tensor(dataset.labels, dtype=torch.long))


def _class_names(dataset: str) -> tuple[str, ...]:
    """The mask classes of a dense dataset, the background first."""
    from clcourse.data.lesions import LESION_CLASSES
    from clcourse.data.scenes import SCENE_CLASSES

    return {"scenes": SCENE_CLASSES, "lesions": LESION_CLASSES}[dataset]


def _without_labels(dense):
    """The images of a `DenseData` with no label left: every mask pixel IGNORE_INDEX, no boxes."""
    from clcourse.data import IGNORE_INDEX, DenseData

    n = len(dense)
    return DenseData(dense.images, torch.full_like(dense.masks, IGNORE_INDEX), [torch.zeros(0, 4)] * n,
                     [torch.zeros(0, dtype=torch.long)] * n, dense.class_names)


def _dense_datasets(recipe: Recipe):
    """``(train_for_training, eval_train, eval_test)`` DenseData of scenes or lesions, drawn from fixed seeds
    (0 training, 1 test, 2 the labelled fine-tuning set), the same for every recipe seed.

    Scenes: the training set serves both training and evaluation. Lesions (scanner A): the training set
    without its labels (PCRL pre-trains on the images alone), the labelled fine-tuning set, the test set.
    """
    from clcourse import data

    size = recipe.image_size
    if recipe.dataset == "scenes":
        train = data.make_scenes(recipe.train_size, size, seed=0)
        return train, train, data.make_scenes(recipe.test_size, size, seed=1)
    unlabelled = _without_labels(data.make_lesions(recipe.train_size, size, seed=0, scanner="A"))
    labelled = data.make_lesions(recipe.finetune_size, size, seed=2, scanner="A")
    return unlabelled, labelled, data.make_lesions(recipe.test_size, size, seed=1, scanner="A")


def _review_datasets(recipe: Recipe):
    """``(train, train, test)`` :class:`~clcourse.data.Reviews`: one draw of the harder corpus
    (:data:`~clcourse.data.reviews.HARD`, seed 0, the same for every recipe seed), its first ``train_size``
    sentences to train (their labels only map the learnt aspects) and the next ``test_size`` to test."""
    from clcourse.data.reviews import HARD, make_reviews

    reviews = make_reviews(recipe.train_size + recipe.test_size, seed=0, **HARD)
    train = reviews.subset(slice(0, recipe.train_size))
    return train, train, reviews.subset(slice(recipe.train_size, None))


def load_datasets(recipe: Recipe, *, root: str | Path | None = None, download: bool = False):
    """``(train_for_training, eval_train, eval_test)`` of the recipe's dataset: ImageData, DenseData for
    the dense datasets (see :func:`_dense_datasets`), Reviews for the reviews (:func:`_review_datasets`).

    The training set of SimCLR and MoCo on STL-10 is ``train+unlabeled``;
    otherwise it is the evaluation's training set.

    Raises:
        clcourse.data.DatasetNotFoundError: CIFAR-10 / STL-10 missing and not downloaded.
        FileNotFoundError, ValueError: a folder that is missing, empty or not in the layout.
    """
    from clcourse import data

    if recipe.dataset in DENSE_DATASETS:
        return _dense_datasets(recipe)
    if recipe.dataset == "reviews":
        return _review_datasets(recipe)
    if recipe.dataset == "digits":
        train = data.load_digits(recipe.image_size, split="train")
        test = data.load_digits(recipe.image_size, split="test")
    elif recipe.dataset == "shapes":
        # Distinct seeds: the test images are new draws of the same distribution.
        train = data.make_shapes(recipe.train_size or 5000, recipe.image_size, seed=0)
        test = data.make_shapes(recipe.test_size or 2000, recipe.image_size, seed=1)
    elif recipe.dataset == "folder":
        train = data.load_folder(recipe.data_path, recipe.image_size, split="train")
        test = data.load_folder(recipe.data_path, recipe.image_size, split="test")
    elif recipe.dataset == "cifar10":
        train = data.as_image_data(data.cifar10(root, train=True, download=download))
        test = data.as_image_data(data.cifar10(root, train=False, download=download))
    else:
        train = data.as_image_data(data.stl10(root, split="train", download=download))
        test = data.as_image_data(data.stl10(root, split="test", download=download))
        if recipe.method != "supcon":
            ssl = _stl10_images(data.stl10(root, split="train+unlabeled", download=download))
            return ssl, _limit(train, recipe.train_size), _limit(test, recipe.test_size)
    train, test = _limit(train, recipe.train_size), _limit(test, recipe.test_size)
    return train, train, test


def build_encoder(recipe: Recipe) -> nn.Module:
    """The recipe's encoder, for images [B, in_channels, S, S].

    The image methods' (``small_cnn``, ``resnet18_cifar``, ``resnet18``) give [B, out_dim];
    ``small_segmenter`` gives logits [B, K, S, S] and pixel embeddings (K the dataset's classes);
    ``unet`` is PCRL's U-Net encoder (its feature maps, pooled bottleneck [B, out_dim]).
    """
    from clcourse.encoders import ResNet18, SmallCNN, SmallSegmenter
    from clcourse.unet import UNetEncoder

    builders = {
        "small_cnn": lambda: SmallCNN(recipe.in_channels, width=recipe.encoder_width,
                                      **{"out_dim": 128, **recipe.encoder_options}),
        "resnet18_cifar": lambda: ResNet18(recipe.in_channels, stem="cifar"),
        "resnet18": lambda: ResNet18(recipe.in_channels, stem="imagenet"),
        "small_segmenter": lambda: SmallSegmenter(recipe.in_channels, len(_class_names(recipe.dataset)),
                                                  width=recipe.encoder_width, **recipe.encoder_options),
        "unet": lambda: UNetEncoder(recipe.in_channels, **recipe.encoder_options),
    }
    if recipe.encoder not in builders:
        raise ValueError(f"encoder must be one of {tuple(builders)}, got {recipe.encoder!r}")
    return builders[recipe.encoder]()


def method_class(name: str) -> type[nn.Module]:
    """The :class:`~clcourse.methods.Method` subclass that trains under ``name`` (one of :data:`METHODS`)."""
    from clcourse.methods import (
        BYOL,
        NNCLR,
        PCL,
        PCRL,
        SSCL,
        BarlowTwins,
        MoCo,
        PixelContrast,
        SimCLR,
        SimSiam,
        SupCon,
        SwAV,
    )

    classes = {"simclr": SimCLR, "moco": MoCo, "supcon": SupCon, "swav": SwAV, "nnclr": NNCLR, "pcl": PCL,
               "byol": BYOL, "simsiam": SimSiam, "barlow-twins": BarlowTwins,
               "pixel-contrast": PixelContrast, "pcrl": PCRL, "sscl": SSCL}
    if name not in classes:
        raise ValueError(f"method must be one of {METHODS}, got {name!r}")
    return classes[name]


def _image_method(recipe: Recipe, encoder: nn.Module, gather_distributed: bool) -> nn.Module:
    return method_class(recipe.method)(encoder, projection_dim=recipe.projection_dim, hidden_dim=recipe.hidden_dim,
                                       head_layers=recipe.head_layers, temperature=recipe.temperature,
                                       gather_distributed=gather_distributed, **recipe.method_options)


def _noncontrastive(recipe: Recipe, encoder: nn.Module, gather_distributed: bool) -> nn.Module:
    return method_class(recipe.method)(encoder, projection_dim=recipe.projection_dim, hidden_dim=recipe.hidden_dim,
                                       head_layers=recipe.head_layers, gather_distributed=gather_distributed,
                                       **recipe.method_options)


def _pixel_contrast(recipe: Recipe, segmenter: nn.Module, gather_distributed: bool) -> nn.Module:
    from clcourse.methods import PixelContrast

    return PixelContrast(segmenter, segmenter.num_classes, temperature=recipe.temperature,
                         gather_distributed=gather_distributed, **recipe.method_options)


def _pcrl(recipe: Recipe, encoder: nn.Module, gather_distributed: bool) -> nn.Module:
    from clcourse.methods import PCRL

    return PCRL(encoder, projection_dim=recipe.projection_dim, hidden_dim=recipe.hidden_dim,
                temperature=recipe.temperature, augment=build_augment(recipe),
                gather_distributed=gather_distributed, **recipe.method_options)


_METHOD_BUILDERS = {"pixel-contrast": _pixel_contrast, "pcrl": _pcrl,  # the others: _image_method
                    **dict.fromkeys(NONCONTRASTIVE_METHODS, _noncontrastive)}


def _sscl(recipe: Recipe, train) -> nn.Module:
    """SSCL on skip-gram vectors of the training sentences ``train`` (a Reviews), its aspects the k-means
    centroids of the word vectors, as [SSCL]; both seeded with ``recipe.seed``."""
    from clcourse.clustering import kmeans
    from clcourse.methods import SSCL
    from clcourse.word_vectors import train_word_vectors

    options = dict(recipe.method_options)
    num_aspects = options.pop("num_aspects")
    vectors = train_word_vectors(train.ids, len(train.vocab), seed=recipe.seed, **recipe.encoder_options)
    centroids, _ = kmeans(vectors[1:], num_aspects, seed=recipe.seed)  # row 0 is the padding
    return SSCL(vectors, centroids, **options)


def build_method(recipe: Recipe, *, gather_distributed: bool = False) -> nn.Module:
    """The recipe's method module (fresh weights from the global RNG; :func:`build` seeds it first).

    ``gather_distributed``: the method draws negatives from every process (for data-parallel runs);
    pixel contrast refuses it. SSCL's word vectors are trained on the recipe's training sentences first.
    """
    if recipe.method == "sscl":
        return _sscl(recipe, load_datasets(recipe)[0])
    build_one = _METHOD_BUILDERS.get(recipe.method, _image_method)
    return build_one(recipe, build_encoder(recipe), gather_distributed)


def build_augment(recipe: Recipe, small: bool = False):
    """The recipe's batched augmentation (:class:`~clcourse.augment.BatchedAugment`); ``small``: its small crops."""
    from clcourse.augment import BatchedAugment
    from clcourse.methods.pcrl import pcrl_augment

    presets = {"digits": BatchedAugment.digits, "simclr": BatchedAugment.simclr, "pcrl": pcrl_augment}
    if recipe.augment not in presets:
        raise ValueError(f"augment must be one of {tuple(presets)}, got {recipe.augment!r}")
    preset = presets[recipe.augment]
    if small:
        return preset(recipe.small_size, **{**recipe.augment_options, **recipe.small_augment_options})
    return preset(recipe.image_size, **recipe.augment_options)


def build(recipe: Recipe, device: torch.device | str | None = None, *, root: str | Path | None = None,
          download: bool = False, rank: int = 0, world_size: int = 1):
    """Build a run: ``(method, train_loader, eval_train, eval_test)``.

    Seeds everything with ``recipe.seed`` first, so the same recipe gives the
    same initial weights, data order and views on every machine and process.

    Args:
        recipe: what to build.
        device: where the method and the batches live; default the best device.
        root, download: where CIFAR-10 / STL-10 are (default `clcourse.data.default_root()`),
            and whether to fetch them when missing.
        rank, world_size: with ``world_size > 1`` the loader yields process
            ``rank``'s share (``batch_size / world_size`` rows) of every global batch,
            and the method gathers negatives from every process.

    Returns:
        the method (on ``device``), a loader of ``(views, labels)`` batches
        ([B, C, S, S] views on ``device``; PCL's carry image indices in place of the
        labels, see :meth:`clcourse.methods.PCL.attach_dataset`), and the labelled evaluation sets
        (:class:`~clcourse.data.ImageData` on the CPU). The dense methods' loader is a
        :class:`~clcourse.data.DenseLoader` of ``(images [B, C, S, S], masks int64 [B, S, S])``:
        augmented with their masks for pixel contrast; for PCRL the unlabelled images as they are
        (masks all IGNORE_INDEX), as PCRL draws its two views itself; their evaluation sets are
        :class:`~clcourse.data.DenseData` (:func:`load_datasets`).

    Raises:
        clcourse.data.DatasetNotFoundError: CIFAR-10 / STL-10 missing.
        ValueError: a batch size the data or the processes cannot share; a dense method on
            several processes.
    """
    from clcourse.data import ShardedAugment, ShardedLoader, ViewLoader, shard_rows
    from clcourse.device import get_device

    device = get_device() if device is None else torch.device(device)
    if recipe.method in DENSE_METHODS:
        if world_size > 1:
            raise ValueError(f"{recipe.method} trains on one process only: pixel contrast's anchors and pixel "
                             "memories, and the views PCRL draws inside the method, would each be a process's own "
                             "rather than the global batch's; run it without torchrun")
        return _build_dense(recipe, device)
    if recipe.method in TEXT_METHODS:
        if world_size > 1:
            raise ValueError(f"{recipe.method} trains on one process only: its negatives are the other sentences "
                             "of a process's batch; run it without torchrun")
        return _build_text(recipe, device)
    rows = shard_rows(recipe.batch_size, rank, world_size) if world_size > 1 else None
    seed_everything(recipe.seed)
    train, eval_train, eval_test = load_datasets(recipe, root=root, download=download)
    method = build_method(recipe, gather_distributed=world_size > 1).to(device)
    if recipe.method == "pcl":
        # PCL's E-step clusters the whole un-augmented training set, and its batches carry each image's index
        # where the labels go (the loader yields (views, index)): train on the images labelled 0..N-1.
        train = method.attach_dataset(train)
    augments = [build_augment(recipe, small) for small in (False, True)[: 1 + (recipe.small_views > 0)]]
    if rows is not None:
        augments = [ShardedAugment(a, rows) for a in augments]
    loader = ViewLoader(train, augments[0], batch_size=recipe.batch_size, seed=recipe.seed, device=device,
                        small_augment=augments[-1] if recipe.small_views else None, n_small_views=recipe.small_views)
    if rows is not None:
        loader = ShardedLoader(loader, rows)
    return method, loader, eval_train, eval_test


def _build_dense(recipe: Recipe, device: torch.device):
    """:func:`build` of a dense method, on one process."""
    from clcourse.data import DenseLoader

    seed_everything(recipe.seed)
    train, eval_train, eval_test = load_datasets(recipe)
    method = build_method(recipe).to(device)
    # PCRL augments inside the method (it must know each view's flips and turns): its loader passes the images on.
    augment = None if recipe.method == "pcrl" else build_augment(recipe)
    loader = DenseLoader(train, augment, batch_size=recipe.batch_size, seed=recipe.seed, device=device)
    return method, loader, eval_train, eval_test


def _build_text(recipe: Recipe, device: torch.device):
    """:func:`build` of SSCL: the method, a :class:`~clcourse.data.reviews.SentenceLoader` of the training
    sentences, and the training and test :class:`~clcourse.data.Reviews`."""
    from clcourse.data.reviews import SentenceLoader

    seed_everything(recipe.seed)
    train, eval_train, eval_test = load_datasets(recipe)
    method = _sscl(recipe, train).to(device)
    loader = SentenceLoader(train, recipe.batch_size, seed=recipe.seed, device=device)
    return method, loader, eval_train, eval_test


def build_optimizer(recipe: Recipe, method: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimiser over the method's trainable parameters.

    SGD with momentum is what the CIFAR-10 references use ([LIGHTLY],
    [MOCO-DEMO], [SUPCON]); Adam is the quick profile's, robust at small
    batch sizes.  Frozen parameters (MoCo's key encoder) are left out.  The groups are the method's
    (:func:`clcourse.train.parameter_groups`: SimSiam's predictor may keep a fixed learning rate).
    """
    params = [{**group, "params": [p for p in group["params"] if p.requires_grad]}
              for group in parameter_groups(method)]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def fit_options(recipe: Recipe) -> dict[str, Any]:
    """Keyword arguments of :func:`clcourse.train.fit` that the recipe fixes: budget, schedule, layout."""
    return dict(budget=recipe.budget, schedule=recipe.schedule, warmup=recipe.warmup,
                channels_last=recipe.channels_last)
