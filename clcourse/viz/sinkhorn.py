"""The Sinkhorn explorer: how SwAV's codes depend on epsilon and on the number of Sinkhorn iterations.

Two sliders, one picture. For a fixed matrix of scores (B samples against K prototypes) it draws the codes
without the equipartition constraint, softmax(scores / epsilon) row by row, next to SwAV's Sinkhorn codes
(:func:`clcourse.clustering.sinkhorn`) at the chosen epsilon and number of iterations, the total each prototype
receives under both (equipartition asks for B / K each), and how far Sinkhorn's totals are from B / K as the
iterations grow. Everything is computed at once (a few small matrix operations): a slider move only redraws.
The sliders' callbacks call :meth:`SinkhornExplorer.set`, which tests call directly.

[1] Caron et al., Unsupervised Learning of Visual Features by Contrasting Cluster Assignments (SwAV),
    NeurIPS 2020.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.figure import Figure

from clcourse.checks import check_number
from clcourse.clustering import sinkhorn

from .output import figure_png, show_png

EPSILONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # 0.05 is [1]'s value
MAX_ITERATIONS = 20


def softmax_codes(scores: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Codes without equipartition: softmax(scores / epsilon) over the prototypes, row by row.

    Args:
        scores: [B, K] similarities of B samples to K prototypes.
        epsilon: > 0, the same sharpness as Sinkhorn's entropy weight.

    Returns:
        [B, K] float64, rows summing to 1; nothing makes the prototypes' totals equal.
    """
    return torch.softmax(_check_scores(scores) / check_number("epsilon", epsilon), dim=1)


def marginal_error(codes: torch.Tensor) -> float:
    """The largest distance of a prototype's total from its equal share: max_k |sum_b q_bk - B / K|, for codes [B, K]."""
    batch, prototypes = codes.shape
    return float((codes.sum(0) - batch / prototypes).abs().max())


def status_text(epsilon: float, iterations: int) -> str:
    """The explorer's status line once the figure for these settings is drawn (browser tests wait for it)."""
    return f"drawn: epsilon {epsilon:g}, {iterations} Sinkhorn iterations"


def _check_scores(scores) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor):
        scores = torch.as_tensor(np.asarray(scores))
    if scores.dim() != 2 or scores.shape[0] < 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be a matrix [B, K] with B >= 2 samples and K >= 2 prototypes, "
                         f"got shape {list(scores.shape)}")
    if not scores.is_floating_point() or not torch.isfinite(scores).all():
        raise ValueError("scores must hold finite floating-point similarities")
    return scores.detach().to(torch.float64).cpu()


class SinkhornExplorer:
    """Sliders for SwAV's epsilon and Sinkhorn iterations that redraw the codes of one batch [1].

    Args:
        scores: [B, K] similarities of B samples to K prototypes (cosines, as z^T c in [1]).
        epsilon: the epsilon drawn first (one of ``epsilons``; [1] uses 0.05).
        iterations: the iterations drawn first, 1 to ``max_iterations`` ([1] uses 3).
        epsilons: the epsilon slider's stops.
        max_iterations: the iteration slider's maximum.

    Attributes:
        widget: the ipywidgets VBox to display (displaying the explorer displays it).
        epsilon_slider, iterations_slider: the two sliders; moving one calls :meth:`set`.
        status: a Label that states the settings drawn; it changes only after the figure is redrawn.
        output: the Output widget the figure is shown in, as a PNG; figure: the matplotlib Figure; png: its bytes.
        epsilon, iterations: the settings drawn; codes: their Sinkhorn codes [B, K]; plain_codes: their
        codes without equipartition [B, K].
    """

    def __init__(self, scores, *, epsilon: float = 0.05, iterations: int = 3,
                 epsilons: Sequence[float] = EPSILONS, max_iterations: int = MAX_ITERATIONS) -> None:
        self.scores = _check_scores(scores)
        self.epsilons = sorted({check_number("epsilon", e) for e in epsilons})
        if not isinstance(max_iterations, int) or isinstance(max_iterations, bool) or max_iterations < 1:
            raise ValueError(f"max_iterations must be an int >= 1, got {max_iterations!r}")
        self.max_iterations = max_iterations
        epsilon, iterations = self._check(epsilon, iterations)
        self.epsilon: float | None = None
        self.iterations: int | None = None
        self.png = b""
        self._requested = (epsilon, iterations)
        self._build_widgets(epsilon, iterations)
        self._redraw(epsilon, iterations)

    def _check(self, epsilon, iterations) -> tuple[float, int]:
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating)):
            raise TypeError(f"epsilon must be a number, got {type(epsilon).__name__}")
        stop = next((e for e in self.epsilons if math.isclose(e, epsilon, rel_tol=1e-9)), None)
        if stop is None:
            raise ValueError(f"epsilon must be one of the slider's stops {self.epsilons}, got {epsilon!r}")
        if not isinstance(iterations, int) or isinstance(iterations, bool) or not 1 <= iterations <= self.max_iterations:
            raise ValueError(f"iterations must be an int from 1 to {self.max_iterations}, got {iterations!r}")
        return stop, iterations

    def set(self, epsilon: float | None = None, iterations: int | None = None) -> None:
        """Draw the codes at ``epsilon`` (a slider stop) and ``iterations``; None keeps the current value."""
        epsilon, iterations = self._check(self._requested[0] if epsilon is None else epsilon,
                                          self._requested[1] if iterations is None else iterations)
        if (epsilon, iterations) == self._requested:  # a slider echoing a change made in code
            return
        self._requested = (epsilon, iterations)
        self.epsilon_slider.value, self.iterations_slider.value = epsilon, iterations  # echoes return above
        self._redraw(epsilon, iterations)

    def _build_widgets(self, epsilon: float, iterations: int) -> None:
        style, layout = {"description_width": "initial"}, widgets.Layout(width="360px")
        self.epsilon_slider = widgets.SelectionSlider(
            options=[(f"{e:g}", e) for e in self.epsilons], value=epsilon, description="epsilon",
            continuous_update=False, layout=layout, style=style)
        self.iterations_slider = widgets.IntSlider(
            value=iterations, min=1, max=self.max_iterations, description="Sinkhorn iterations",
            continuous_update=False, layout=layout, style=style)
        self.status = widgets.Label(value="drawing ...")
        self.output = widgets.Output()
        self.figure = Figure(figsize=(12.5, 6.4))  # not pyplot: the inline backend would show it twice
        self.epsilon_slider.observe(lambda change: self.set(epsilon=change["new"]), names="value")
        self.iterations_slider.observe(lambda change: self.set(iterations=change["new"]), names="value")
        self.widget = widgets.VBox([widgets.HBox([self.epsilon_slider, self.iterations_slider]), self.status,
                                    self.output])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _redraw(self, epsilon: float, iterations: int) -> None:
        plain = softmax_codes(self.scores, epsilon)
        codes = sinkhorn(self.scores, epsilon, iterations)
        errors = [marginal_error(sinkhorn(self.scores, epsilon, n)) for n in range(1, self.max_iterations + 1)]
        batch, prototypes = self.scores.shape
        self.figure.clear()
        grid = self.figure.add_gridspec(2, 3, height_ratios=[1.3, 1.0])
        self._heatmap(self.figure.add_subplot(grid[0, 0]), self.scores, "(a) scores z^T c", "RdBu_r", (-1, 1))
        self._heatmap(self.figure.add_subplot(grid[0, 1]), plain,
                      f"(b) softmax(scores / {epsilon:g}):\nno equipartition", "Greens", (0, 1))
        self._heatmap(self.figure.add_subplot(grid[0, 2]), codes,
                      f"(c) Sinkhorn codes, epsilon {epsilon:g},\n{iterations} iteration{'s' * (iterations > 1)}",
                      "Greens", (0, 1))
        for ax, q, title in ((self.figure.add_subplot(grid[1, 0]), plain, "(d) totals without equipartition"),
                             (self.figure.add_subplot(grid[1, 1]), codes, "(e) totals of the Sinkhorn codes")):
            ax.bar(np.arange(prototypes), q.sum(0).numpy(), color="tab:green")
            ax.axhline(batch / prototypes, color="black", ls="--", lw=1, label=f"equal share B / K = {batch / prototypes:g}")
            ax.set(xlabel="prototype", ylabel="total over the batch", title=title, ylim=(0, batch))
            ax.set_xticks(np.arange(prototypes))
            ax.legend(fontsize="small")
        ax = self.figure.add_subplot(grid[1, 2])
        ax.semilogy(np.arange(1, self.max_iterations + 1), np.maximum(errors, 1e-16), "o-", ms=3)
        ax.axvline(iterations, color="black", lw=3, alpha=0.25)
        ax.set(xlabel="Sinkhorn iterations", ylabel="max |total - B / K|",
               title=f"(f) distance from equipartition, epsilon {epsilon:g}")
        self.figure.tight_layout()
        self.png = figure_png(self.figure, dpi=80)
        show_png(self.output, self.png)
        self.plain_codes, self.codes = plain, codes
        self.epsilon, self.iterations = epsilon, iterations
        self.status.value = status_text(epsilon, iterations)

    @staticmethod
    def _heatmap(ax, values: torch.Tensor, title: str, cmap: str, limits: tuple[float, float]) -> None:
        image = ax.imshow(values.numpy(), cmap=cmap, vmin=limits[0], vmax=limits[1], aspect="auto")
        ax.set(xlabel="prototype", ylabel="sample", title=title)
        ax.set_xticks(np.arange(values.shape[1]))
        ax.figure.colorbar(image, ax=ax, fraction=0.046)


def sinkhorn_explorer(scores, **options) -> SinkhornExplorer:
    """A :class:`SinkhornExplorer` of ``scores`` [B, K]; display it as the last expression of a cell."""
    return SinkhornExplorer(scores, **options)
