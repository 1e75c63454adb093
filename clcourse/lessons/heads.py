"""Lesson 02 (encoders and heads): what the projection head throws away.

The lesson's experiment: :func:`compare_h_z` measures the representation h = f(x) and the
projection z = g(h) of SimCLR-style models with linear probes, kNN and the effective rank, and
optionally how well the *applied augmentation* (rotation angle, crop area, ...) can be read off
each (:func:`clcourse.evaluate.transformation_probe` on views from
:func:`clcourse.augment.augmented_views`): the experiment of [1] (section 4.2, table 3) that
shows z = g(h) discards information h still has. :func:`feature_report` measures any one set of
features the same way (the raw-pixel baseline). :func:`format_reports` prints one run's results;
:func:`clcourse.viz.reports.plot_reports` draws them. Over several training seeds,
:func:`over_seeds` gives every figure's mean and spread, :func:`h_minus_z` the paired gap of the
probe, :func:`format_seed_table` and :func:`plot_over_seeds` show them. :func:`neighbour_agreement`
asks whether a factor (the rotation) survives in a space's nearest neighbours, what a 2-D map of it
can show. The encoder inspection the lesson also uses lives in :mod:`clcourse.inspection`.

[1] Chen et al., A Simple Framework for Contrastive Learning of Visual Representations
    (SimCLR), ICML 2020.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clcourse.evaluate import (
    ProbeResult,
    effective_rank,
    head_features,
    knn_accuracy,
    linear_probe,
    transformation_probe,
)

__all__ = [
    "RepresentationReport",
    "feature_report",
    "compare_h_z",
    "format_reports",
    "SeedStats",
    "over_seeds",
    "h_minus_z",
    "format_seed_table",
    "plot_over_seeds",
    "neighbour_agreement",
]


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
    view_features = {"h": None, "z": None}
    if views is not None:
        view_train, t_train, view_test, t_test = views
        hv_train, zv_train, _ = head_features(model, view_train)
        hv_test, zv_test, _ = head_features(model, view_test)
        view_features = {"h": (hv_train, t_train, hv_test, t_test), "z": (zv_train, t_train, zv_test, t_test)}
    h = feature_report("h", h_train, y_train, h_test, y_test, fractions=fractions, seeds=seeds, knn_k=knn_k,
                       views=view_features["h"])
    if _same_features(model, h_train, z_train):
        # No head (z = h): the measurements are the same, skip the repeated work.
        return [h, RepresentationReport("z", h.dim, h.probes, h.knn, h.rank, h.transforms)]
    z = feature_report("z", z_train, y_train, z_test, y_test, fractions=fractions, seeds=seeds, knn_k=knn_k,
                       views=view_features["z"])
    return [h, z]


def feature_report(
    name: str,
    train_x,
    train_y,
    test_x,
    test_y,
    *,
    fractions: Sequence[float] = (0.01, 0.1),
    seeds: Sequence[int] = tuple(range(5)),
    knn_k: int = 20,
    views: tuple | None = None,
) -> RepresentationReport:
    """Measure one set of frozen features as :func:`compare_h_z` measures h and z.

    Args:
        name: the report's name (``"h"``, ``"pixels"``...).
        train_x [N, D], train_y [N], test_x [M, D], test_y [M]: features and labels.
        fractions, seeds, knn_k: as for :func:`compare_h_z`.
        views: ``(view_train_x [N', D], targets, view_test_x [M', D], targets)``: the *features* of augmented
            views and their targets (name -> [N'] / [M']), for :func:`transformation_probe`.
    """
    train_x, test_x = torch.as_tensor(train_x).flatten(1).float(), torch.as_tensor(test_x).flatten(1).float()
    probes = {f: linear_probe(train_x, train_y, test_x, test_y, label_fraction=f, seeds=seeds) for f in fractions}
    knn = knn_accuracy(train_x, train_y, test_x, test_y, k=knn_k)
    report = RepresentationReport(name, train_x.shape[1], probes, knn, effective_rank(train_x))
    if views is not None:
        vtr, t_train, vte, t_test = views
        vtr, vte = torch.as_tensor(vtr).flatten(1).float(), torch.as_tensor(vte).flatten(1).float()
        report.transforms = {target: transformation_probe(vtr, t_train[target], vte, t_test[target])
                             for target in t_train}
    return report


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


# --------------------------------------------------------------------------- over training seeds


@dataclass(frozen=True)
class SeedStats:
    """One figure over training seeds: ``mean``, ``std`` (sample standard deviation, ``nan`` for a single
    run) and the per-seed ``values``."""

    mean: float
    std: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> SeedStats:
        values = tuple(float(v) for v in values)
        if not values:
            raise ValueError("SeedStats needs at least one value")
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
        return cls(mean, std, values)

    def __str__(self) -> str:
        return f"{self.mean:.1f}" if math.isnan(self.std) else f"{self.mean:.1f} ± {self.std:.1f}"


def _figures(report: RepresentationReport) -> dict[str, float]:
    """A report as flat figures: probes and kNN in %, the effective rank, the R^2 of every target."""
    figures = {f"probe {_pct(f)}": 100 * p.mean for f, p in report.probes.items()}
    figures["kNN"] = 100 * report.knn
    figures["eff.rank"] = report.rank
    figures.update({f"R2 {t}": r2 for t, r2 in report.transforms.items()})
    return figures


def over_seeds(
    results: Mapping[str, Sequence[Sequence[RepresentationReport]]],
) -> dict[str, dict[str, dict[str, SeedStats]]]:
    """Every figure of every run's reports, over its training seeds.

    Args:
        results: run name -> one list of reports per training seed, e.g.
            ``{"nonlinear head": [compare_h_z(model) for model in models]}`` (a baseline: a single seed).

    Returns:
        run -> report name (``"h"``, ``"z"``...) -> figure (``"probe 10%"``, ``"kNN"``, ``"eff.rank"``,
        ``"R2 rotation"``...) -> :class:`SeedStats`. Probes and kNN in %, each seed's probe already the
        mean over its label draws.
    """
    table = {}
    for run, per_seed in results.items():
        if not per_seed:
            raise ValueError(f"run {run!r} has no seeds")
        names = [r.name for r in per_seed[0]]
        if any([r.name for r in reports] != names for reports in per_seed):
            raise ValueError(f"run {run!r}: every seed must report the same features {names}")
        table[run] = {}
        for i, name in enumerate(names):
            figures = [_figures(reports[i]) for reports in per_seed]
            table[run][name] = {key: SeedStats.of([f[key] for f in figures]) for key in figures[0]}
    return table


def h_minus_z(per_seed: Sequence[Sequence[RepresentationReport]], fraction: float = 0.1) -> SeedStats:
    """The paired gap of the linear probe, h minus z, in points, over the training seeds of one run.

    Each seed's h and z come from the same network, so their difference varies less than either does.
    per_seed: one ``[h, z]`` list per training seed (from :func:`compare_h_z`).
    """
    gaps = []
    for reports in per_seed:
        by_name = {r.name: r for r in reports}
        if set(by_name) != {"h", "z"}:
            raise ValueError(f"each seed needs reports named 'h' and 'z', got {sorted(by_name)}")
        gaps.append(100 * (by_name["h"].probes[fraction].mean - by_name["z"].probes[fraction].mean))
    return SeedStats.of(gaps)


def format_seed_table(table: Mapping[str, Mapping[str, Mapping[str, SeedStats]]], figures: Sequence[str] | None = None) -> str:
    """A text table of :func:`over_seeds`: one line per (run, features), "mean ± std" per figure.

    Args:
        figures: which figures to show, in order (default: all of the first row's).
    """
    first = next(iter(next(iter(table.values())).values()))
    figures = list(first) if figures is None else list(figures)
    head = f"{'run':<18} {'feat':<6} {'seeds':>5} | " + " | ".join(f"{f:>13}" for f in figures)
    lines = [head, "-" * len(head)]
    for run, reports in table.items():
        for name, stats in reports.items():
            cells = []
            for f in figures:
                s = stats.get(f)
                digits = 2 if f.startswith("R2") else 1
                if s is None:
                    cells.append(f"{'':>13}")
                elif math.isnan(s.std):
                    cells.append(f"{s.mean:>7.{digits}f}      ")
                else:
                    cells.append(f"{s.mean:>7.{digits}f} ± {s.std:<{digits + 2}.{digits}f}")
            n = len(next(iter(stats.values())).values)
            lines.append(f"{run:<18} {name:<6} {n:>5} | " + " | ".join(cells))
    return "\n".join(lines)


def plot_over_seeds(
    table: Mapping[str, Mapping[str, Mapping[str, SeedStats]]],
    figure: str,
    baselines: Mapping[str, float] | None = None,
    ax=None,
):
    """Bars of one figure of :func:`over_seeds`, h and z side by side per run, error bars = std over seeds.

    Args:
        table: from :func:`over_seeds` (runs with reports ``"h"`` and ``"z"``).
        figure: e.g. ``"probe 10%"`` or ``"R2 rotation"``.
        baselines: name -> value drawn as a dashed horizontal line (raw pixels, untrained encoder).
    Returns the Axes.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    runs = list(table)
    x = np.arange(len(runs))
    for offset, name, color in [(-0.2, "h", "tab:blue"), (0.2, "z", "tab:orange")]:
        stats = [table[run][name][figure] for run in runs]
        errors = [0 if math.isnan(s.std) else s.std for s in stats]
        ax.bar(x + offset, [s.mean for s in stats], width=0.4, yerr=errors, capsize=3, color=color, label=name)
        for xi, s in zip(x + offset, stats):  # the seeds themselves
            ax.plot([xi] * len(s.values), s.values, "k.", ms=3)
    for (label, value), style in zip((baselines or {}).items(), ["--", ":", "-."]):
        ax.axhline(value, color="gray", ls=style, lw=1, label=label)
    ax.set(xticks=x, title=figure)
    ax.set_xticklabels(runs)
    values = [v for run in runs for name in ("h", "z") for v in table[run][name][figure].values]
    low, high = min(values + list((baselines or {}).values())), max(values + list((baselines or {}).values()))
    ax.set_ylim(low - 0.15 * (high - low) - 1e-9, high + 0.1 * (high - low) + 1e-9)
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    return ax


@torch.no_grad()
def neighbour_agreement(features, values, k: int = 10) -> float:
    """How much of a factor a space's neighbourhoods keep: R^2 of predicting each point's ``values`` by the
    mean over its ``k`` nearest neighbours (cosine similarity, the point itself excluded).

    1: neighbours share the value exactly; 0: no better than the overall mean (it can be negative). A 2-D map
    such as UMAP preserves neighbourhoods, so this is about what colouring the map by the factor can show;
    a linear probe can find a factor that neighbourhoods ignore.

    Args:
        features: [N, D]; values: [N] (e.g. the rotation of every view); k < N.
    """
    x = F.normalize(torch.as_tensor(features).flatten(1).float(), dim=1)
    v = torch.as_tensor(values).double().flatten()
    if v.shape[0] != x.shape[0]:
        raise ValueError(f"values must be [N] with N = {x.shape[0]}, got {list(v.shape)}")
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k must be in [1, N - 1] = [1, {x.shape[0] - 1}], got {k}")
    if float(v.var()) == 0:
        raise ValueError("the values are constant: R^2 is undefined")
    similarity = x @ x.T
    similarity.fill_diagonal_(-math.inf)
    neighbours = similarity.topk(k, dim=1).indices
    predicted = v[neighbours].mean(1)
    return float(1 - ((v - predicted) ** 2).sum() / ((v - v.mean()) ** 2).sum())
