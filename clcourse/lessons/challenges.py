"""Lesson 17 helpers: short training runs on the 8x8 digits, described as data and run side by side.

Every experiment of the lesson is a :class:`DigitsRun` (a method, its options, the augmentation, the data's
twist, a seed and a step budget); :func:`train_runs` trains a list of them in spawned worker processes, one
thread each, and returns what each run measured (:class:`RunResult`): its loss curve, collapse statistics over
training, the 10%-label linear probe of its frozen encoder and, when asked, the probe as Gaussian noise is added
to the images and the probe on another dataset (transfer: the 8x8 digits and grey 8x8 shapes). Results do
not depend on the number of workers: each run is seeded and runs on one thread.

The collapse statistics follow SimSiam [1] (section 4.1: the standard deviation of the l2-normalised output,
0 for a constant encoder and about 1/sqrt(d) for a spread one) and the effective rank of the features
(``clcourse.evaluate.effective_rank``: small when the features fill few directions). The variance term of
:class:`InvarianceLoss` is VICReg's [2] (its eq. 1, gamma = 1, epsilon = 1e-4).

The non-contrastive methods come with the ablations that should collapse: SimSiam without its stop-gradient [1],
BYOL [3] without its predictor (its table 5b) and with momentum 0 (the target is the online network itself, held
fixed by the stop-gradient), and Barlow Twins [4] with lambda 0 (the invariance term alone).

[1] Chen & He, Exploring Simple Siamese Representation Learning (SimSiam), CVPR 2021.
[2] Bardes, Ponce, LeCun, VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning,
    ICLR 2022.
[3] Grill et al., BYOL, NeurIPS 2020.
[4] Zbontar et al., Barlow Twins, ICML 2021.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clcourse.augment import BatchedAugment
from clcourse.data import ImageData, ViewLoader, load_digits, make_shapes
from clcourse.encoders import ProjectionHead, SmallCNN
from clcourse.evaluate import effective_rank, extract_features, linear_probe
from clcourse.finetune import Classifier
from clcourse.lessons.negatives import InBatchInfoNCE
from clcourse.losses import alignment
from clcourse.methods import BYOL, BarlowTwins, MoCo, SimCLR, SimSiam
from clcourse.methods.base import Method, views_and_labels
from clcourse.train import eval_mode, fit
from clcourse.workers import on_one_thread, run_in_workers

__all__ = [
    "METHODS",
    "DATASETS",
    "DigitsRun",
    "RunResult",
    "PositivesOnly",
    "InvarianceLoss",
    "variance_hinge",
    "collapse_statistics",
    "step_cost",
    "brightness_tagged",
    "grey_shapes",
    "load_dataset",
    "train_run",
    "train_runs",
]

METHODS = ("simclr", "moco", "simsiam", "simsiam_no_stop_gradient", "byol", "byol_no_predictor", "byol_zero_momentum",
           "barlow_twins", "barlow_twins_invariance_only", "positives_only", "invariance_variance", "debiased", "hard",
           "supervised")
PROJECTION_DIM = 64
DATASETS = ("digits", "shapes")
MONITORED = 512  # training images whose embeddings the collapse statistics are computed on


def variance_hinge(z: Tensor, gamma: float = 1.0, eps: float = 1e-4) -> Tensor:
    """VICReg's variance term [2]: the mean over dimensions of max(0, gamma - sqrt(Var(z_j) + eps)).

    z [N, D] with N >= 2 -> a scalar; 0 when every dimension's standard deviation reaches gamma, gamma for a
    constant embedding.
    """
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(f"z must be [N, D] with N >= 2 (a variance needs two samples), got {list(z.shape)}")
    std = torch.sqrt(z.float().var(dim=0) + eps)
    return F.relu(gamma - std).mean()


class PositivesOnly(Method):
    """NT-Xent without its negatives: the mean over pairs of ``2 - 2 cos(z1, z2)`` (``clcourse.losses.alignment``,
    alpha 2), the pull of the positive pair alone. Every image mapped to one direction minimises it: complete
    collapse. A batch is ``(views, labels)`` with two views [B, C, H, W]; labels are ignored.
    """

    def __init__(self, encoder: nn.Module, projection_dim: int = PROJECTION_DIM):
        head = ProjectionHead(encoder.out_dim, out_dim=projection_dim, num_layers=2)
        super().__init__(encoder, head, gather_distributed=None)

    def training_step(self, batch) -> Tensor:
        (x1, x2), _ = views_and_labels(batch, "PositivesOnly", n_views=2)
        return alignment(*self.project(torch.cat([x1, x2])).chunk(2))


class InvarianceLoss(Method):
    """Only positive pairs: the mean squared distance between the projections of two views (VICReg's invariance
    term [2]), and optionally VICReg's variance term, weighted by ``variance_weight``.

    With ``variance_weight = 0`` nothing stops every image from mapping to one point: a constant encoder
    minimises the loss (complete collapse). The variance term keeps each dimension spread, but not the
    dimensions apart (VICReg's covariance term does that; it is left out on purpose).

    A batch is ``(views, labels)`` with two views [B, C, H, W]; labels are ignored.
    """

    def __init__(self, encoder: nn.Module, projection_dim: int = PROJECTION_DIM, variance_weight: float = 0.0):
        if variance_weight < 0:
            raise ValueError(f"variance_weight must be >= 0, got {variance_weight}")
        head = ProjectionHead(encoder.out_dim, out_dim=projection_dim, num_layers=2)
        super().__init__(encoder, head, gather_distributed=None)
        self.variance_weight = variance_weight

    def training_step(self, batch) -> Tensor:
        (x1, x2), _ = views_and_labels(batch, "InvarianceLoss", n_views=2)
        z1, z2 = self.project(torch.cat([x1, x2])).chunk(2)
        loss = F.mse_loss(z1, z2, reduction="none").sum(dim=1).mean()
        if self.variance_weight:
            loss = loss + self.variance_weight * (variance_hinge(z1) + variance_hinge(z2))
        return loss


@dataclass(frozen=True)
class DigitsRun:
    """One short training run on the 8x8 digits.

    Attributes:
        method: one of :data:`METHODS`.
        seed: seeds the initial weights, the batches and the views.
        steps: the budget in optimiser steps.
        batch_size: images per step.
        augment: overrides of ``BatchedAugment.digits(8)`` (e.g. ``{"crop_scale": (1.0, 1.0)}``).
        options: keywords of the method (``temperature``, ``queue_size``, ``debiased_tau_plus``, ...).
        classes: train and evaluate on these digit classes only (None: all ten).
        tagged: multiply every image by its own brightness in [0.2, 1], drawn once per image, train and test
            alike: a cue that both views of an image share unless the pipeline jitters brightness.
        noise: standard deviations of Gaussian pixel noise at which to probe the frozen encoder as well.
        lr: Adam's learning rate (cosine schedule, weight decay 1e-4).
        data: what the run trains on, one of :data:`DATASETS`: the 8x8 digits or :func:`grey_shapes`.
        probe_on: other datasets of :data:`DATASETS` on which to probe the frozen encoder as well (transfer).
    """

    method: str
    seed: int = 0
    steps: int = 200
    batch_size: int = 256
    augment: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    classes: tuple[int, ...] | None = None
    tagged: bool = False
    noise: tuple[float, ...] = ()
    lr: float = 2e-3
    data: str = "digits"
    probe_on: tuple[str, ...] = ()

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        for name in (self.data, *self.probe_on):
            if name not in DATASETS:
                raise ValueError(f"data and probe_on must name datasets of {DATASETS}, got {name!r}")
        if (self.classes is not None or self.tagged) and self.data != "digits":
            raise ValueError("classes and tagged select and tag digits: use them with data='digits'")
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass
class RunResult:
    """What one :class:`DigitsRun` measured.

    Attributes:
        run: the run.
        step_loss: the training loss of every step.
        monitor_step: the steps after which the collapse statistics were taken (every epoch).
        output_std: SimSiam's statistic [1] at those steps: the mean over dimensions of the standard deviation of
            the l2-normalised projections of :data:`MONITORED` training images.
        rank: the effective rank of their encoder features at those steps.
        spectrum: the singular values of those centred features at the end, largest first, divided by their sum.
        probe: 10%-label linear-probe accuracy in % (mean over 5 label draws) of the frozen encoder.
        noise_probe: noise standard deviation -> probe accuracy in % (all labels) with that noise added to the
            training and test images.
        transfer_probe: dataset of ``run.probe_on`` -> its 10%-label probe in % (5 label draws) of the frozen
            encoder.
        seconds: wall time of the training.
    """

    run: DigitsRun
    step_loss: list[float]
    monitor_step: list[int]
    output_std: list[float]
    rank: list[float]
    spectrum: list[float]
    probe: float
    noise_probe: dict[float, float]
    transfer_probe: dict[str, float]
    seconds: float


def collapse_statistics(projections: Tensor, features: Tensor) -> tuple[float, float]:
    """(output std, effective rank): projections [N, D] -> the mean over dimensions of the standard deviation of
    the l2-normalised projections (0: complete collapse; about 1/sqrt(D) when spread [1]); features [N, F] ->
    their effective rank (1 up to min(N, F); small: dimensional collapse)."""
    if projections.dim() != 2 or projections.shape[0] < 2:
        raise ValueError(f"projections must be [N, D] with N >= 2, got {list(projections.shape)}")
    std = F.normalize(projections.float(), dim=1).std(dim=0).mean().item()
    return std, effective_rank(features)


def step_cost(method: nn.Module, batch, repeats: int = 3) -> tuple[float, float]:
    """(FLOPs, milliseconds) of one training step of ``method`` on ``batch``: forward, loss and backward.

    FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions, the
    bulk of the work; elementwise operations are not counted); the time is the median of ``repeats`` steps after
    one warm-up step, on the current thread count. Gradients are computed and dropped: no optimiser step.
    """
    from torch.utils.flop_counter import FlopCounterMode

    def step() -> None:
        method.zero_grad(set_to_none=True)
        method.training_step(batch).backward()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(1000 * (time.perf_counter() - start))
    method.zero_grad(set_to_none=True)
    return float(counter.get_total_flops()), sorted(times)[len(times) // 2]


def brightness_tagged(images: Tensor, seed: int, low: float = 0.2) -> Tensor:
    """Every image [N, C, H, W] multiplied by its own brightness, uniform in [low, 1], drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    scale = low + (1.0 - low) * torch.rand(len(images), 1, 1, 1, generator=generator)
    return images * scale


def grey_shapes(split: str = "train") -> ImageData:
    """``clcourse.data.make_shapes`` drawn at 8x8 and averaged to grey, as many as the digits of ``split`` (1,257
    train, 540 test; seeds 0 and 1): images [N, 1, 8, 8] in [0, 1], labels the 6 shapes. A second dataset for the
    digits' encoder, to measure transfer."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    shapes = make_shapes(len(load_digits(8, split=split)), 8, seed=int(split == "test"))
    return ImageData(shapes.images.mean(dim=1, keepdim=True), shapes.labels)


def load_dataset(name: str, split: str = "train") -> ImageData:
    """The dataset ``name`` of :data:`DATASETS` (8x8, one channel), its ``split`` (``"train"`` or ``"test"``)."""
    if name not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    return load_digits(8, split=split) if name == "digits" else grey_shapes(split)


def _data(run: DigitsRun) -> tuple[ImageData, ImageData]:
    train, test = load_dataset(run.data, "train"), load_dataset(run.data, "test")
    parts = []
    for split, data in (("train", train), ("test", test)):
        images, labels = data.images, data.labels
        if run.classes is not None:
            keep = torch.isin(labels, torch.tensor(run.classes))
            images, labels = images[keep], labels[keep]
        if run.tagged:
            images = brightness_tagged(images, seed=1000 + (split == "test"))
        parts.append(ImageData(images, labels))
    return parts[0], parts[1]


def _build(run: DigitsRun, num_classes: int) -> nn.Module:
    encoder = SmallCNN(1, width=32, out_dim=128, pool_size=2)
    options = dict(run.options)
    if run.method == "simclr":
        return SimCLR(encoder, projection_dim=PROJECTION_DIM, **{"temperature": 0.5, **options})
    if run.method == "moco":
        return MoCo(encoder, projection_dim=PROJECTION_DIM, **{"temperature": 0.2, "momentum": 0.99, **options})
    if run.method in ("simsiam", "simsiam_no_stop_gradient"):
        return SimSiam(encoder, projection_dim=PROJECTION_DIM, stop_gradient=run.method == "simsiam", **options)
    if run.method in ("byol", "byol_no_predictor", "byol_zero_momentum"):
        # [3]'s collapsing ablations: no predictor (its table 5b), no moving average (target = online, tau 0)
        ablation = {"byol_no_predictor": {"prediction_layers": 0}, "byol_zero_momentum": {"momentum": 0.0}}
        return BYOL(encoder, projection_dim=PROJECTION_DIM, **{**ablation.get(run.method, {}), **options})
    if run.method in ("barlow_twins", "barlow_twins_invariance_only"):
        # lambda 0 leaves the invariance term alone: nothing then keeps the dimensions apart [4]
        weight = 0.0 if run.method == "barlow_twins_invariance_only" else 5e-3
        return BarlowTwins(encoder, projection_dim=PROJECTION_DIM, **{"off_diagonal_weight": weight, **options})
    if run.method == "positives_only":
        return PositivesOnly(encoder, PROJECTION_DIM)
    if run.method == "invariance_variance":
        return InvarianceLoss(encoder, PROJECTION_DIM, **{"variance_weight": 25.0, **options})
    if run.method in ("debiased", "hard"):
        return InBatchInfoNCE(encoder, projection_dim=PROJECTION_DIM, **{"temperature": 0.5, **options})
    return Classifier(encoder, num_classes)


def _probe(encoder: nn.Module, train: ImageData, test: ImageData, fraction: float | None) -> float:
    train_x, train_y = extract_features(encoder, train)
    test_x, test_y = extract_features(encoder, test)
    seeds = range(5) if fraction is not None else (0,)
    return 100 * linear_probe(train_x, train_y, test_x, test_y, label_fraction=fraction, seeds=seeds).mean


def train_run(run: DigitsRun) -> RunResult:
    """Train ``run`` on one CPU thread and measure it (see :class:`RunResult`)."""
    return on_one_thread(_train_and_measure, run)


def _train_and_measure(run: DigitsRun) -> RunResult:
    train, test = _data(run)
    num_classes = int(train.labels.max()) + 1
    torch.manual_seed(run.seed)
    model = _build(run, num_classes)
    augment = BatchedAugment.digits(8, **run.augment)
    views = 1 if run.method == "supervised" else 2
    loader = ViewLoader(train, augment, batch_size=run.batch_size, n_views=views, seed=run.seed, device="cpu")
    monitored = train.images[:MONITORED]
    monitor_step, output_std, rank = [], [], []

    def monitor(epoch: int, method: nn.Module, history) -> None:
        with torch.no_grad(), eval_mode(method):
            features = method.encoder(monitored)
            head = method.head if run.method == "supervised" else method.projector
            std, r = collapse_statistics(head(features), features)
        monitor_step.append(history.steps)
        output_std.append(std)
        rank.append(r)

    start = time.perf_counter()
    history = fit(model, loader, steps=run.steps, lr=run.lr, weight_decay=1e-4, schedule="cosine", device="cpu",
                  progress=False, channels_last=True, on_epoch_end=monitor)
    seconds = time.perf_counter() - start
    with torch.no_grad(), eval_mode(model):
        features = model.encoder(monitored).double()
    singular = torch.linalg.svdvals(features - features.mean(dim=0))
    spectrum = (singular / singular.sum()).tolist()
    probe = _probe(model.encoder, train, test, 0.1)
    noise_probe = {}
    for sigma in run.noise:
        generator = torch.Generator().manual_seed(2000)
        noisy = [ImageData(d.images + sigma * torch.randn(d.images.shape, generator=generator), d.labels)
                 for d in (train, test)]
        noise_probe[sigma] = _probe(model.encoder, *noisy, None)
    transfer_probe = {name: _probe(model.encoder, load_dataset(name, "train"), load_dataset(name, "test"), 0.1)
                      for name in run.probe_on}
    return RunResult(run, history.step_loss, monitor_step, output_std, rank, spectrum, probe, noise_probe,
                     transfer_probe, seconds)


def train_runs(runs: Sequence[DigitsRun], workers: int | None = None, progress: bool = True) -> list[RunResult]:
    """Train every run, ``workers`` at a time in spawned processes (one thread each); results in order.

    ``workers``: default one per usable CPU (at most one per run); 1 trains here, one run after another.
    """
    runs = list(runs)
    if not runs or not all(isinstance(run, DigitsRun) for run in runs):
        raise ValueError(f"runs must be a non-empty sequence of DigitsRun, got {runs!r}")
    return run_in_workers(_train_and_measure, runs, workers, cost=lambda run: run.steps * run.batch_size,
                          progress=progress)
