"""An ipywidgets app to explore an embedding over training: where each point lies, and what lies near it.

The projections are computed beforehand (UMAP costs seconds per fit, see :mod:`clcourse.viz.projection`); the
app switches between them, recolours the points, and shows a point's image with its nearest neighbours, as
TensorBoard's projector does. The scatter is a live matplotlib canvas (ipympl) inside the app, whatever backend
the notebook's other figures use: hovering over a point names it, clicking it selects it. A change moves and
recolours the points already drawn instead of plotting again.

Neighbours are searched in each checkpoint's *features* (cosine similarity) when they are given: UMAP keeps
neighbourhoods only approximately, and the panel should show what the encoder itself puts together. Without
features, distances in the 2-D projection stand in.

The widget callbacks and the canvas's event handlers call :meth:`EmbeddingExplorer.set_color_by`,
:meth:`~EmbeddingExplorer.set_projection`, :meth:`~EmbeddingExplorer.select_point` and
:meth:`~EmbeddingExplorer.hover_point`, which tests call directly: a headless notebook run never fires a callback.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import ipywidgets as widgets
import matplotlib
import matplotlib.image
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, to_hex, to_rgba
from matplotlib.figure import Figure

from .neighbours import Neighbours, knn_vote, nearest_neighbours, new_neighbour_counts
from .plots import (
    LabelNames,
    PointColors,
    category_legend,
    check_images,
    check_xy,
    display_pixels,
    marker_size,
    point_colors,
    to_numpy,
)

CLASS = "class"
KNN_VOTE = "kNN vote"
NEW_NEIGHBOURS = "new neighbours"
NO_COLOR = "none"
DERIVED = (KNN_VOTE, NEW_NEIGHBOURS)  # computed by the explorer, per checkpoint
PICK_RADIUS = 6  # display pixels: a click or hover this close to a point's centre finds it
RIGHT, WRONG, NEUTRAL = to_rgba("0.8"), to_rgba("tab:red"), to_rgba("0.55")
PANEL_CLASS = "clcourse-neighbours"  # the panel's CSS class, which browser tests look for
HOVER_HINT = "Hover over a point to name it; click it to see its image and its nearest neighbours."


def _ipympl_classes() -> tuple[type, type]:
    """ipympl's widget canvas and figure manager, imported without leaving pyplot on ipympl's backend.

    Importing ipympl calls ``matplotlib.use`` on its backend when matplotlib is loaded; the explorer needs only
    its canvas, and the notebook's other figures must stay with the notebook's backend (inline).
    """
    backend = matplotlib.get_backend()
    from ipympl.backend_nbagg import Canvas, FigureManager

    if matplotlib.get_backend() != backend:
        matplotlib.use(backend)
    return Canvas, FigureManager


@dataclass(frozen=True)
class ExplorerState:
    """What the explorer shows: colour-by name, projection name, selected point index."""

    color_by: str
    projection: str
    selected: int


class EmbeddingExplorer:
    """Browse precomputed 2-D projections (one per checkpoint); hover, click, and see a point's nearest neighbours.

    Args:
        projections: name -> [N, 2] coordinates, one per checkpoint in training order, e.g.
            ``{"epoch 0": umap_2d(f0), "epoch 5": umap_2d(f5)}`` (all the same N >= 2, same point order).
        images: optional [N, C, H, W] floats in [0, 1]; the selected point's image and its neighbours' are shown.
        factors: optional name -> [N] values (nuisance factors such as colour or position)
            that can colour the points.
        label_names: names of the values: a mapping colour-by name -> names (a sequence indexed
            by value, or a mapping value -> name), or one sequence for the class labels.
        labels: optional [N] class labels, offered first as colour-by ``"class"``.
        features: optional name -> [N, D] features, one per projection with the same names: the
            representations the projections were made from. Neighbours are searched in them by cosine
            similarity; without them, by distance in the 2-D projection.
        k: how many neighbours the panel shows and the kNN vote counts (at most N - 1).

    Colour-by options, each for every projection:
        ``"class"`` (with labels), each factor's name, ``"none"`` (without labels or factors), and
        ``"kNN vote"`` (with labels): red where the majority label of the point's k nearest neighbours (among
        the shown points, in that checkpoint's features; ties to the nearer) is not its own. The wrong votes
        show where classes meet or overlap in what the encoder has learned.
        ``"new neighbours"`` (with two projections or more): how many of the point's k nearest neighbours were
        not among its k nearest at the previous checkpoint. Not "how far it moved": each UMAP is fitted on its
        own and each checkpoint's features come from a different network, so positions cannot be compared
        across checkpoints, but neighbourhoods can. It shows where and when training rearranges the space;
        the first checkpoint has none before it and is grey.

    Attributes:
        widget: the ipywidgets VBox to display (displaying the explorer displays it).
        color_by_control, projection_control, point_control: its Dropdown, SelectionSlider and BoundedIntText.
        info: HTML line describing the selected point; ``status``: HTML line naming the point under the mouse.
        panel: HTML panel with the selected point's image and its k nearest neighbours (CSS class ``PANEL_CLASS``),
            each with its label; a neighbour of another class is framed in red and marked ✗.
        state: the current :class:`ExplorerState`; ``hovered``: the point under the mouse or ``None``.
        figure: the matplotlib Figure on the ipympl canvas (``figure.canvas``, a widget inside ``widget``).
        last_xy, last_colors: [N, 2] coordinates and [N, 4] RGBA colours of the drawn points.
        last_neighbours: [k] indices of the selected point's neighbours, nearest first.
        last_image: [H, W] or [H, W, 3] pixels of the selected point's image (``None`` without images).

    UMAP over training, as in [1], shows classes separate as contrastive training proceeds.

    [1] Chen et al., A Simple Framework for Contrastive Learning of Visual Representations (SimCLR), 2020.
    """

    def __init__(
        self,
        projections: Mapping[str, torch.Tensor | np.ndarray],
        images: torch.Tensor | np.ndarray | None = None,
        factors: Mapping[str, torch.Tensor | np.ndarray] | None = None,
        label_names: LabelNames | Mapping[str, LabelNames] | None = None,
        *,
        labels: torch.Tensor | np.ndarray | None = None,
        features: Mapping[str, torch.Tensor | np.ndarray] | None = None,
        k: int = 8,
    ) -> None:
        if not isinstance(projections, Mapping) or not projections:
            raise ValueError("projections must be a non-empty dict name -> [N, 2] coordinates")
        self.projections = {str(name): check_xy(xy, f"projections[{name!r}]") for name, xy in projections.items()}
        self.n_points = len(next(iter(self.projections.values())))
        for name, xy in self.projections.items():
            if len(xy) != self.n_points:
                raise ValueError(f"all projections must have the same N; got {self.n_points} and {len(xy)} ({name!r})")
        if self.n_points < 2:
            raise ValueError("projections must hold at least 2 points (a point needs neighbours)")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        self.k = min(int(k), self.n_points - 1)
        self.images = None if images is None else check_images(images, self.n_points)
        self.features = self._check_features(features)
        self.color_values = self._collect_color_values(labels, factors)
        self.labels = self.color_values.get(CLASS)
        self.label_names = self._names_per_color_by(label_names)
        self._static_colors = {name: point_colors(values, self.label_names.get(name))  # fails now, not in a callback
                               for name, values in self.color_values.items()}
        derived = [KNN_VOTE] if self.labels is not None else []
        derived += [NEW_NEIGHBOURS] if len(self.projections) > 1 else []
        self.color_options = list(self.color_values) + derived

        self.state = ExplorerState(self.color_options[0], next(iter(self.projections)), 0)
        self.hovered: int | None = None
        self._neighbours: dict[str, Neighbours] = {}
        self._build_widgets()
        self._build_figure()
        self._redraw(refit=True)

    def _check_features(self, features) -> dict[str, np.ndarray] | None:
        if features is None:
            return None
        names = [str(name) for name in features] if isinstance(features, Mapping) else None
        if names is None or sorted(names) != sorted(self.projections):
            raise ValueError(f"features must map each projection's name {list(self.projections)} to [N, D] "
                             f"features, got names {names}")
        checked = {}
        for name, value in features.items():
            array = to_numpy(value).astype(np.float32)
            if array.ndim != 2 or array.shape[0] != self.n_points or array.shape[1] == 0:
                raise ValueError(f"features[{name!r}] must have shape [N, D] = [{self.n_points}, D], "
                                 f"got {list(array.shape)}")
            if not np.isfinite(array).all():
                raise ValueError(f"features[{name!r}] contains NaN or inf")
            checked[str(name)] = array
        return checked

    def _collect_color_values(self, labels, factors) -> dict[str, np.ndarray]:
        values = {}
        if labels is not None:
            values[CLASS] = to_numpy(labels)
        for name, factor in (factors or {}).items():
            if str(name) in (CLASS, NO_COLOR, *DERIVED):
                raise ValueError(f"a factor cannot be called {name!r}: the explorer has a colour-by option by that name")
            values[str(name)] = to_numpy(factor)
        for name, value in values.items():
            if value.shape != (self.n_points,):
                raise ValueError(f"{name!r} must have shape [N] = [{self.n_points}], got {list(value.shape)}")
        return values or {NO_COLOR: np.zeros(self.n_points, dtype=np.int64)}

    def _names_per_color_by(self, label_names) -> dict[str, LabelNames]:
        if label_names is None:
            return {}
        if isinstance(label_names, Mapping) and set(label_names) <= set(self.color_values):
            return dict(label_names)
        if CLASS not in self.color_values:
            raise ValueError(
                f"label_names must map colour-by names {list(self.color_values)} to names; "
                "a plain list names class labels, so pass labels= too"
            )
        return {CLASS: label_names}

    # -- the update methods the widgets and the canvas call ---------------------------------

    def set_color_by(self, name: str) -> None:
        """Colour the points by ``name``, one of ``color_options`` (see the class docstring)."""
        _check_choice("color_by", name, self.color_options)
        self._update(color_by=name)

    def set_projection(self, name: str) -> None:
        """Show the projection (checkpoint) called ``name``."""
        _check_choice("projection", name, self.projections)
        self._update(projection=name)

    def select_point(self, index: int) -> None:
        """Select point ``index`` (0 <= index < N): ring it and its neighbours, show their images in the panel."""
        self._update(selected=self._check_index(index))

    def hover_point(self, index: int | None) -> None:
        """Name point ``index`` in the status line and beside it on the canvas; ``None``: the mouse left the points."""
        index = None if index is None else self._check_index(index)
        if index == self.hovered:  # the mouse moved within the same point: nothing to redraw
            return
        self.hovered = index
        self._draw_hover()
        self.figure.canvas.draw_idle()

    def neighbours(self, projection: str) -> Neighbours:
        """The k nearest neighbours of every point in checkpoint ``projection``: its features, else its 2-D points."""
        _check_choice("projection", projection, self.projections)
        if projection not in self._neighbours:  # computed when first needed: a few ms per 1,000 points
            if self.features is None:
                found = nearest_neighbours(self.projections[projection], self.k, "euclidean")
            else:
                found = nearest_neighbours(self.features[projection], self.k, "cosine")
            self._neighbours[projection] = found
        return self._neighbours[projection]

    def point_on_canvas(self, index: int) -> tuple[float, float]:
        """Where point ``index`` is drawn: (x, y) in CSS pixels from the canvas's top-left corner (what a browser clicks)."""
        index = self._check_index(index)
        x, y = self._ax.transData.transform(self.projections[self.state.projection][index])
        ratio = self.figure.canvas.device_pixel_ratio
        return float(x / ratio), float((self.figure.bbox.height - y) / ratio)

    def _check_index(self, index) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < self.n_points:
            raise ValueError(f"index must be an int in [0, {self.n_points - 1}], got {index!r}")
        return int(index)

    def _update(self, **changes) -> None:
        new_state = replace(self.state, **changes)
        if new_state == self.state:  # a widget echoing a change made in code
            return
        refit = new_state.projection != self.state.projection
        self.state = new_state
        # Keep the controls in step when a method is called from code; their echo returns above.
        self.color_by_control.value = new_state.color_by
        self.projection_control.value = new_state.projection
        self.point_control.value = new_state.selected
        self._redraw(refit)

    def _on_pick(self, event) -> None:
        """Select the picked point nearest the click (matplotlib pick_event)."""
        if event.artist is not self._scatter or len(event.ind) == 0:
            return
        self.select_point(self._nearest(event.ind, event.mouseevent.xdata, event.mouseevent.ydata))

    def _on_hover(self, event) -> None:
        """Name the point under the mouse (matplotlib motion_notify_event), or none when it is over no point."""
        hit, details = self._scatter.contains(event) if event.inaxes is self._ax else (False, {})
        self.hover_point(self._nearest(details["ind"], event.xdata, event.ydata) if hit else None)

    def _nearest(self, candidates, x: float, y: float) -> int:
        candidates = np.asarray(candidates)
        distances = ((self.projections[self.state.projection][candidates] - np.array([x, y])) ** 2).sum(axis=1)
        return int(candidates[np.argmin(distances)])

    # -- widgets and drawing ----------------------------------------------------------------

    def _build_widgets(self) -> None:
        self.color_by_control = widgets.Dropdown(
            options=self.color_options, value=self.state.color_by, description="colour by"
        )
        self.projection_control = widgets.SelectionSlider(
            options=list(self.projections),
            value=self.state.projection,
            description="checkpoint",
            continuous_update=False,  # redraw once the slider is released, not at every option it passes
        )
        self.point_control = widgets.BoundedIntText(value=0, min=0, max=self.n_points - 1, description="point")
        self.info = widgets.HTML()
        self.status = widgets.HTML(HOVER_HINT)
        self.panel = widgets.HTML(layout=widgets.Layout(width="256px"))
        self.color_by_control.observe(lambda change: self.set_color_by(change["new"]), names="value")
        self.projection_control.observe(lambda change: self.set_projection(change["new"]), names="value")
        self.point_control.observe(lambda change: self.select_point(change["new"]), names="value")

    def _build_figure(self) -> None:
        # An ipympl canvas of our own, outside pyplot: the notebook's backend (inline) stays as it is.
        self.figure = Figure(figsize=(5.8, 4.2), dpi=100)  # 580 x 420 pixels: with the panel, a laptop's notebook width
        Canvas, FigureManager = _ipympl_classes()
        canvas = Canvas(self.figure)
        FigureManager(canvas, 0)  # routes the browser's mouse messages to the canvas
        canvas.header_visible = canvas.footer_visible = canvas.resizable = False  # no "Figure 0", no x/y readout
        self._ax = self.figure.add_axes([0.07, 0.02, 0.6, 0.9])  # the left margin is where ipympl's toolbar appears
        self._colorbar_ax = self.figure.add_axes([0.71, 0.1, 0.03, 0.75])
        self._scatter = self._ax.scatter(*self.projections[self.state.projection].T, s=marker_size(self.n_points),
                                         linewidths=0, picker=True, pickradius=PICK_RADIUS)
        rings = {"facecolors": "none", "edgecolors": "black"}
        self._neighbour_rings = self._ax.scatter([], [], s=50, linewidths=0.8, **rings)
        self._selected_ring = self._ax.scatter([], [], s=160, linewidths=2, **rings)
        self._hover_label = self._ax.annotate("", (0, 0), xytext=(8, 8), textcoords="offset points", fontsize="small",
                                              bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9})
        self._ax.set_xticks([])  # UMAP axes have no units
        self._ax.set_yticks([])
        canvas.mpl_connect("pick_event", self._on_pick)
        canvas.mpl_connect("motion_notify_event", self._on_hover)
        canvas.mpl_connect("axes_leave_event", lambda event: self.hover_point(None))
        self.widget = widgets.VBox([
            widgets.HBox([self.color_by_control, self.projection_control]),
            widgets.HBox([self.point_control, self.info]),
            self.status,
            widgets.HBox([canvas, self.panel], layout=widgets.Layout(flex_flow="row wrap")),  # narrow: panel below
        ])

    def _redraw(self, refit: bool = False) -> None:
        """Update the drawn points, key, rings and panel to the state; ``refit`` the view to a new projection."""
        state = self.state
        xy = self.projections[state.projection]
        self._scatter.set_offsets(xy)
        if refit:  # only then: a learner's zoom survives selecting a point or changing colours
            self._fit_limits(xy)
            self.figure.canvas.toolbar.update()  # its home/back buttons must not return to another projection's view
        self._ax.set_title(state.projection)
        colors, key_title = self._coloring(state.color_by, state.projection)
        self._scatter.set_facecolors(colors.rgba)
        self._draw_key(colors, key_title, state.color_by == NO_COLOR)

        self.last_neighbours = self.neighbours(state.projection).indices[state.selected]
        self.last_image = None if self.images is None else display_pixels(self.images[state.selected])[0]
        self._selected_ring.set_offsets(xy[[state.selected]])
        self._neighbour_rings.set_offsets(xy[self.last_neighbours])
        self._draw_hover()
        self.last_xy = np.asarray(self._scatter.get_offsets())
        self.last_colors = self._scatter.get_facecolors()
        self.info.value = self._describe_point(state.selected)
        self.panel.value = self._panel_html()
        self.figure.canvas.draw_idle()

    def _fit_limits(self, xy: np.ndarray) -> None:
        """Limits that show all of ``xy`` [N, 2] with equal units on both axes, the axes' box left as it is.

        Fixed boxes keep the legend in place and a point's pixels computable without drawing.
        """
        box = self._ax.get_position()
        width, height = box.width * self.figure.get_figwidth(), box.height * self.figure.get_figheight()
        low, high = xy.min(axis=0), xy.max(axis=0)
        centre, span = (low + high) / 2, 1.08 * (high - low)  # 4% margin on each side
        units_per_inch = max(span[0] / width, span[1] / height) or 1.0  # all points in one place: any scale
        self._ax.set_xlim(centre[0] - units_per_inch * width / 2, centre[0] + units_per_inch * width / 2)
        self._ax.set_ylim(centre[1] - units_per_inch * height / 2, centre[1] + units_per_inch * height / 2)

    def _coloring(self, color_by: str, projection: str) -> tuple[PointColors, str]:
        """Point colours and the legend's (or colour bar's) title for ``color_by`` at checkpoint ``projection``."""
        if color_by == KNN_VOTE:
            right = self._vote(projection) == self.labels
            legend = [(f"right ({100 * right.mean():.0f}%)", RIGHT), (f"wrong ({int((~right).sum())})", WRONG)]
            return PointColors(np.where(right[:, None], RIGHT, WRONG), legend, None), f"{self.k}-NN vote"
        if color_by == NEW_NEIGHBOURS:
            previous = self._previous(projection)
            if previous is None:
                grey = np.tile(NEUTRAL, (self.n_points, 1))
                return PointColors(grey, [("first checkpoint:\nnothing before it", NEUTRAL)], None), NEW_NEIGHBOURS
            scale = ScalarMappable(Normalize(0, self.k), cmap="viridis")
            counts = self._new_neighbours(projection, previous)
            return PointColors(scale.to_rgba(counts), [], scale), f"new neighbours (of {self.k})\nsince {previous}"
        return self._static_colors[color_by], color_by

    def _vote(self, projection: str) -> np.ndarray:
        return knn_vote(self.neighbours(projection).indices, self.labels)

    def _previous(self, projection: str) -> str | None:
        names = list(self.projections)
        position = names.index(projection)
        return names[position - 1] if position > 0 else None

    def _new_neighbours(self, projection: str, previous: str) -> np.ndarray:
        return new_neighbour_counts(self.neighbours(previous).indices, self.neighbours(projection).indices)

    def _draw_key(self, colors: PointColors, title: str, hidden: bool) -> None:
        if self._ax.get_legend() is not None:
            self._ax.get_legend().remove()
        self._colorbar_ax.clear()
        self._colorbar_ax.set_visible(colors.scale is not None and not hidden)
        if hidden:  # one colour needs no legend
            return
        if colors.scale is not None:
            self.figure.colorbar(colors.scale, cax=self._colorbar_ax, label=title)
        else:
            category_legend(self._ax, colors.legend, title)

    def _draw_hover(self) -> None:
        index = self.hovered
        self._hover_label.set_visible(index is not None)
        if index is None:
            self.status.value = HOVER_HINT
            return
        x, y = self.projections[self.state.projection][index]
        left, right = self._ax.get_xlim()
        on_right = x > (left + right) / 2  # put the label towards the middle, where it is not cut off
        self._hover_label.xy = (x, y)
        self._hover_label.set_position((-8 if on_right else 8, 8))
        self._hover_label.set_horizontalalignment("right" if on_right else "left")
        class_name = f": {self._named(CLASS, self.labels[index])}" if self.labels is not None else ""
        self._hover_label.set_text(f"{index}{class_name}")
        self.status.value = f"hover: {self._describe_point(index)} &middot; click to select it"

    def _describe_point(self, index: int) -> str:
        parts = [f"<b>point {index}</b>"] + [self._value_text(name, index) for name in self.color_options]
        return " &middot; ".join(part for part in parts if part)

    def _value_text(self, color_by: str, index: int) -> str:
        """``color_by``'s value for point ``index`` as HTML-safe text, e.g. ``class: 3 (cat)``; "" for none."""
        if color_by == NO_COLOR:
            return ""
        if color_by == KNN_VOTE:
            vote = self._vote(self.state.projection)[index]
            verdict = "right" if vote == self.labels[index] else "wrong"
            return f"{KNN_VOTE}: {html.escape(self._named(CLASS, vote))}, {verdict}"
        if color_by == NEW_NEIGHBOURS:
            previous = self._previous(self.state.projection)
            if previous is None:
                return ""
            count = self._new_neighbours(self.state.projection, previous)[index]
            return f"{NEW_NEIGHBOURS}: {count} of {self.k} since {html.escape(previous)}"
        return f"{html.escape(color_by)}: {html.escape(self._named(color_by, self.color_values[color_by][index]))}"

    def _named(self, color_by: str, value) -> str:
        """A value with its name when it has one, e.g. ``3 (cat)``."""
        value = value.item() if isinstance(value, np.generic) else value
        names = self.label_names.get(color_by)
        return f"{value} ({names[value]})" if names is not None and _has_name(names, value) else str(value)

    def _panel_html(self) -> str:
        """The selected point's image, then its k nearest neighbours with label and score; other classes in red."""
        index, projection = self.state.selected, self.state.projection
        found = self.neighbours(projection)
        own_class = "" if self.labels is None else f" &middot; {self._value_text(CLASS, index)}"
        where = (f"in the {html.escape(projection)} features, by cosine similarity" if found.metric == "cosine"
                 else f"in the {html.escape(projection)} 2-D projection (no features given), by distance")
        tiles = []
        for neighbour, score in zip(found.indices[index], found.scores[index]):
            other = self.labels is not None and self.labels[neighbour] != self.labels[index]
            label = "" if self.labels is None else html.escape(self._named(CLASS, self.labels[neighbour]))
            caption = f"#{neighbour} &middot; {score:.2f}<br>{'✗ ' if other else ''}{label}"
            tiles.append(self._tile(neighbour, 48, caption, other))
        n_other = sum(self.labels[j] != self.labels[index] for j in found.indices[index]) if self.labels is not None else 0
        other_line = f"<br>{n_other} of {self.k} of another class, framed in red" if self.labels is not None else ""
        return (
            f'<div class="{PANEL_CLASS}" style="font-size: 12px; line-height: 1.3">'
            f"<div><b>point {index}</b>{own_class}</div>"
            f"{self._tile(index, 80, '', False)}"
            f"<div>its {self.k} nearest neighbours {where}{other_line}</div>"
            f'<div style="display: grid; grid-template-columns: repeat(4, 60px); gap: 4px; margin-top: 4px">'
            f'{"".join(tiles)}</div></div>'
        )

    def _tile(self, index: int, size: int, caption: str, other_class: bool) -> str:
        frame = to_hex(WRONG) if other_class else "transparent"
        color = f"color: {to_hex(WRONG)}; " if other_class else ""
        image = ""
        if self.images is not None:
            image = (f'<img src="{_png_uri(self.images[index])}" width="{size}" alt="point {index}" '
                     f'style="image-rendering: pixelated; border: 3px solid {frame}"><br>')
        return f'<div style="{color}text-align: center; font-size: 10px">{image}{caption}</div>'

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def _png_uri(image: np.ndarray) -> str:
    """A [C, H, W] image in [0, 1] as a PNG data URI, for an <img> in HTML."""
    pixels, cmap = display_pixels(image)
    png = io.BytesIO()
    matplotlib.image.imsave(png, pixels, cmap=cmap, vmin=0, vmax=1, format="png")
    return "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii")


def _check_choice(what: str, name: str, choices) -> None:
    if name not in choices:
        raise ValueError(f"{what} must be one of {list(choices)}, got {name!r}")


def _has_name(names: LabelNames, value: object) -> bool:
    if isinstance(names, Mapping):
        return value in names
    return isinstance(value, int) and 0 <= value < len(names)


def embedding_explorer(
    projections: Mapping[str, torch.Tensor | np.ndarray],
    images: torch.Tensor | np.ndarray | None = None,
    factors: Mapping[str, torch.Tensor | np.ndarray] | None = None,
    label_names: LabelNames | Mapping[str, LabelNames] | None = None,
    *,
    labels: torch.Tensor | np.ndarray | None = None,
    features: Mapping[str, torch.Tensor | np.ndarray] | None = None,
    k: int = 8,
) -> EmbeddingExplorer:
    """Build an :class:`EmbeddingExplorer`; display it (or its ``.widget``) in a notebook.

    Shapes as in :class:`EmbeddingExplorer`: projections name -> [N, 2], images [N, C, H, W],
    factors name -> [N], labels [N], features name -> [N, D] (same names as the projections).
    """
    return EmbeddingExplorer(projections, images, factors, label_names, labels=labels, features=features, k=k)


def explore_embeddings(
    path: str | Path,
    images: torch.Tensor | np.ndarray | None = None,
    label_names: LabelNames | None = None,
    *,
    seed: int = 0,
) -> EmbeddingExplorer:
    """Open the representations ``clcourse embed`` wrote (``.npy`` or ``.csv``) in the explorer.

    The features are projected with UMAP (:func:`~clcourse.viz.umap_2d`, seeded), coloured by their
    labels, and searched for each point's nearest neighbours; ``images`` [N, C, H, W], in the file's
    order, are shown for the selected point and its neighbours.
    """
    from clcourse.runs import load_embeddings

    from .projection import umap_2d

    features, labels = load_embeddings(path)
    name = Path(path).stem
    return embedding_explorer({name: umap_2d(features, seed=seed)}, images, label_names=label_names,
                              labels=labels, features={name: features})
