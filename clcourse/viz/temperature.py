"""The temperature explorer: what the NT-Xent temperature does to the loss and to the embedding.

One slider, two kinds of answer:

(a) pure maths, at any temperature: the softmax weights an anchor gives its positive and
    negatives of increasing similarity, p_j = exp(s_j / t) / sum_k exp(s_k / t). They are also
    the relative sizes of the gradient pushes on the negatives ("hardness-aware", [3]).
(b) measured, for encoders trained beforehand at a few temperatures (the slider snaps to the
    nearest one): a UMAP of the encoder's features, the output of a 2-D head on the circle S^1
    as in [2], and alignment, uniformity [2], tolerance [3] and probe accuracies per temperature.

Everything in (b) is precomputed (UMAP costs seconds per fit); a slider move only redraws.
The slider's callback calls :meth:`TemperatureExplorer.set_temperature`, which tests call
directly: a headless notebook run never fires a callback.

[1] Chen et al., A Simple Framework for Contrastive Learning of Visual Representations (SimCLR), ICML 2020.
[2] Wang & Isola, Understanding Contrastive Representation Learning through Alignment and Uniformity
    on the Hypersphere, ICML 2020.
[3] Wang & Liu, Understanding the Behaviour of Contrastive Loss, CVPR 2021.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.figure import Figure

from clcourse.losses import uniformity

from .output import figure_png, show_png
from .plots import LabelNames, check_xy, plot_embedding, point_colors, to_numpy

# The slider's stops: a log-like grid from very sharp (0.02) to very flat (2).
DEFAULT_TEMPERATURES = (0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0)
# Panel (a)'s anchor: its positive (the other view) at cosine 0.8, and negatives from clearly
# different (-0.6) to one that looks more like the anchor than its own positive (0.9): in a
# real batch that is typically another image of the same class.
DEFAULT_POSITIVE = 0.8
DEFAULT_NEGATIVES = (-0.6, -0.4, -0.2, 0.0, 0.2, 0.35, 0.5, 0.6, 0.7, 0.75, 0.85, 0.9)
SLIDER_LABEL = "temperature"


def softmax_weights(similarities: Sequence[float] | np.ndarray | torch.Tensor, temperature: float) -> np.ndarray:
    """Softmax of cosine similarities over temperature: the weight an anchor gives each candidate.

    Args:
        similarities: [K] cosine similarities of one anchor to its candidates (positive and negatives).
        temperature: t > 0.

    Returns:
        [K] float64 weights summing to 1, p_j = exp(s_j / t) / sum_k exp(s_k / t). With the positive
        at index 0, the anchor's NT-Xent loss is -log p_0 [1], and the gradient pushes it away from
        negative j in proportion to p_j [3]: a small t puts almost all of the push on the hardest
        negatives, a large t spreads it evenly.
    """
    s = np.asarray(to_numpy(similarities), dtype=np.float64)
    if s.ndim != 1 or s.size < 1:
        raise ValueError(f"similarities must be a non-empty 1-D sequence [K], got shape {list(s.shape)}")
    t = _check_temperature(temperature)
    logits = s / t
    weights = np.exp(logits - logits.max())  # minus the max: exp(1 / 0.02) overflows nothing then
    return weights / weights.sum()


def nearest_temperature(temperature: float, available: Sequence[float]) -> float:
    """The value of ``available`` closest to ``temperature`` on a log scale (0.2 is nearer 0.3 than 0.1)."""
    t = _check_temperature(temperature)
    if len(available) == 0:
        raise ValueError("available must hold at least one temperature")
    return min(available, key=lambda a: (abs(math.log(a) - math.log(t)), a))


def status_text(temperature: float, trained: float) -> str:
    """The explorer's status line once the figure for ``temperature`` is drawn (browser tests wait for it)."""
    return f"drawn: temperature {temperature:g} | trained encoder: {trained:g}"


@dataclass
class TemperatureResult:
    """What was measured for one encoder trained with NT-Xent at ``temperature``.

    Attributes:
        temperature: the NT-Xent temperature it was trained with.
        labels: [N] class labels of the N evaluation images (they colour the points).
        umap: [N, 2] UMAP coordinates of its features of N evaluation images.
        circle: [N, 2] outputs of a 2-D head for the same images, L2-normalised (points on S^1).
        alignment: E||z(x) - z(x')||^2 over two views x, x' of an image, normalised z [2] (lower: views closer).
        uniformity: log E exp(-2||z(x) - z(y)||^2) over pairs of images [2] (lower: more uniform).
        tolerance: mean cosine similarity of two different images of the same class [3]
            (higher: semantically similar images are left close together).
        linear_probe: accuracy in [0, 1] of a linear classifier on the frozen features.
        knn: accuracy in [0, 1] of a kNN classifier on the frozen features.
    """

    temperature: float
    labels: np.ndarray
    umap: np.ndarray
    circle: np.ndarray
    alignment: float
    uniformity: float
    tolerance: float
    linear_probe: float
    knn: float


class TemperatureExplorer:
    """A slider for the NT-Xent temperature that redraws what it does, computed and measured.

    Args:
        results: one :class:`TemperatureResult` per trained temperature (any order; all measured on
            the same N images, so with the same labels).
        temperatures: the slider's stops; default :data:`DEFAULT_TEMPERATURES` plus the trained ones.
        start: the temperature drawn first (default 0.1 when it is a stop, else the first trained one).
        positive, negatives: panel (a)'s anchor: the cosine similarity to its positive and to each negative.
        label_names: names of the classes (a sequence indexed by label, or a mapping label -> name).

    Attributes:
        widget: the ipywidgets VBox to display (displaying the explorer displays it).
        slider: its SelectionSlider (description ``"temperature"``); moving it calls :meth:`set_temperature`.
        status: a Label that states the temperature drawn; it changes only after the figure is redrawn.
        output: the Output widget the figure is shown in, as a PNG.
        figure: the matplotlib Figure, redrawn on each change.
        png: the PNG bytes of the last drawing.
        temperature: the temperature drawn in (a); ``trained``: the trained temperature drawn in (b).
        last_weights: panel (a)'s weights, positive first, then the negatives in order.

    Panel (a) needs no training: it is :func:`softmax_weights` at the slider's temperature.
    Panels (b) show the encoder trained at the nearest trained temperature: UMAP [4] of its
    features, its 2-D head's outputs on the circle with their angle density (as [2] draws
    encoders with outputs on S^1), and alignment, uniformity [2], tolerance [3] and accuracies
    against temperature, with the drawn encoder marked.

    [4] McInnes, Healy & Melville, UMAP, 2018.
    """

    def __init__(
        self,
        results: Sequence[TemperatureResult],
        *,
        temperatures: Sequence[float] | None = None,
        start: float | None = None,
        positive: float = DEFAULT_POSITIVE,
        negatives: Sequence[float] = DEFAULT_NEGATIVES,
        label_names: LabelNames | None = None,
    ) -> None:
        self.results = self._check_results(results)
        self.trained_temperatures = [r.temperature for r in self.results]
        self.labels = self.results[0].labels
        self.label_names = label_names
        self.colors = point_colors(self.labels, label_names)  # fails now on a label without a name
        self.similarities = np.array([positive, *negatives], dtype=np.float64)
        if self.similarities.size < 2 or np.abs(self.similarities).max() > 1:
            raise ValueError("positive and negatives must be cosine similarities in [-1, 1], with at least one negative")

        stops = DEFAULT_TEMPERATURES if temperatures is None else temperatures
        self.temperatures = sorted({_check_temperature(t) for t in (*stops, *self.trained_temperatures)})
        if start is None:
            start = 0.1 if 0.1 in self.temperatures else self.trained_temperatures[0]
        start = self._check_stop(start)

        self.temperature: float | None = None
        self.trained: float | None = None
        self.png: bytes = b""
        self.last_weights: np.ndarray | None = None
        self._requested = start
        self._build_widgets(start)
        self._redraw(start)

    @staticmethod
    def _check_results(results) -> list[TemperatureResult]:
        results = list(results)
        if not results or not all(isinstance(r, TemperatureResult) for r in results):
            raise ValueError("results must be a non-empty sequence of TemperatureResult, one per trained temperature")
        temps = [_check_temperature(r.temperature) for r in results]
        if len(set(temps)) != len(temps):
            raise ValueError(f"results must have distinct temperatures, got {temps}")
        checked = []
        for r in sorted(results, key=lambda r: r.temperature):
            umap = check_xy(r.umap, f"umap (temperature {r.temperature:g})")
            circle = check_xy(r.circle, f"circle (temperature {r.temperature:g})")
            labels = to_numpy(r.labels)
            if labels.shape != (len(umap),) or len(circle) != len(umap):
                raise ValueError(
                    f"a result needs labels [N], umap [N, 2] and circle [N, 2] for the same N; temperature "
                    f"{r.temperature:g} has {list(labels.shape)}, {len(umap)} and {len(circle)}"
                )
            if checked and not np.array_equal(labels, checked[0].labels):
                raise ValueError(
                    f"every result must be measured on the same images: the labels of temperature "
                    f"{r.temperature:g} differ from those of {checked[0].temperature:g}"
                )
            checked.append(replace(r, labels=labels, umap=umap, circle=circle))
        return checked

    def _check_stop(self, temperature: float) -> float:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)):
            raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
        for stop in self.temperatures:
            if math.isclose(stop, temperature, rel_tol=1e-9):
                return stop
        raise ValueError(f"temperature must be one of the slider's stops {self.temperatures}, got {temperature!r}")

    # -- the update method the slider calls --------------------------------------------------

    def set_temperature(self, temperature: float) -> None:
        """Draw ``temperature`` (one of the slider's stops): (a) at it, (b) at the nearest trained one."""
        temperature = self._check_stop(temperature)
        if temperature == self._requested:  # the slider echoing a change made in code
            return
        self._requested = temperature
        self.slider.value = temperature  # keeps the slider in step when called from code; its echo returns above
        self._redraw(temperature)

    # -- widgets and drawing -----------------------------------------------------------------

    def _build_widgets(self, start: float) -> None:
        self.slider = widgets.SelectionSlider(
            options=[(f"{t:g}", t) for t in self.temperatures],
            value=start,
            description=SLIDER_LABEL,
            continuous_update=False,  # redraw when the slider stops, not at every stop it passes
            layout=widgets.Layout(width="460px"),
            style={"description_width": "initial"},  # the whole word "temperature", not "temperat..."
        )
        self.status = widgets.Label(value="drawing ...")
        self.output = widgets.Output()
        self.figure = Figure(figsize=(13.0, 7.6))  # not pyplot: the inline backend would show it twice
        self.slider.observe(lambda change: self.set_temperature(change["new"]), names="value")
        self.widget = widgets.VBox([widgets.HBox([self.slider, self.status]), self.output])

    def _redraw(self, temperature: float) -> None:
        trained = nearest_temperature(temperature, self.trained_temperatures)
        result = self.results[self.trained_temperatures.index(trained)]
        self.figure.clear()
        grid = self.figure.add_gridspec(2, 3, height_ratios=[1.15, 1.0])
        self._draw_weights(self.figure.add_subplot(grid[0, 0]), temperature)
        self._draw_umap(self.figure.add_subplot(grid[0, 1]), result)
        self._draw_circle(self.figure.add_subplot(grid[0, 2]), result)
        self._draw_alignment_uniformity(self.figure.add_subplot(grid[1, 0]), trained)
        self._draw_series(self.figure.add_subplot(grid[1, 1]), trained, {"tolerance": "tolerance"},
                          "tolerance (higher: same-class images closer)", "(e) tolerance [Wang & Liu]")
        self._draw_series(self.figure.add_subplot(grid[1, 2]), trained,
                          {"linear_probe": "linear probe", "knn": "kNN"}, "accuracy", "(f) accuracy of the features",
                          percent=True)
        self.figure.tight_layout()
        self.png = figure_png(self.figure, dpi=80)
        self._show()
        # Only now, with the picture out, say what it shows: a reader (or a browser test) that sees
        # the status for temperature t also sees t's figure.
        self.temperature, self.trained = temperature, trained
        self.status.value = status_text(temperature, trained)

    def _draw_weights(self, ax, temperature: float) -> None:
        weights = softmax_weights(self.similarities, temperature)
        self.last_weights = weights
        order = np.argsort(self.similarities, kind="stable")  # bars left to right by similarity
        sims = self.similarities[order]
        positive_at = int(np.flatnonzero(order == 0)[0])
        colors = ["tab:green" if i == positive_at else "tab:red" if s > self.similarities[0] else "tab:gray"
                  for i, s in enumerate(sims)]
        ticks = [f"{s:.2f}" for s in sims]
        ticks[positive_at] = f"pos {sims[positive_at]:.2f}"
        ax.bar(np.arange(len(sims)), weights[order], color=colors)
        ax.set_xticks(np.arange(len(sims)), ticks, rotation=60, fontsize="small")
        ax.set_ylim(0, 1)
        ax.set_xlabel("cosine similarity to the anchor (green: positive,\nred: negatives more similar than the positive)")
        ax.set_ylabel("softmax weight")
        ax.set_title(f"(a) one anchor's weights at t = {temperature:g}\n"
                     f"its loss -log p(positive) = {-math.log(weights[0]):.2f}")

    def _draw_umap(self, ax, result: TemperatureResult) -> None:
        plot_embedding(result.umap, self.labels, ax=ax, label_names=self.label_names)
        ax.get_legend().remove()  # the circle panel carries the legend
        ax.set_title(f"(b) UMAP of the encoder's features\ntrained at t = {result.temperature:g}")

    def _draw_circle(self, ax, result: TemperatureResult) -> None:
        xy = result.circle / np.linalg.norm(result.circle, axis=1, keepdims=True).clip(min=1e-12)
        angles = np.arctan2(xy[:, 1], xy[:, 0])
        grid = np.linspace(-np.pi, np.pi, 361)
        # von Mises kernel density of the angles: [2] draws the distribution on S^1 this way
        density = np.exp(8.0 * np.cos(grid[:, None] - angles[None, :])).mean(axis=1)
        ring = 1.1 + 0.5 * density / density.max()
        ax.plot(ring * np.cos(grid), ring * np.sin(grid), color="black", lw=1)
        ax.plot(1.1 * np.cos(grid), 1.1 * np.sin(grid), color="lightgray", lw=0.8)
        ax.scatter(xy[:, 0], xy[:, 1], c=self.colors.rgba, s=10, linewidths=0)
        # the same angles once more, one inner ring per class: how much of the circle each class covers
        codes = np.unique(self.labels, return_inverse=True)[1].reshape(-1)
        radius = 0.35 + 0.55 * codes / max(1, codes.max())
        ax.scatter(radius * xy[:, 0], radius * xy[:, 1], c=self.colors.rgba, s=4, linewidths=0)
        unif = float(uniformity(torch.from_numpy(xy).float()))
        ax.set_title(f"(c) 2-D head on the circle S1, t = {result.temperature:g}\n"
                     f"uniformity on S1 = {unif:.2f} (uniform: -1.58)")
        ax.set_xlim(-1.7, 1.7)
        ax.set_ylim(-1.7, 1.7)
        ax.set_aspect("equal")
        ax.set_axis_off()
        for name, rgba in self.colors.legend:
            ax.scatter([], [], color=rgba, label=name, s=12)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize="small", title="class")

    def _draw_alignment_uniformity(self, ax, trained: float) -> None:
        temps = self.trained_temperatures
        ax.plot(temps, [r.alignment for r in self.results], "o-", color="tab:blue", label="alignment")
        ax.set_xscale("log")
        ax.set_xticks(temps, [f"{t:g}" for t in temps])
        ax.minorticks_off()
        ax.set_xlabel("training temperature")
        ax.set_ylabel("alignment (lower: views closer)", color="tab:blue")
        right = ax.twinx()
        right.plot(temps, [r.uniformity for r in self.results], "s--", color="tab:orange", label="uniformity")
        right.set_ylabel("uniformity (lower: more uniform)", color="tab:orange")
        ax.legend(handles=ax.get_lines() + right.get_lines(), fontsize="small")
        ax.axvline(trained, color="black", lw=3, alpha=0.25)
        ax.set_title("(d) alignment and uniformity [Wang & Isola]")

    def _draw_series(self, ax, trained: float, fields: dict[str, str], ylabel: str, title: str,
                     percent: bool = False) -> None:
        temps = self.trained_temperatures
        scale = 100.0 if percent else 1.0
        for (field, name), marker in zip(fields.items(), ("o-", "s--")):
            ax.plot(temps, [scale * getattr(r, field) for r in self.results], marker, label=name)
        ax.set_xscale("log")
        ax.set_xticks(temps, [f"{t:g}" for t in temps])
        ax.minorticks_off()
        ax.set_xlabel("training temperature")
        ax.set_ylabel(ylabel + (" (%)" if percent else ""))
        ax.axvline(trained, color="black", lw=3, alpha=0.25)
        if len(fields) > 1:
            ax.legend(fontsize="small")
        ax.set_title(title)

    def _show(self) -> None:
        show_png(self.output, self.png)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating, np.integer)):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    t = float(temperature)
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t
