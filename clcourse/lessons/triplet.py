"""Helpers for lesson 05 (triplet loss): where negatives fall, what each mining strategy picks,
and a train-then-evaluate run that records the signs of collapse.

Vocabulary of FaceNet [1] for a negative n of a positive pair (a, p) with margin m:

- hard:      d(a, n) <= d(a, p)              (the triplet is violated: loss >= m);
- semi-hard: d(a, p) < d(a, n) < d(a, p) + m (ordered correctly but inside the margin: 0 < loss < m);
- easy:      d(a, n) >= d(a, p) + m          (zero loss, zero gradient).

[1] Schroff, Kalenichenko, Philbin. FaceNet: A Unified Embedding for Face Recognition and
    Clustering. CVPR 2015.
[2] Hermans, Beyer, Leibe. In Defense of the Triplet Loss for Person Re-Identification. 2017.
[3] Roy & Vetterli. The effective rank: a measure of effective dimensionality. EUSIPCO 2007.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle
from torch import nn

from clcourse.data import ViewLoader
from clcourse.evaluate import ProbeResult, effective_rank, extract_features, knn_accuracy, linear_probe
from clcourse.losses import mine_triplets, pairwise_distance
from clcourse.methods.triplet import spread
from clcourse.train import History, fit

REGIONS = ("hard", "semi-hard", "easy")
NOT_A_NEGATIVE = -1
REGION_COLORS = {"hard": "#d62728", "semi-hard": "#ff7f0e", "easy": "#2ca02c"}


def negative_regions(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    anchor: int,
    positive: int,
    margin: float = 0.2,
    distance: str = "euclidean",
) -> torch.Tensor:
    """Classify every point as a negative of the pair (anchor, positive) [1].

    Shapes: embeddings [N, D] (L2-normalised inside, as the losses do), labels [N] integer;
    returns int64 [N]: 0 hard, 1 semi-hard, 2 easy (indices into `REGIONS`), and
    `NOT_A_NEGATIVE` (-1) for points with the anchor's label.
    """
    n = embeddings.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape [{n}], got {list(labels.shape)}")
    for name, i in (("anchor", anchor), ("positive", positive)):
        if not 0 <= i < n:
            raise ValueError(f"{name} must index one of the {n} embeddings, got {i}")
    if anchor == positive or labels[anchor] != labels[positive]:
        raise ValueError(f"positive ({positive}) must be another point with the anchor's ({anchor}) label")
    dist = pairwise_distance(embeddings, distance)
    d_ap, d_an = dist[anchor, positive], dist[anchor]
    region = torch.full((n,), 2, dtype=torch.long)
    region[d_an < d_ap + margin] = 1
    region[d_an <= d_ap] = 0
    region[labels == labels[anchor]] = NOT_A_NEGATIVE
    return region


def toy_circle_embedding(n_per_class: int = 7, n_classes: int = 3, angle_std: float = 0.45, seed: int = 0):
    """A toy 2-D embedding on the unit circle: classes centred at evenly spaced angles, each angle
    drawn with standard deviation `angle_std` (radians) around its class centre.

    Returns points float32 [n_classes * n_per_class, 2] (unit vectors, so what the losses see
    after their L2 normalisation) and labels int64 [n_classes * n_per_class].
    """
    g = torch.Generator().manual_seed(seed)
    centres = torch.arange(n_classes) * (2 * math.pi / n_classes)
    angles = centres.repeat_interleave(n_per_class) + angle_std * torch.randn(n_classes * n_per_class, generator=g)
    points = torch.stack([angles.cos(), angles.sin()], dim=1)
    return points, torch.arange(n_classes).repeat_interleave(n_per_class)


def plot_mining(
    points: torch.Tensor,
    labels: torch.Tensor,
    anchor: int,
    margin: float = 0.2,
    strategies: tuple[str, ...] = ("all", "semi-hard", "hard"),
) -> Figure:
    """Which negatives each strategy of `mine_triplets` pairs with one anchor of a 2-D toy embedding.

    Shapes: points [N, 2] (L2-normalised, so drawn on the unit circle), labels [N]. The positive
    shown is the anchor's *farthest* one, p, the one batch-hard uses; the shading around the
    anchor marks the negatives' regions for the pair (a, p): red disc hard, d(a, n) <= d(a, p);
    orange ring semi-hard, up to d(a, p) + margin; outside easy. One panel per strategy; a line
    joins the anchor to every negative that the strategy puts in a triplet (a, p, n), coloured
    by its region. Euclidean distance, as drawn. Returns the figure.
    """
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be [N, 2] (a 2-D toy embedding), got {list(points.shape)}")
    x = F.normalize(points.float(), dim=1)
    dist = pairwise_distance(x)
    positives = ((labels == labels[anchor]) & (torch.arange(len(labels)) != anchor)).nonzero().squeeze(1)
    if len(positives) == 0:
        raise ValueError(f"anchor {anchor} has no positive (no other point with label {int(labels[anchor])})")
    positive = int(positives[dist[anchor, positives].argmax()])
    region = negative_regions(x, labels, anchor, positive, margin)
    d_ap = float(dist[anchor, positive])
    xy = x.numpy()

    fig, axes = plt.subplots(1, len(strategies), figsize=(4.0 * len(strategies), 4.4))
    for ax, strategy in zip(np.atleast_1d(axes), strategies):
        a, p, n = mine_triplets(x, labels, strategy, margin)
        chosen = n[(a == anchor) & (p == positive)].tolist()
        ax.add_patch(Circle(xy[anchor], d_ap + margin, color=REGION_COLORS["semi-hard"], alpha=0.15, lw=0))
        ax.add_patch(Circle(xy[anchor], d_ap, color=REGION_COLORS["hard"], alpha=0.15, lw=0))
        ax.add_patch(Circle((0, 0), 1.0, fill=False, color="0.6", lw=0.8))
        for j in chosen:
            ax.plot(*xy[[anchor, j]].T, color=REGION_COLORS[REGIONS[region[j]]], lw=1.5, zorder=1)
        for c in labels.unique().tolist():
            idx = labels == c
            ax.scatter(xy[idx, 0], xy[idx, 1], s=40, marker="os^Dv"[c % 5], color=f"C{c}",
                       edgecolor="k", lw=0.5, zorder=2, label=f"class {c}")
        ax.scatter(*xy[anchor], s=320, marker="*", color=f"C{int(labels[anchor])}", edgecolor="k", zorder=3)
        ax.scatter(*xy[positive], s=150, facecolor="none", edgecolor="k", lw=1.5, zorder=3)
        counts = [sum(REGIONS[region[j]] == r for j in chosen) for r in REGIONS]
        ax.set_title(f"{strategy}: {len(chosen)} triplet{'s' * (len(chosen) != 1)} (a, p, n)\n"
                     + ", ".join(f"{k} {r}" for k, r in zip(counts, REGIONS)), fontsize=10)
        ax.set_aspect("equal")
        ax.set_xlim(-1.35, 1.35)
        ax.set_ylim(-1.35, 1.35)
        ax.set_xticks([])
        ax.set_yticks([])
    first = np.atleast_1d(axes)[0]
    handles, _ = first.get_legend_handles_labels()
    handles += [Line2D([], [], color=REGION_COLORS[r], lw=2, label=f"{r} negative") for r in REGIONS]
    fig.legend(handles=handles, loc="lower center", fontsize=8, frameon=False, ncols=len(handles))
    fig.suptitle(f"anchor a = star, its farthest positive p = circled, d(a, p) = {d_ap:.2f}, margin m = {margin}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.94))
    return fig


@dataclass
class Run:
    """A trained method and what was measured on it.

    Attributes:
        name: a label for tables and plots.
        method: the trained method (has ``.encoder``).
        history: the train loop's :class:`~clcourse.train.History`.
        probes: linear-probe results by label fraction, e.g. ``{0.01: ProbeResult, 0.1: ...}``.
        knn: weighted kNN accuracy (all labels) in [0, 1].
        curve: one dict per epoch: ``step``, ``seconds``, ``rank_features`` (effective rank [3]
            of the encoder's features of the tracking images), ``rank_embedding`` (of their
            L2-normalised embeddings, after the head) and ``spread`` (their mean pairwise
            Euclidean distance on the unit sphere; 0 when all embeddings coincide); the first
            entry is before training (step 0).
        snapshots: step -> L2-normalised embeddings [N, D] of the tracking images at that step
            (see `embed`: batch statistics, as in training; step 0 is before training), for the
            steps asked for.
        seconds: wall-clock seconds of training and evaluation together.
    """

    name: str
    method: nn.Module | None
    history: History
    probes: dict[float, ProbeResult] = field(default_factory=dict)
    knn: float = float("nan")
    curve: list[dict[str, float]] = field(default_factory=list)
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)
    seconds: float = float("nan")

    @property
    def ms_per_step(self) -> float:
        """Mean wall-clock milliseconds per training step (the tracking included), nan untrained."""
        steps = self.history.steps
        return 1000 * self.history.step_time[-1] / steps if steps else float("nan")


@torch.no_grad()
def embedding_geometry(method: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Effective ranks [3] of features and embeddings of images [N, C, H, W], and the embeddings' spread.

    The method needs ``.encoder`` and, for the embedding, ``.projector`` (else the features are
    the embedding). Runs in eval mode (batch norm with running statistics).
    """
    features, _ = extract_features(method.encoder, images)
    projector = getattr(method, "projector", None)
    embedding = features if projector is None else extract_features(projector, features, max(1, len(features)))[0]
    return {
        "rank_features": effective_rank(features),
        "rank_embedding": effective_rank(F.normalize(embedding, dim=1)),
        "spread": spread(embedding),
    }


@torch.no_grad()
def embed(method: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The L2-normalised embeddings [N, D] that the loss sees, of images [N, C, H, W] (one batch), on the CPU.

    Encoder then ``.projector`` (if any) in *training* mode, batch norm normalising with the
    statistics of these images as it does with a training batch, on a copy of the method, so
    the method's running statistics are untouched. (Eval mode would use the running statistics,
    which lag far behind in the first steps: an early snapshot would not show what the loss sees.)
    """
    model = copy.deepcopy(method).train()
    first = next(model.parameters(), None)
    images = images.to(first.device) if first is not None else images
    projector = getattr(model, "projector", None)
    z = model.encoder(images)
    if projector is not None:
        z = projector(z)
    return F.normalize(z.float(), dim=1).cpu()


def train_and_evaluate(
    name: str,
    method: nn.Module,
    train,
    test,
    augment,
    *,
    budget: dict | None,
    lr: float = 2e-3,
    weight_decay: float = 1e-6,
    batch_size: int = 256,
    seed: int = 0,
    device=None,
    channels_last: bool | None = None,
    fractions: tuple[float, ...] = (0.01, 0.1),
    probe_seeds=range(5),
    track_images: int = 512,
    schedule: str = "cosine",
    snapshot_steps: tuple[int, ...] = (),
) -> Run:
    """Train ``method`` on views of ``train`` for ``budget`` (``fit``'s epochs/steps/seconds), then evaluate.

    Args:
        train, test: `ImageData` (images [N, C, H, W], labels [N]).
        augment: a batched augmentation, e.g. ``BatchedAugment.digits(16)``.
        budget: e.g. ``dict(seconds=12)`` or ``dict(epochs=200)``; None evaluates the method
            untrained (a baseline).
        track_images: after every epoch, `embedding_geometry` of this many test images is
            recorded in ``Run.curve`` (the time it takes counts in a seconds budget, the same
            for every method); 0 to skip.
        fractions, probe_seeds: linear probes on these label fractions (none: skip the probes),
            one label draw per seed.
        snapshot_steps: after each of these optimiser steps (0: before training) the `embed`
            embeddings of the tracking images are kept in ``Run.snapshots`` (their time counts in
            a seconds budget).
        weight_decay, channels_last, schedule, lr: passed to :func:`clcourse.train.fit`.

    Returns:
        a :class:`Run` with the probes and the kNN accuracy of the encoder's features.
    """
    tracked = test.images[:track_images]
    run = Run(name, method, History())

    def record(epoch: int, m: nn.Module, history: History) -> None:
        run.curve.append({"step": history.steps, "seconds": history.step_time[-1], **embedding_geometry(m, tracked)})

    if snapshot_steps and not track_images:
        raise ValueError("snapshot_steps needs track_images > 0: the snapshots embed the tracking images")
    steps_done = 0

    def snapshot() -> None:
        # fit calls method.on_step_end() after every optimiser step; we count the steps there
        nonlocal steps_done
        steps_done += 1
        if steps_done in snapshot_steps:
            run.snapshots[steps_done] = embed(method, tracked)

    start = time.perf_counter()
    if track_images:
        run.curve.append({"step": 0, "seconds": 0.0, **embedding_geometry(method, tracked)})
    if 0 in snapshot_steps:
        run.snapshots[0] = embed(method, tracked)
    if budget is not None:
        loader = ViewLoader(train, augment, batch_size=batch_size, seed=seed, device=device)
        own_hook = getattr(method, "on_step_end", None)
        if snapshot_steps:
            # an instance attribute shadows the method's own hook for this run only; it is called too
            method.on_step_end = (lambda: (own_hook(), snapshot())) if own_hook else snapshot
        try:
            run.history = fit(method, loader, lr=lr, weight_decay=weight_decay, schedule=schedule, device=device,
                              channels_last=channels_last, on_epoch_end=record if track_images else None,
                              progress=False, **budget)
        finally:
            if snapshot_steps:
                del method.on_step_end
    train_x, train_y = extract_features(method.encoder, train)
    test_x, test_y = extract_features(method.encoder, test)
    run.probes = {f: linear_probe(train_x, train_y, test_x, test_y, label_fraction=f, seeds=probe_seeds)
                  for f in fractions}
    run.knn = knn_accuracy(train_x, train_y, test_x, test_y)
    run.seconds = time.perf_counter() - start
    return run


def pixel_baseline(
    train, test, fractions: tuple[float, ...] = (0.01, 0.1), probe_seeds=range(5), name: str = "raw pixels"
) -> Run:
    """The probes and the kNN classifier on the flattened pixels of `ImageData` train / test (no encoder)."""
    train_x, test_x = train.images.flatten(1), test.images.flatten(1)
    probes = {f: linear_probe(train_x, train.labels, test_x, test.labels, label_fraction=f, seeds=probe_seeds)
              for f in fractions}
    return Run(name, None, History(), probes, knn_accuracy(train_x, train.labels, test_x, test.labels))


def results_table(runs: list[Run]) -> str:
    """A text table: steps, ms per step, linear probes (mean ± std over label draws), kNN, effective ranks at the end.

    "rank f" / "rank z": effective rank [3] of the encoder's features / of the L2-normalised
    embeddings of the tracking images, after training ("-" where not measured).
    """
    fractions = sorted({f for r in runs for f in r.probes})
    head = f"{'method':<30} {'steps':>5} {'ms/step':>7} " + " ".join(f"{f'probe {100 * f:g}%':>13}" for f in fractions)
    head += f" {'kNN':>6} {'rank f':>7} {'rank z':>7}"
    lines = [head, "-" * len(head)]
    for r in runs:
        probes = " ".join(f"{100 * r.probes[f].mean:6.1f} ± {100 * r.probes[f].std:4.1f}" if f in r.probes
                          else f"{'-':>13}" for f in fractions)
        steps = "-" if r.method is None else str(r.history.steps)
        ms = f"{r.ms_per_step:7.0f}" if r.history.steps else f"{'-':>7}"
        ranks = (f"{r.curve[-1]['rank_features']:7.1f} {r.curve[-1]['rank_embedding']:7.1f}" if r.curve
                 else f"{'-':>7} {'-':>7}")
        lines.append(f"{r.name:<30} {steps:>5} {ms} {probes} {100 * r.knn:6.1f} {ranks}")
    return "\n".join(lines)


@dataclass
class SeedSummary:
    """One method over several training seeds (each seed: its own weights, views and batches).

    Attributes:
        name: the method's label.
        seeds: how many training runs.
        probes: label fraction -> (mean, sample std) over the runs of each run's mean accuracy
            over its label draws, in [0, 1]; every run draws the same labelled images, so the
            std is the spread of *training*, not of the draws.
        knn: (mean, sample std) of the kNN accuracy.
        ms_per_step: mean over the runs.
    """

    name: str
    seeds: int  # 0: a baseline without training (raw pixels), shown without a spread
    probes: dict[float, tuple[float, float]]
    knn: tuple[float, float]
    ms_per_step: float


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise(name: str, runs: list[Run]) -> SeedSummary:
    """A :class:`SeedSummary` of ``runs``, the same method trained with different seeds (at least one run)."""
    if not runs:
        raise ValueError(f"summarise needs at least one run of {name!r}")
    fractions = set(runs[0].probes)
    if any(set(r.probes) != fractions for r in runs):
        raise ValueError(f"the runs of {name!r} must have probes on the same label fractions")
    trained = sum(r.method is not None for r in runs)
    return SeedSummary(
        name, trained, {f: _mean_std([r.probes[f].mean for r in runs]) for f in sorted(fractions)},
        _mean_std([r.knn for r in runs]), float(np.mean([r.ms_per_step for r in runs])),
    )


def seeds_table(summaries: list[SeedSummary]) -> str:
    """A text table of :class:`SeedSummary` rows: accuracies in %, mean ± sample std over training seeds."""
    fractions = sorted({f for s in summaries for f in s.probes})
    head = f"{'method':<30} {'seeds':>5} " + " ".join(f"{f'probe {100 * f:g}%':>13}" for f in fractions)
    head += f" {'kNN':>13}"
    lines = [head, "-" * len(head)]
    for s in summaries:
        cells = [_mean_std_cell(s.probes[f], s.seeds > 0) if f in s.probes else f"{'-':>13}" for f in fractions]
        cells.append(_mean_std_cell(s.knn, s.seeds > 0))
        lines.append(f"{s.name:<30} {s.seeds if s.seeds else '-':>5} " + " ".join(cells))
    return "\n".join(lines)


def _mean_std_cell(mean_std: tuple[float, float], with_std: bool) -> str:
    mean, std = mean_std
    return f"{100 * mean:6.1f} ± {100 * std:4.1f}" if with_std else f"{100 * mean:6.1f}{'':7}"


def _tail_mean(values: list[float], n: int = 5) -> float:
    return float(np.mean(values[-n:]))


def collapse_signals(run: Run, margin: float) -> dict[str, float]:
    """The collapse signals of a triplet run, at its first step and at its end (means of the last 5 steps).

    Keys: ``loss_over_margin`` (the loss at the end / m: 1 = every mined triplet costs exactly m,
    the value of a collapsed embedding), ``zero_first`` / ``zero_end`` (fraction of the batch's
    triplets with zero loss), ``spread_first`` / ``spread_end`` (mean distance between the
    batch's embeddings), ``rank_features_first`` / ``_end`` and ``rank_embedding_first`` /
    ``_end`` (effective ranks [3] of the tracking images before and after training) and ``knn``.
    The run's method needs ``stats`` (a `clcourse.methods.triplet.Triplet`) and the run a ``curve``.
    """
    stats, curve = run.method.stats, run.curve
    if not stats or not curve:
        raise ValueError(f"run {run.name!r} has no training stats or no curve: train it with track_images > 0")
    zero = [s.zero_loss_fraction for s in stats]
    spreads = [s.mean_distance for s in stats]
    return {
        "loss_over_margin": _tail_mean([s.loss for s in stats]) / margin,
        "zero_first": zero[0], "zero_end": _tail_mean(zero),
        "spread_first": spreads[0], "spread_end": _tail_mean(spreads),
        "rank_features_first": curve[0]["rank_features"], "rank_features_end": curve[-1]["rank_features"],
        "rank_embedding_first": curve[0]["rank_embedding"], "rank_embedding_end": curve[-1]["rank_embedding"],
        "knn": run.knn,
    }


def signals_table(runs: list[Run], margin: float) -> str:
    """A text table of the `collapse_signals` of triplet runs, from the first step to the end of training.

    Columns: the loss at the end relative to the margin, the fraction of zero-loss triplets in
    the batch and the spread of the batch's embeddings (mean distance) at the first step and at
    the end, the effective rank [3] of the features and of the normalised embeddings of the
    tracking images before and after training, and the kNN accuracy.
    """
    head = (f"{'run':<22} {'loss/m':>6} {'zero-loss fraction':>18} {'spread':>13} "
            f"{'rank features':>14} {'rank embedding':>15} {'kNN':>6}")
    lines = [head, "-" * len(head)]
    for r in runs:
        c = collapse_signals(r, margin)
        lines.append(
            f"{r.name:<22} {c['loss_over_margin']:6.2f} "
            f"{c['zero_first']:8.2f} -> {c['zero_end']:4.2f} {c['spread_first']:5.2f} -> {c['spread_end']:4.2f} "
            f"{c['rank_features_first']:6.1f} -> {c['rank_features_end']:4.1f} "
            f"{c['rank_embedding_first']:7.1f} -> {c['rank_embedding_end']:4.1f} {100 * c['knn']:6.1f}"
        )
    return "\n".join(lines)


def plot_training_signals(runs: list[Run], margin: float) -> Figure:
    """Four panels of triplet runs: loss, zero-loss fraction and spread of the batch per step, effective rank per epoch.

    Runs need ``method.stats`` (a `clcourse.methods.triplet.Triplet`) and a ``curve``. A dotted
    line marks the margin on the loss panel: a collapsed embedding (all points equal) costs
    exactly the margin on every triplet. The rank panel shows the encoder's features (solid)
    and the L2-normalised embeddings (dashed) of the tracking images.
    """
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    for k, r in enumerate(runs):
        stats = r.method.stats
        steps = np.arange(1, len(stats) + 1)
        color = f"C{k}"
        axes[0].plot(steps, [s.loss for s in stats], color=color, label=r.name)
        axes[1].plot(steps, [s.zero_loss_fraction for s in stats], color=color)
        axes[2].plot(steps, [s.mean_distance for s in stats], color=color)
        curve_steps = [c["step"] for c in r.curve]
        axes[3].plot(curve_steps, [c["rank_features"] for c in r.curve], color=color)
        axes[3].plot(curve_steps, [c["rank_embedding"] for c in r.curve], color=color, ls="--")
    axes[0].axhline(margin, color="gray", ls=":", label="margin m")
    axes[0].set(xlabel="step", ylabel="triplet loss", title="loss on the mined triplets", ylim=(0, None))
    axes[1].set(xlabel="step", ylabel="fraction", title="zero-loss triplets in the batch", ylim=(-0.02, 1.02))
    axes[2].set(xlabel="step", ylabel="mean distance", title="spread of the batch's embeddings", ylim=(0, None))
    axes[3].set(xlabel="step", ylabel="effective rank", title="effective rank: features (—), embedding (--)",
                ylim=(0, None))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def pca_2d(z: torch.Tensor) -> np.ndarray:
    """The first two principal components of embeddings z [N, D] (N >= 2): coordinates [N, 2] in z's own units.

    Unlike UMAP, which lays out every input at a similar size, PCA keeps the scale: a cloud that
    shrinks on the sphere shrinks in the picture. Each component's sign is fixed (its largest
    loading positive), so that snapshots of one run do not flip at random.
    """
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"z must be [N, D] with N >= 2, got {list(z.shape)}")
    centred = z.detach().double().cpu() - z.detach().double().cpu().mean(dim=0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    components = vh[:2]
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
    xy = centred @ (components * signs).T
    if xy.shape[1] < 2:  # D == 1: a second axis of zeros
        xy = torch.cat([xy, torch.zeros_like(xy)], dim=1)
    return xy.float().numpy()


def plot_snapshots(runs: list[Run], labels: torch.Tensor, limit: float | None = None) -> Figure:
    """A grid of the runs' embedding snapshots: one row per run, one column per step, all at one scale.

    Each panel is `pca_2d` of a snapshot (the L2-normalised embeddings of the tracking images),
    coloured by ``labels`` [N], titled with the step and the snapshot's `spread`. Every panel
    has the same axes, ``[-limit, limit]`` in units of distance on the unit sphere (default: the
    largest coordinate of all panels), so a shrinking cloud looks smaller. Returns the figure.
    """
    steps = sorted(runs[0].snapshots) if runs else []
    if not steps or any(sorted(r.snapshots) != steps for r in runs):
        raise ValueError("every run needs snapshots at the same steps (train_and_evaluate(..., snapshot_steps=...))")
    xy = {(r.name, k): pca_2d(r.snapshots[k]) for r in runs for k in steps}
    if limit is None:
        limit = 1.05 * max(float(np.abs(v).max()) for v in xy.values())
    fig, axes = plt.subplots(len(runs), len(steps), figsize=(2.3 * len(steps), 2.6 * len(runs) + 0.6), squeeze=False,
                             layout="constrained")
    y = np.asarray(labels)
    for row, r in zip(axes, runs):
        for ax, k in zip(row, steps):
            points = xy[(r.name, k)]
            ax.scatter(points[:, 0], points[:, 1], c=y, cmap="tab10", vmin=-0.5, vmax=9.5, s=5, linewidths=0)
            ax.set(xlim=(-limit, limit), ylim=(-limit, limit), xticks=[], yticks=[], aspect="equal")
            ax.set_title(f"step {k}: spread {spread(r.snapshots[k]):.2f}", fontsize=9)
        row[0].set_ylabel(r.name, fontsize=10)
    handles = [Line2D([], [], ls="", marker="o", color=plt.get_cmap("tab10")(c), label=str(c)) for c in range(10)]
    fig.legend(handles=handles, loc="outside lower center", ncols=10, fontsize=8, frameon=False, title="digit",
               title_fontsize=8)
    fig.suptitle(f"2 principal components of the normalised embeddings, every panel on the same scale "
                 f"(±{limit:.2f})", fontsize=10)
    return fig
