"""Plots of lesson 02's before/after-the-head comparison (:func:`clcourse.lessons.heads.compare_h_z`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from clcourse.lessons.heads import RepresentationReport

__all__ = ["plot_reports"]


def plot_reports(results: Mapping[str, Sequence[RepresentationReport]], axes=None):
    """Bar charts of :func:`compare_h_z` results: one panel per metric, h and z side by side per run.

    Panels: the linear probe at every label fraction, then kNN. Error bars are the standard
    deviation over label draws. Returns the array of matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    runs = list(results)
    fractions = list(results[runs[0]][0].probes)
    n_panels = len(fractions) + 1
    if axes is None:
        _, axes = plt.subplots(1, n_panels, figsize=(3.2 * n_panels, 3), sharey=False)
    axes = np.atleast_1d(axes)
    if len(axes) != n_panels:
        raise ValueError(f"need {n_panels} axes (one per label fraction, plus kNN), got {len(axes)}")
    x = np.arange(len(runs))
    for panel, ax in enumerate(axes):
        for offset, index, color in [(-0.2, 0, "tab:blue"), (0.2, 1, "tab:orange")]:
            reports = [results[run][index] for run in runs]
            if panel < len(fractions):
                values = [100 * r.probes[fractions[panel]].mean for r in reports]
                errors = [100 * r.probes[fractions[panel]].std for r in reports]
            else:
                values, errors = [100 * r.knn for r in reports], None
            ax.bar(x + offset, values, width=0.4, yerr=errors, color=color, label=reports[0].name, capsize=3)
        title = f"linear probe, {_percent(fractions[panel])} labels" if panel < len(fractions) else "kNN, all labels"
        ax.set(title=title, xticks=x, ylabel="test accuracy (%)")
        ax.set_xticklabels(runs, rotation=15)
        low = min(p.get_height() for p in ax.patches)
        ax.set_ylim(max(0.0, low - 15), 100)
    axes[0].legend(title="features")
    return axes


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"
