"""Recipes: one documented configuration per method, dataset and profile.

A *recipe* says everything a run needs: data, encoder, head, loss settings,
augmentation, batch size, budget, optimiser and schedule, the evaluation
protocol, and what accuracy to expect with the source of that number.  The
``clcourse train`` command and the lessons build their runs from the same
recipe with :func:`build`, so a lesson's "at full scale you would see ..."
is the command line's result.

Two profiles (see :mod:`clcourse.device`):

- ``quick``: digits at 16x16 (or procedural shapes, or a slice of CIFAR-10)
  with :class:`~clcourse.encoders.SmallCNN`, batch 256, Adam, a budget in
  seconds, so a run costs the same on every laptop.
- ``full``: CIFAR-10 with the CIFAR-stem ResNet-18 on one GPU, with the
  optimiser, schedule, temperature and queue of public CIFAR-10
  reproductions, and their accuracies as the expectation; STL-10 at 96 px.

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
===========  =====  ======  ======================================  =====  ================================

References (``Recipe.sources`` names them by these keys):

[SIMCLR] Chen et al., A Simple Framework for Contrastive Learning of Visual
    Representations (SimCLR), ICML 2020; appendix B.9 (CIFAR-10).
[LIGHTLY] LightlySSL CIFAR-10 benchmarks,
    https://docs.lightly.ai/self-supervised-learning/getting_started/benchmarks.html
    and the script ``benchmarks/cifar10_benchmark.py`` it links: ResNet-18 with
    the CIFAR stem, SGD lr 0.06 x batch/128, momentum 0.9, weight decay 5e-4,
    cosine over the epochs, SimCLR augmentations without blur; kNN (k = 200,
    t = 0.1) on the test set, *the maximum over all epochs*.
[MOCO-DEMO] He et al., MoCo CIFAR-10 demo, github.com/facebookresearch/moco,
    ``colab/moco_cifar10_demo.ipynb``: ResNet-18 with the CIFAR stem, batch
    512, SGD lr 0.06, weight decay 5e-4, cosine, 200 epochs, K = 4096,
    m = 0.99, t = 0.1, SplitBatchNorm with 8 groups, a linear 128-d head;
    kNN (k = 200, t = 0.1) on the normalised 128-d output.
[SUPCON] Khosla et al., Supervised Contrastive Learning, NeurIPS 2020, and
    the authors' code github.com/HobbitLong/SupContrast (README: ResNet-50,
    batch 1024, lr 0.5, t = 0.1, cosine, 1000 epochs, 96.0% linear accuracy
    on CIFAR-10).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from clcourse.device import get_profile, seed_everything

METHODS = ("simclr", "moco", "supcon")
DATASETS = ("digits", "shapes", "cifar10", "stl10")
PROFILES = ("quick", "full")
DEFAULT_DATASET = {"quick": "digits", "full": "cifar10"}
PROBE_FRACTIONS = (("1%", 0.01), ("10%", 0.1), ("100%", None))

SOURCES = {
    "SIMCLR": "Chen et al., SimCLR, ICML 2020, appendix B.9 (CIFAR-10)",
    "LIGHTLY": "LightlySSL CIFAR-10 benchmarks, "
    "https://docs.lightly.ai/self-supervised-learning/getting_started/benchmarks.html",
    "MOCO-DEMO": "MoCo CIFAR-10 demo, github.com/facebookresearch/moco colab/moco_cifar10_demo.ipynb",
    "SUPCON": "Khosla et al., Supervised Contrastive Learning, NeurIPS 2020; github.com/HobbitLong/SupContrast",
    "DIGITS-BENCH": "benchmarks/bench_simclr_digits.py and lesson 00 of this course",
}


@dataclass(frozen=True)
class Recipe:
    """Everything one training run needs, with the expected result and its source.

    Attributes:
        method: ``"simclr"``, ``"moco"`` or ``"supcon"``.
        profile: ``"quick"`` or ``"full"``.
        dataset: ``"digits"``, ``"shapes"``, ``"cifar10"`` or ``"stl10"``.
        image_size, in_channels: the images the encoder sees, [B, in_channels, S, S].
        train_size, test_size: keep the first N images of the training / test set
            (``None``: all); the quick profile trims CIFAR-10 so that evaluation fits.
        encoder: ``"small_cnn"``, ``"resnet18_cifar"`` (3x3 stem, no max-pool [SIMCLR])
            or ``"resnet18"`` (torchvision's 7x7 stride-2 stem, for 96 px STL-10).
        encoder_width: width of the SmallCNN (ignored by the ResNets).
        projection_dim, hidden_dim, head_layers: the projection head (``hidden_dim``
            None: the encoder's out_dim).
        temperature: of the contrastive loss.
        method_options: further constructor arguments of the method (MoCo's
            ``queue_size``, ``momentum``, ``shuffle_bn_groups``; SupCon's ``variant``).
        augment: ``"digits"`` or ``"simclr"``, the :class:`~clcourse.augment.BatchedAugment`
            preset; ``augment_options`` override its knobs (e.g. ``blur_p=0``).
        batch_size: images per optimiser step, over all processes.
        epochs / steps / seconds: the budget; exactly one is set.
        optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum``, Nesterov off).
        lr: learning rate at ``batch_size``; ``lr_scaling="linear"`` rescales it
            when :meth:`override` changes the batch size (the linear scaling rule
            of [SIMCLR] and [LIGHTLY]); ``"none"`` keeps it.
        weight_decay, schedule (``"constant"`` | ``"cosine"``), warmup (fraction of the budget).
        knn_k, knn_temperature: the kNN evaluation (k = 200, t = 0.1 in [LIGHTLY]
            and [MOCO-DEMO]; k = 20, t = 0.07 in the lessons).
        probe_draws: label draws averaged by the 1% and 10% linear probes.
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
    train_size: int | None = None
    test_size: int | None = None
    encoder_width: int = 32
    projection_dim: int = 128
    hidden_dim: int | None = None
    head_layers: int = 2
    method_options: dict[str, Any] = field(default_factory=dict)
    augment: str = "simclr"
    augment_options: dict[str, Any] = field(default_factory=dict)
    momentum: float = 0.9
    weight_decay: float = 1e-6
    lr_scaling: str = "none"
    schedule: str = "cosine"
    warmup: float = 0.0
    knn_k: int = 20
    knn_temperature: float = 0.07
    probe_draws: int = 5
    seed: int = 0
    expected: str = ""
    sources: tuple[str, ...] = ()
    notes: str = ""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        budgets = {k: v for k, v in self.budget().items() if v is not None}
        if len(budgets) != 1:
            raise ValueError(f"a recipe needs exactly one budget of epochs, steps or seconds, got {budgets or 'none'}")
        (kind, value), = budgets.items()
        if value <= 0:
            raise ValueError(f"{kind} must be > 0, got {value}")
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

    def budget(self) -> dict[str, float | None]:
        """``{"epochs": ..., "steps": ..., "seconds": ...}``, exactly one not None (for :func:`~clcourse.train.fit`)."""
        return {"epochs": self.epochs, "steps": self.steps, "seconds": self.seconds}

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
        if {"epochs", "steps", "seconds"} & set(changes):
            changes = {"epochs": None, "steps": None, "seconds": None, **changes}
        if "batch_size" in changes and "lr" not in changes and self.lr_scaling == "linear":
            changes["lr"] = self.lr * changes["batch_size"] / self.batch_size
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The recipe as plain JSON-able values (written to ``metrics.json``)."""
        d = dataclasses.asdict(self)
        d["sources"] = {key: SOURCES[key] for key in self.sources}
        return d

    def summary(self) -> str:
        """A few lines a run prints before it starts: what is trained, how, and what to expect."""
        budget = ", ".join(f"{v:g} {k}" for k, v in self.budget().items() if v is not None)
        opt = f"{self.optimizer.upper()} lr {self.lr:g}"
        if self.optimizer == "sgd":
            opt += f" momentum {self.momentum:g}"
        opt += f" wd {self.weight_decay:g}, {self.schedule}" + (f", warm-up {self.warmup:.0%}" if self.warmup else "")
        options = "".join(f", {k} {v}" for k, v in self.method_options.items())
        lines = [
            f"recipe  {self.method} / {self.dataset} / {self.profile}: {self.encoder} at "
            f"{self.image_size}x{self.image_size}, batch {self.batch_size}, {budget}",
            f"        {opt}; temperature {self.temperature:g}{options}",
        ]
        if self.expected:
            lines.append(f"expect  {self.expected}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- the recipes


def _quick_data(dataset: str) -> dict[str, Any]:
    """Data, encoder and augmentation of the quick profile for ``dataset``."""
    if dataset == "digits":
        return dict(image_size=16, in_channels=1, augment="digits")
    if dataset == "shapes":
        return dict(image_size=32, in_channels=3, augment="simclr", train_size=5000, test_size=2000)
    if dataset == "cifar10":
        # 10k / 2k images: the probes on 128-d features then take seconds, not minutes, on a CPU.
        return dict(image_size=32, in_channels=3, augment="simclr", augment_options={"blur_p": 0.0},
                    train_size=10000, test_size=2000)
    raise ValueError(
        f"{dataset} runs at 96x96 with a ResNet-18 in the full profile only; use --profile full "
        "(a GPU), or digits, shapes or cifar10 in the quick profile"
    )


def _small_data_recipe(method: str, profile: str, dataset: str) -> Recipe:
    """Quick profile (and ``full`` on digits / shapes): SmallCNN, batch 256, Adam 2e-3, cosine.

    Digits at 16x16, what the later lessons train on (lesson 06 uses this recipe).
    Lesson 00 and ``benchmarks/bench_simclr_digits.py`` train SimCLR at the
    digits' native 8x8 instead, which meets the course's 60-second targets (at
    least 80% linear-probe accuracy with 1% of the labels and 97% with 10%).
    MoCo and SupCon keep everything but their own loss settings, so the lessons
    compare methods at equal cost.
    """
    data = _quick_data(dataset)
    budget = dict(seconds=60.0) if profile == "quick" else dict(epochs=300 if dataset == "digits" else 100)
    common = dict(method=method, profile=profile, dataset=dataset, encoder="small_cnn", encoder_width=32,
                  batch_size=256, optimizer="adam", lr=2e-3, weight_decay=1e-6, schedule="cosine",
                  sources=("DIGITS-BENCH",), **budget, **data)
    busy = ("The budget is wall-clock seconds: a busy machine fits fewer steps in it and scores lower; "
            "give --steps or --epochs for a fixed amount of training. " if profile == "quick" else "")
    digits_simclr = (
        "60 s on 2 idle CPU threads (about 480 steps) gave a linear probe of about 72% with 1% of the labels and "
        "95% with 10% (raw pixels: about 59% and 89%; kNN about 97%); --steps 200 gave about 65% and 93%. "
        "benchmarks/bench_simclr_digits.py and lesson 00 train the digits at their native 8x8 (about 3x cheaper "
        "steps, channels-last weights, a 2x2 pooled grid, t 1.0) and reach about 89% and 97.5%"
    )
    if method == "simclr":
        expected = digits_simclr if dataset == "digits" and profile == "quick" else ""
        return Recipe(temperature=0.5, expected=expected, notes=busy, **common)
    if method == "moco":
        return Recipe(
            temperature=0.2,
            # K = 1024 < 1257 digits: an image's own key from the previous epoch has left the
            # queue before the image comes back, so it is (almost) never its own negative.
            method_options=dict(queue_size=1024, momentum=0.99, shuffle_bn_groups=4),
            notes=busy + "MoCo v2 settings [MOCO-DEMO] scaled to a 1,257-image dataset: K 1024, t 0.2 (MoCo v2).",
            **common,
        )
    return Recipe(temperature=0.1, method_options=dict(variant="out"),
                  notes=busy + "t 0.1 and L_out as recommended in [SUPCON].", **common)


def _cifar_recipe(method: str) -> Recipe:
    """The full profile on CIFAR-10: ResNet-18 (CIFAR stem), batch 512, 200 epochs, SGD + cosine."""
    common = dict(method=method, profile="full", dataset="cifar10", image_size=32, in_channels=3,
                  encoder="resnet18_cifar", batch_size=512, epochs=200, optimizer="sgd", momentum=0.9,
                  lr_scaling="linear", schedule="cosine", knn_k=200, knn_temperature=0.1, probe_draws=3)
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


def _stl10_recipe(method: str) -> Recipe:
    """The full profile on STL-10 at 96 px: the CIFAR-10 recipe with torchvision's ResNet-18 stem.

    SimCLR and MoCo train on the 105,000 images of ``train+unlabeled``; SupCon on
    the 5,000 labelled ``train`` images.  These settings are ours, not a
    reproduction: no expected accuracy is claimed.
    """
    cifar = _cifar_recipe(method)
    options = {k: v for k, v in cifar.augment_options.items() if k != "blur_p"}  # blur helps at 96 px [SIMCLR]
    return dataclasses.replace(
        cifar, dataset="stl10", image_size=96, encoder="resnet18", augment_options=options,
        epochs=100 if method != "supcon" else 200,
        expected="", sources=cifar.sources,
        notes="Our extrapolation of the CIFAR-10 recipe (7x7 stride-2 stem at 96 px, Gaussian blur on); "
              "not checked against a published STL-10 number.",
    )


def get_recipe(method: str, profile: str | None = None, dataset: str | None = None) -> Recipe:
    """The recipe for ``method`` on ``dataset`` in ``profile``.

    Args:
        method: ``"simclr"``, ``"moco"`` or ``"supcon"``.
        profile: ``"quick"``, ``"full"``, ``"auto"`` or None (``$CLCOURSE_PROFILE``,
            default auto: quick on a CPU, full on a GPU).
        dataset: ``"digits"``, ``"shapes"``, ``"cifar10"``, ``"stl10"``; None = digits
            in the quick profile, cifar10 in the full one.

    Raises:
        ValueError: an unknown name, or stl10 in the quick profile.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    profile = get_profile(profile).name if profile in (None, "auto") else profile
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES} or 'auto', got {profile!r}")
    dataset = DEFAULT_DATASET[profile] if dataset is None else dataset
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if profile == "full" and dataset == "cifar10":
        return _cifar_recipe(method)
    if profile == "full" and dataset == "stl10":
        return _stl10_recipe(method)
    return _small_data_recipe(method, profile, dataset)


# --------------------------------------------------------------------------- building a run


def _limit(data, n: int | None):
    return data if n is None or n >= len(data) else data.subset(slice(0, n))


def _stl10_images(dataset):
    """An STL-10 split as float16 `ImageData` in [0, 1].

    float16 halves the memory of the 105,000 96x96 images of train+unlabeled
    (6 GB instead of 12 GB); :class:`_ViewAugment` turns each batch back into float32.
    """
    from clcourse.data import ImageData

    pixels = torch.from_numpy(dataset.data).to(torch.float16).div_(255)
    return ImageData(pixels, torch.as_tensor(dataset.labels, dtype=torch.long))


def load_datasets(recipe: Recipe, *, root: str | Path | None = None, download: bool = False):
    """``(train_for_training, eval_train, eval_test)`` ImageData of the recipe's dataset.

    The training set of SimCLR and MoCo on STL-10 is ``train+unlabeled``;
    otherwise it is the evaluation's training set.

    Raises:
        clcourse.data.DatasetNotFoundError: CIFAR-10 / STL-10 missing and not downloaded.
    """
    from clcourse import data

    if recipe.dataset == "digits":
        train = data.load_digits(recipe.image_size, split="train")
        test = data.load_digits(recipe.image_size, split="test")
    elif recipe.dataset == "shapes":
        # Distinct seeds: the test images are new draws of the same distribution.
        train = data.make_shapes(recipe.train_size or 5000, recipe.image_size, seed=0)
        test = data.make_shapes(recipe.test_size or 2000, recipe.image_size, seed=1)
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
    """The recipe's encoder: [B, in_channels, S, S] -> [B, out_dim]."""
    from clcourse.encoders import SmallCNN, resnet18_cifar

    if recipe.encoder == "small_cnn":
        return SmallCNN(recipe.in_channels, width=recipe.encoder_width, out_dim=128)
    if recipe.encoder == "resnet18_cifar":
        return resnet18_cifar(recipe.in_channels)
    if recipe.encoder == "resnet18":
        return _ResNet18(recipe.in_channels)
    raise ValueError(f"encoder must be 'small_cnn', 'resnet18_cifar' or 'resnet18', got {recipe.encoder!r}")


class _ResNet18(nn.Module):
    """torchvision's ResNet-18 with its 7x7 stride-2 stem, without classifier: [B, C, H, W] -> [B, 512].

    For 96 px STL-10, where the CIFAR stem (no downsampling) would cost 9x the compute.
    """

    def __init__(self, in_channels: int = 3):
        super().__init__()
        import torchvision

        net = torchvision.models.resnet18(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        net.fc = nn.Identity()
        self.net = net
        self.out_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, 512] pooled features."""
        return self.net(x)


def build_method(recipe: Recipe) -> nn.Module:
    """The recipe's method module (fresh weights from the global RNG; :func:`build` seeds it first)."""
    from clcourse.methods import MoCo, SimCLR, SupCon

    cls = {"simclr": SimCLR, "moco": MoCo, "supcon": SupCon}[recipe.method]
    return cls(build_encoder(recipe), projection_dim=recipe.projection_dim, hidden_dim=recipe.hidden_dim,
               head_layers=recipe.head_layers, temperature=recipe.temperature, **recipe.method_options)


def build_augment(recipe: Recipe):
    """The recipe's batched augmentation (:class:`~clcourse.augment.BatchedAugment`)."""
    from clcourse.augment import BatchedAugment

    preset = {"digits": BatchedAugment.digits, "simclr": BatchedAugment.simclr}[recipe.augment]
    return preset(recipe.image_size, **recipe.augment_options)


def shard_rows(batch_size: int, rank: int, world_size: int) -> slice:
    """The rows of a global batch that process ``rank`` of ``world_size`` trains on: a contiguous block.

    Contiguous blocks (rank 0 first) make the gathered batch of
    :func:`clcourse.distributed.gather_with_grad` the global batch in its order.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    if batch_size % world_size:
        raise ValueError(
            f"the batch size ({batch_size}) must be a multiple of the number of processes ({world_size}): "
            "every process trains on an equal share"
        )
    share = batch_size // world_size
    return slice(rank * share, (rank + 1) * share)


class _ViewAugment:
    """The loader's augmentation, adapted: float32 input, and optionally only one process's rows.

    With ``rows`` the parameters are drawn for the whole global batch (so the
    generator advances exactly as in a one-process run) and applied only to
    the process's rows: every process sees the same views a single process
    would, and none augments images it does not train on.
    """

    def __init__(self, augment, rows: slice | None = None):
        self.augment = augment
        self.rows = rows

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = x.float()
        if self.rows is None:
            return self.augment(x, generator=generator)
        params = self.augment.sample_params(len(x), generator)
        mine = {f.name: getattr(params, f.name)[self.rows] for f in dataclasses.fields(params)
                if isinstance(getattr(params, f.name), torch.Tensor)}
        return self.augment.apply(x[self.rows], dataclasses.replace(params, **mine))


class ShardedLoader:
    """A :class:`~clcourse.data.ViewLoader` over the global batch that yields one process's share.

    Every process iterates the same seeded global order (so the shards of a
    step are disjoint and together make the one-process batch); the views
    are already cut by :class:`_ViewAugment`, the labels are cut here.
    ``len`` and ``set_epoch`` are the wrapped loader's, so :func:`~clcourse.train.fit`
    resumes it reproducibly.
    """

    def __init__(self, loader, rows: slice):
        self.loader = loader
        self.rows = rows

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the next iteration (see ``ViewLoader.set_epoch``)."""
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for views, labels in self.loader:
            yield views, labels[self.rows]


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
            ``rank``'s share (``batch_size / world_size`` rows) of every global batch.

    Returns:
        the method (on ``device``), a loader of ``(views, labels)`` batches
        ([B, C, S, S] views on ``device``), and the labelled evaluation sets
        (:class:`~clcourse.data.ImageData` on the CPU).

    Raises:
        clcourse.data.DatasetNotFoundError: CIFAR-10 / STL-10 missing.
        ValueError: a batch size the data or the processes cannot share.
    """
    from clcourse.data import ViewLoader
    from clcourse.device import get_device

    device = get_device() if device is None else torch.device(device)
    rows = shard_rows(recipe.batch_size, rank, world_size) if world_size > 1 else None
    seed_everything(recipe.seed)
    train, eval_train, eval_test = load_datasets(recipe, root=root, download=download)
    method = build_method(recipe).to(device)
    augment = _ViewAugment(build_augment(recipe), rows)
    loader = ViewLoader(train, augment, batch_size=recipe.batch_size, seed=recipe.seed, device=device)
    if rows is not None:
        loader = ShardedLoader(loader, rows)
    return method, loader, eval_train, eval_test


def build_optimizer(recipe: Recipe, method: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimiser over the method's trainable parameters.

    SGD with momentum is what the CIFAR-10 references use ([LIGHTLY],
    [MOCO-DEMO], [SUPCON]); Adam is the quick profile's, robust at small
    batch sizes.  Frozen parameters (MoCo's key encoder) are left out.
    """
    params = [p for p in method.parameters() if p.requires_grad]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def fit_options(recipe: Recipe) -> dict[str, Any]:
    """Keyword arguments of :func:`clcourse.train.fit` that the recipe fixes: budget and schedule."""
    budget = {k: v for k, v in recipe.budget().items() if v is not None}
    if "epochs" in budget or "steps" in budget:
        budget = {k: int(v) for k, v in budget.items()}
    return dict(schedule=recipe.schedule, warmup=recipe.warmup, **budget)


# --------------------------------------------------------------------------- evaluation


def evaluate(recipe: Recipe, method: nn.Module, eval_train, eval_test, *, device=None,
             draws: int | None = None) -> dict[str, Any]:
    """kNN and linear-probe accuracy of the method's encoder (the head is dropped), and its effective rank.

    Args:
        recipe: fixes the kNN's k and temperature and the number of label draws.
        method: a trained method with ``.encoder``.
        eval_train, eval_test: labelled ImageData; features are extracted in eval mode.
        draws: label draws of the 1% and 10% probes (default ``recipe.probe_draws``);
            100% of the labels is one fit.

    Returns:
        ``{"knn": {"accuracy", "k", "temperature"}, "linear_probe": {"1%" | "10%" | "100%":
        {"mean", "std", "accuracies", "n_labels", "draws"}}, "effective_rank": float,
        "feature_dim": int}``; accuracies in [0, 1].
    """
    from clcourse.evaluate import effective_rank, extract_features, knn_accuracy, linear_probe

    draws = recipe.probe_draws if draws is None else draws
    train_x, train_y = extract_features(method.encoder, eval_train, device=device)
    test_x, test_y = extract_features(method.encoder, eval_test, device=device)
    knn = knn_accuracy(train_x, train_y, test_x, test_y, k=recipe.knn_k, temperature=recipe.knn_temperature)
    probes = {}
    for name, fraction in PROBE_FRACTIONS:
        result = linear_probe(train_x, train_y, test_x, test_y, label_fraction=fraction, seeds=range(draws))
        probes[name] = dict(mean=result.mean, std=result.std, accuracies=result.accuracies,
                            n_labels=result.n_labels, draws=len(result.accuracies))
    return {
        "knn": {"accuracy": knn, "k": recipe.knn_k, "temperature": recipe.knn_temperature},
        "linear_probe": probes,
        "effective_rank": effective_rank(test_x),
        "feature_dim": int(train_x.shape[1]),
    }


# --------------------------------------------------------------------------- data-parallel training


class _TrainingStep(nn.Module):
    """``forward(batch) = method.training_step(batch)``: what DistributedDataParallel wraps.

    DDP synchronises gradients only for outputs of its own ``forward``, so the
    whole training step has to run inside it.
    """

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, batch):
        """The wrapped method's loss of ``batch``."""
        return self.method.training_step(batch)


class DistributedMethod:
    """A method trained with DistributedDataParallel, in the shape :func:`~clcourse.train.fit` expects.

    - SimCLR and SupCon get their cross-process losses
      (:func:`~clcourse.distributed.distributed_nt_xent` /
      :func:`~clcourse.distributed.distributed_supcon`) through their ``loss_fn``,
      so negatives (and SupCon's positives) come from every process [SIMCLR].
    - Batch norm: with ``sync_batch_norm`` (default on CUDA for SimCLR and SupCon)
      statistics are computed over the global batch, SimCLR's "global BN" [SIMCLR]:
      with per-process statistics, a positive pair normalised on the same device
      can leak that it belongs together.  MoCo keeps its own guard, shuffle-BN,
      per process.  ``SyncBatchNorm`` runs on GPUs only; on CPUs each process
      normalises its share.
    - MoCo: its key encoder has no gradient, so DDP (which reduces only
      parameters that require one) needs no ``find_unused_parameters``; each
      process enqueues its own keys in its own queue (the reference gathers
      the keys of all GPUs first).
    - Buffers are not broadcast every step: BN's running statistics are read only
      in eval mode and MoCo's queue is per process; checkpoints come from rank 0.
    - ``training_step`` returns this process's loss for the backward, but its
      *value* is the mean over processes (one scalar all_reduce), so the
      history and the progress bar show the global loss: with the distributed
      losses that is the loss of the global batch.
    - ``state_dict``, ``to``, ``train``, ``on_step_end``... are the wrapped method's,
      so checkpoints load into a plain method.
    """

    def __init__(self, method: nn.Module, device: torch.device | str, *, sync_batch_norm: bool | None = None):
        from torch.nn.parallel import DistributedDataParallel

        from clcourse import distributed, losses

        if not distributed.is_distributed():
            raise ValueError(
                "DistributedMethod needs an initialised process group (clcourse.distributed.setup_from_env)"
            )
        device = torch.device(device)
        swaps = {losses.nt_xent: distributed.distributed_nt_xent, losses.supcon: distributed.distributed_supcon}
        loss_fn = getattr(method, "loss_fn", None)
        if loss_fn in swaps:
            method.loss_fn = swaps[loss_fn]
        if sync_batch_norm is None:
            sync_batch_norm = device.type == "cuda" and loss_fn in swaps
        if sync_batch_norm:
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
        self.method = method.to(device)
        self.sync_batch_norm = sync_batch_norm
        # Newer PyTorch renamed broadcast_buffers (syncing at init, which we want, is kept either way).
        no_buffer_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(
            DistributedDataParallel).parameters else "broadcast_buffers")
        self.ddp = DistributedDataParallel(
            _TrainingStep(self.method), device_ids=[device.index] if device.type == "cuda" else None,
            **{no_buffer_sync: False},
        )

    def training_step(self, batch) -> torch.Tensor:
        """This process's loss (for backward), carrying the mean over processes as its value."""
        loss = self.ddp(batch)
        mean = loss.detach().float().clone()
        dist.all_reduce(mean)
        mean /= dist.get_world_size()
        return loss + (mean.to(loss.dtype) - loss.detach())

    def __getattr__(self, name: str):
        # Only reached for names not set in __init__: everything else is the method's.
        if name in ("method", "ddp"):
            raise AttributeError(name)
        return getattr(self.method, name)


def images_per_second(recipe: Recipe, steps: int, seconds: float, n_views: int = 2) -> float:
    """Global training throughput: views of all processes per second of training."""
    return steps * recipe.batch_size * n_views / seconds if seconds > 0 else math.nan
