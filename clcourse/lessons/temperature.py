"""Lesson 03 helpers: SimCLR trained at several NT-Xent temperatures side by side, and what each learned.

`TemperatureSweep` trains one SimCLR model [1] per temperature *in lockstep*: every model starts
from the same initial weights and sees the same batches and the same augmentations, so the
temperature is the only difference between them (and a time budget gives each model the same
number of steps).

`fit_circle_head` then fits a small head with a 2-D output on a trained encoder's frozen features,
with NT-Xent at that encoder's temperature: its normalised outputs lie on the circle S^1, which is
how Wang & Isola [2] draw what the loss does to a distribution of features (they trained whole
encoders with 2-D outputs; a head on frozen features costs a second instead of a training run).

`measure` evaluates one model: alignment and uniformity [2] and tolerance [3] of its projections,
linear-probe and kNN accuracy of its encoder's features, a UMAP of them, and its circle;
`measure_pixels` gives the same figures for the raw pixels (a baseline). `spread_table` and
`separated` summarise several training seeds: mean +- std per row, and whether two rows differ by
more than their spread.

[1] Chen et al., A Simple Framework for Contrastive Learning of Visual Representations (SimCLR), ICML 2020.
[2] Wang & Isola, Understanding Contrastive Representation Learning through Alignment and Uniformity
    on the Hypersphere, ICML 2020.
[3] Wang & Liu, Understanding the Behaviour of Contrastive Loss, CVPR 2021.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clcourse.data import ImageData
from clcourse.encoders import ProjectionHead
from clcourse.evaluate import alignment_uniformity, extract_features, knn_accuracy, linear_probe
from clcourse.losses import nt_xent
from clcourse.methods.simclr import SimCLR
from clcourse.train import eval_mode
from clcourse.viz.temperature import TemperatureResult

__all__ = [
    "METRICS",
    "Scores",
    "TemperatureSweep",
    "fit_circle_head",
    "mean_std",
    "measure",
    "measure_pixels",
    "results_table",
    "separated",
    "spread_table",
    "tolerance",
]


class TemperatureSweep(nn.Module):
    """SimCLR models that differ only in their NT-Xent temperature, trained in lockstep [1].

    Args:
        encoder: the encoder all models start from (copied, so all begin with the same weights);
            maps [B, C, H, W] to [B, encoder.out_dim].
        temperatures: one model per temperature, t > 0, distinct.
        projection_dim: output size of SimCLR's projection head.

    Attributes:
        temperatures: the temperatures, in the given order.
        models: ``nn.ModuleList`` of :class:`~clcourse.methods.simclr.SimCLR`, one per temperature.
        losses: temperature -> the NT-Xent loss of that model at every training step.

    A batch is ``(views, labels)`` with two views [B, C, H, W]; labels are ignored. ``training_step``
    returns the sum of the models' losses: the models share no parameter, so each receives exactly
    the gradient of its own loss, as if it were trained alone on the same batches.
    """

    def __init__(self, encoder: nn.Module, temperatures: Sequence[float], projection_dim: int = 128) -> None:
        super().__init__()
        temperatures = [float(t) for t in temperatures]
        if not temperatures or min(temperatures) <= 0 or len(set(temperatures)) != len(temperatures):
            raise ValueError(f"temperatures must be distinct numbers > 0, got {temperatures}")
        self.temperatures = temperatures
        template = SimCLR(encoder, projection_dim=projection_dim, temperature=temperatures[0])
        self.models = nn.ModuleList()
        for t in temperatures:
            model = copy.deepcopy(template)
            model.temperature = t
            self.models.append(model)
        self.losses: dict[float, list[float]] = {t: [] for t in temperatures}

    def model(self, temperature: float) -> SimCLR:
        """The SimCLR model trained at ``temperature``."""
        for t, model in zip(self.temperatures, self.models):
            if abs(t - temperature) <= 1e-9 * t:
                return model
        raise ValueError(f"no model was trained at temperature {temperature!r}; there are {self.temperatures}")

    def training_step(self, batch) -> Tensor:
        """Sum over the models of each one's NT-Xent on the same two views [B, C, H, W]."""
        views, _ = batch
        if len(views) != 2:
            raise ValueError(f"TemperatureSweep expects 2 views per image, got {len(views)}")
        x = torch.cat(list(views))
        total = 0.0
        for t, model in zip(self.temperatures, self.models):
            z1, z2 = model.project(x).chunk(2)  # one pass over both views, as SimCLR does
            loss = nt_xent(z1, z2, t)
            total = total + loss
            self.losses[t].append(loss.item())
        return total


def fit_circle_head(
    encoder: nn.Module,
    data: ImageData,
    augment: Callable[..., Tensor],
    temperature: float,
    *,
    views: int = 8,
    steps: int = 500,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
) -> nn.Module:
    """Fit a head with a 2-D output on a frozen encoder with NT-Xent at ``temperature`` (for drawing on S^1 [2]).

    Args:
        encoder: maps [B, C, H, W] to [B, D]; frozen (eval mode, no gradient).
        data: the images [N, C, H, W] the encoder was trained on.
        augment: ``augment(x, generator=g)``, the training augmentation.
        views: augmented views of every image, encoded once; each step pairs two different ones.
        steps, batch_size, lr: Adam steps over batches of ``batch_size`` pairs.
        seed: seeds the views, the batches and the head's initial weights.

    Returns:
        the head ([B, D] -> [B, 2], a 2-layer MLP with batch norm, in eval mode) on the encoder's device.
        Its L2-normalised outputs are points on the circle S^1, arranged by NT-Xent at ``temperature``
        given the features this encoder learned.
    """
    if views < 2:
        raise ValueError(f"views must be >= 2 (a positive pair needs two), got {views}")
    device = next(encoder.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad(), eval_mode(encoder):
        images = data.images.to(device)
        features = torch.stack([_encode(encoder, augment(images, generator=generator)) for _ in range(views)])
    n = features.shape[1]
    batch_size = min(batch_size, n)
    with torch.random.fork_rng(devices=[]):  # the head's initial weights, without touching the global RNG
        torch.manual_seed(seed)
        head = ProjectionHead(features.shape[2], hidden_dim=128, out_dim=2).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    with torch.enable_grad():  # also when called under no_grad, as `measure` is
        for _ in range(steps):
            index = torch.randperm(n, generator=generator)[:batch_size].to(device)
            first = torch.randint(0, views, (batch_size,), generator=generator)
            second = (first + torch.randint(1, views, (batch_size,), generator=generator)) % views  # never first
            pairs = features[first.to(device), index], features[second.to(device), index]
            loss = nt_xent(head(pairs[0]), head(pairs[1]), temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return head.eval()


def _encode(encoder: nn.Module, images: Tensor, batch_size: int = 1024) -> Tensor:
    return torch.cat([encoder(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def tolerance(z: Tensor, labels: Tensor) -> float:
    """Tolerance (Wang & Liu [3]): mean cosine similarity of two different samples of the same class.

    Args:
        z: [N, D] embeddings (normalised inside).
        labels: [N] integer class labels; at least one class must have two samples.

    Returns:
        a float in [-1, 1]: high when the loss leaves semantically similar samples close together,
        low when it pushes them apart like any other negative.
    """
    if z.ndim != 2 or labels.shape != (z.shape[0],):
        raise ValueError(f"z must be [N, D] and labels [N], got {list(z.shape)} and {list(labels.shape)}")
    zn = F.normalize(z.float(), dim=1)
    labels = labels.to(zn.device)
    same = labels[:, None] == labels[None, :]
    same.fill_diagonal_(False)
    if not same.any():
        raise ValueError("tolerance needs at least one class with two samples")
    return float((zn @ zn.T)[same].mean())


@torch.no_grad()
def measure(
    sweep: TemperatureSweep,
    temperature: float,
    train: ImageData,
    test: ImageData,
    augment: Callable[..., Tensor],
    *,
    seed: int = 0,
    label_fraction: float = 0.1,
    max_points: int = 2000,
    umap: bool = True,
    circle_steps: int = 500,
) -> TemperatureResult:
    """Evaluate the model of ``sweep`` trained at ``temperature``.

    Args:
        train, test: images [N, C, H, W] with labels; probes fit on ``train``, everything is measured on ``test``.
        augment: ``augment(x, generator=g)`` making the two views for alignment (as in training).
        seed: seeds the views, so every temperature is measured on the same views.
        label_fraction: the linear probe's share of training labels (3 draws averaged).
        max_points: alignment, uniformity, tolerance, the circle and UMAP use at most this many test
            images (a fixed random subset): uniformity's pairwise terms grow as N^2.
        umap: fit a UMAP of the test features (seconds; the first fit in a process also compiles);
            without it the UMAP coordinates are zeros.
        circle_steps: training steps of the 2-D head (:func:`fit_circle_head`) whose outputs give the
            circle; 0 fits no head and returns zeros for the circle (for a run that is only scored).

    Returns:
        a :class:`~clcourse.viz.temperature.TemperatureResult`. Alignment, uniformity and tolerance are
        measured on the projections z = g(f(x)), the space where the loss and its temperature act [2, 3];
        accuracies and UMAP on the encoder's features f(x), the representation one keeps [1].
    """
    model = sweep.model(temperature)
    model.eval()
    circle = fit_circle_head(model.encoder, train, augment, temperature, seed=seed, steps=circle_steps) if circle_steps else None
    device = next(model.parameters()).device
    train_x, train_y = extract_features(model.encoder, train)
    test_x, test_y = extract_features(model.encoder, test)
    probe = linear_probe(train_x, train_y, test_x, test_y, label_fraction=label_fraction)
    knn = knn_accuracy(train_x, train_y, test_x, test_y)

    generator = torch.Generator().manual_seed(seed)
    subset = torch.randperm(len(test_x), generator=generator)[:max_points].sort().values
    images, labels = test.images[subset].to(device), test_y[subset]
    view1, view2 = augment(images, generator=generator), augment(images, generator=generator)
    geometry = alignment_uniformity(model.project(view1), model.project(view2))
    tol = tolerance(model.project(images), labels)
    features = test_x[subset]
    if circle is None:
        on_circle = np.zeros((len(features), 2), dtype=np.float32)
    else:
        on_circle = F.normalize(circle(features.to(device)).float(), dim=1).cpu().numpy()
    if umap:
        from clcourse.viz.projection import umap_2d

        xy = umap_2d(features, seed=seed)
    else:
        xy = np.zeros((len(features), 2), dtype=np.float32)
    return TemperatureResult(
        temperature=float(temperature),
        labels=labels.cpu().numpy(),
        umap=xy,
        circle=on_circle,
        alignment=geometry["alignment"],
        uniformity=geometry["uniformity"],
        tolerance=tol,
        linear_probe=probe.mean,
        knn=knn,
    )


@dataclass(frozen=True)
class Scores:
    """The figures :func:`measure` reports, for a baseline that has no temperature (see :func:`measure_pixels`).

    alignment and uniformity [2], tolerance [3]; linear_probe and knn are accuracies in [0, 1].
    """

    alignment: float
    uniformity: float
    tolerance: float
    linear_probe: float
    knn: float


@torch.no_grad()
def measure_pixels(
    train: ImageData,
    test: ImageData,
    augment: Callable[..., Tensor],
    *,
    seed: int = 0,
    label_fraction: float = 0.1,
    max_points: int = 2000,
) -> Scores:
    """:func:`measure`'s figures for the raw pixels, each image [C, H, W] flattened to one vector: a baseline.

    The same test subset, views and probe draws as :func:`measure` with the same ``seed``; alignment,
    uniformity and tolerance are taken on the L2-normalised pixel vectors (a different space from a
    model's projections: pixels are >= 0, so no two images have a negative cosine).
    """
    train_x, test_x = train.images.flatten(1).float(), test.images.flatten(1).float()
    probe = linear_probe(train_x, train.labels, test_x, test.labels, label_fraction=label_fraction)
    knn = knn_accuracy(train_x, train.labels, test_x, test.labels)
    generator = torch.Generator().manual_seed(seed)
    subset = torch.randperm(len(test_x), generator=generator)[:max_points].sort().values
    images, labels = test.images[subset], test.labels[subset]
    view1, view2 = augment(images, generator=generator), augment(images, generator=generator)
    geometry = alignment_uniformity(view1.flatten(1).float(), view2.flatten(1).float())
    return Scores(
        alignment=geometry["alignment"],
        uniformity=geometry["uniformity"],
        tolerance=tolerance(images.flatten(1), labels),
        linear_probe=probe.mean,
        knn=knn,
    )


def results_table(results: Sequence[TemperatureResult], final_loss: dict[float, float] | None = None) -> str:
    """A fixed-width table of the measurements, one row per temperature (accuracies in %)."""
    header = f"{'t':>5} | {'loss':>6} | {'alignment':>9} | {'uniformity':>10} | {'tolerance':>9} | {'probe':>6} | {'kNN':>6}"
    lines = [header, "-" * len(header)]
    for r in sorted(results, key=lambda r: r.temperature):
        loss = f"{final_loss[r.temperature]:6.3f}" if final_loss and r.temperature in final_loss else f"{'':>6}"
        lines.append(
            f"{r.temperature:>5g} | {loss} | {r.alignment:9.3f} | {r.uniformity:10.3f} | {r.tolerance:9.3f} | "
            f"{100 * r.linear_probe:5.1f}% | {100 * r.knn:5.1f}%"
        )
    return "\n".join(lines)


# The figures of a row, with how to print them: accuracies in % (also in :func:`mean_std`), the rest as measured.
METRICS = {"alignment": "{:.3f}", "uniformity": "{:.2f}", "tolerance": "{:.2f}", "linear_probe": "{:.1f}%", "knn": "{:.1f}%"}
_PERCENT = ("linear_probe", "knn")


def mean_std(runs: Sequence, metric: str) -> tuple[float, float]:
    """Mean and sample standard deviation of ``metric`` over ``runs`` (one result per training seed).

    Args:
        runs: objects with the attribute ``metric`` (:class:`~clcourse.viz.temperature.TemperatureResult`,
            :class:`Scores`); accuracies are returned in %.

    Returns:
        (mean, std); std is 0.0 for a single run.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    if len(runs) == 0:
        raise ValueError("runs must hold at least one result")
    scale = 100.0 if metric in _PERCENT else 1.0
    values = np.array([scale * getattr(run, metric) for run in runs], dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def spread_table(rows: Mapping[str, Sequence]) -> str:
    """A fixed-width table, one row per entry of ``rows`` (name -> its runs), of mean +- std over the runs.

    A row with a single run prints its values without a spread.
    """
    width = max(len(name) for name in rows)
    labels = {"linear_probe": "probe", "knn": "kNN"}
    header = f"{'':<{width}} | " + " | ".join(f"{labels.get(metric, metric):>15}" for metric in METRICS)
    lines = [header, "-" * len(header)]
    for name, runs in rows.items():
        cells = []
        for metric, fmt in METRICS.items():
            mean, std = mean_std(runs, metric)
            text = fmt.format(mean) if len(runs) == 1 else f"{fmt.format(mean).rstrip('%')} ± {fmt.format(std)}"
            cells.append(f"{text:>15}")
        lines.append(f"{name:<{width}} | " + " | ".join(cells))
    return "\n".join(lines)


def separated(a: Sequence, b: Sequence, metric: str) -> bool:
    """Whether the means of ``metric`` over runs ``a`` and ``b`` differ by more than the sum of their stds.

    A deliberately simple, conservative reading of "exceeds the spread" for a handful of seeds.
    """
    (mean_a, std_a), (mean_b, std_b) = mean_std(a, metric), mean_std(b, metric)
    return abs(mean_a - mean_b) > std_a + std_b
