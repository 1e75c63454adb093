"""Lesson 02 (encoders and heads): what the projection head throws away.

The lesson's experiment: :func:`compare_h_z` measures the representation h = f(x) and the
projection z = g(h) of SimCLR-style models with linear probes, kNN and the effective rank, and
optionally how well the *applied augmentation* (rotation angle, crop area, ...) can be read off
each (:func:`clcourse.evaluate.transformation_probe` on views from
:func:`clcourse.augment.augmented_views`): the experiment of [1] (section 4.2, table 3) that
shows z = g(h) discards information h still has. :func:`format_reports` prints its results;
:func:`clcourse.viz.reports.plot_reports` draws them. The encoder inspection the lesson also
uses lives in :mod:`clcourse.inspection`.

[1] Chen et al., A Simple Framework for Contrastive Learning of Visual Representations
    (SimCLR), ICML 2020.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from clcourse.evaluate import (
    ProbeResult,
    effective_rank,
    head_features,
    knn_accuracy,
    linear_probe,
    transformation_probe,
)

__all__ = ["RepresentationReport", "compare_h_z", "format_reports"]


@dataclass
class RepresentationReport:
    """How good one set of frozen features is (a row of :func:`compare_h_z`).

    Attributes:
        name: e.g. ``"h"`` or ``"z"``.
        dim: feature size.
        probes: label fraction (e.g. ``0.01``) -> linear-probe :class:`ProbeResult` over label draws.
        knn: weighted kNN accuracy with all training labels, in [0, 1].
        rank: effective rank of the training features (1 = collapsed to a line).
        transforms: augmentation parameter -> R^2 of a linear regression predicting it (when measured).
    """

    name: str
    dim: int
    probes: dict[float, ProbeResult]
    knn: float
    rank: float
    transforms: dict[str, float] = field(default_factory=dict)


def compare_h_z(
    model: nn.Module,
    train,
    test,
    *,
    fractions: Sequence[float] = (0.01, 0.1),
    seeds: Sequence[int] = tuple(range(5)),
    knn_k: int = 20,
    views: tuple | None = None,
) -> list[RepresentationReport]:
    """Evaluate the features before (h) and after (z) the projection head of ``model`` [1].

    Args:
        model: a SimCLR-style model (``encoder`` and ``projector``).
        train, test: labelled data (an ``ImageData``, a pair ``(images, labels)``...).
        fractions: label fractions of the linear probes; each averaged over ``seeds`` draws.
        knn_k: neighbours of the kNN classifier (all training labels).
        views: ``(train_views, train_targets, test_views, test_targets)`` from
            :func:`augmented_views` to also measure :func:`transformation_probe` of every target.

    Returns:
        two reports, ``"h"`` then ``"z"``.
    """
    h_train, z_train, y_train = head_features(model, train)
    h_test, z_test, y_test = head_features(model, test)
    if views is not None:
        view_train, t_train, view_test, t_test = views
        hv_train, zv_train, _ = head_features(model, view_train)
        hv_test, zv_test, _ = head_features(model, view_test)
    reports = []
    for name, tr, te in [("h", h_train, h_test), ("z", z_train, z_test)]:
        if name == "z" and _same_features(model, h_train, z_train):
            # No head (z = h): the measurements are the same, skip the repeated work.
            reports.append(RepresentationReport("z", *[getattr(reports[0], f) for f in
                                                       ("dim", "probes", "knn", "rank", "transforms")]))
            continue
        probes = {
            f: linear_probe(tr, y_train, te, y_test, label_fraction=f, seeds=seeds) for f in fractions
        }
        knn = knn_accuracy(tr, y_train, te, y_test, k=knn_k)
        report = RepresentationReport(name, tr.shape[1], probes, knn, effective_rank(tr))
        if views is not None:
            vtr, vte = (hv_train, hv_test) if name == "h" else (zv_train, zv_test)
            report.transforms = {
                target: transformation_probe(vtr, t_train[target], vte, t_test[target]) for target in t_train
            }
        reports.append(report)
    return reports


def _same_features(model: nn.Module, h: Tensor, z: Tensor) -> bool:
    """True when the projector is parameter-free and gave back h unchanged (no head)."""
    return next(model.projector.parameters(), None) is None and h.shape == z.shape and torch.equal(h, z)


def format_reports(results: Mapping[str, Sequence[RepresentationReport]]) -> str:
    """A text table of :func:`compare_h_z` results, one line per (run, features).

    Args:
        results: run name (e.g. ``"nonlinear head"``) -> its reports.
    """
    first = next(iter(results.values()))[0]
    fractions = list(first.probes)
    targets = list(first.transforms)
    head = f"{'run':<16} {'feat':<4} {'dim':>4} | " + " | ".join(f"{'probe ' + _pct(f):>14}" for f in fractions)
    head += f" | {'kNN':>6} | {'eff.rank':>8}"
    if targets:
        head += " | " + " | ".join(f"{'R2 ' + t:>14}" for t in targets)
    lines = [head, "-" * len(head)]
    for run, reports in results.items():
        for r in reports:
            line = f"{run:<16} {r.name:<4} {r.dim:>4} | "
            line += " | ".join(f"{100 * r.probes[f].mean:>7.1f} ± {100 * r.probes[f].std:>4.1f}" for f in fractions)
            line += f" | {100 * r.knn:>5.1f}% | {r.rank:>8.1f}"
            if targets:
                line += " | " + " | ".join(f"{r.transforms[t]:>14.2f}" for t in targets)
            lines.append(line)
    return "\n".join(lines)


def _pct(fraction: float) -> str:
    return f"{100 * fraction:g}%"
