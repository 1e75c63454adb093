"""An ipywidgets app to explore how an embedding space changes over training.

The projections are computed beforehand (UMAP costs seconds per fit, see
:mod:`clcourse.viz.projection`); the widgets only switch between them, recolour
the points and show the image behind a point.

The widget callbacks call :meth:`EmbeddingExplorer.set_color_by`,
:meth:`~EmbeddingExplorer.set_projection` and :meth:`~EmbeddingExplorer.select_point`,
which tests call directly: a headless notebook run never fires a callback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import ipywidgets as widgets
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from .output import show_figure
from .plots import LabelNames, check_images, check_xy, display_pixels, plot_embedding, point_colors, to_numpy

CLASS = "class"
NO_COLOR = "none"


@dataclass(frozen=True)
class ExplorerState:
    """What the explorer shows: colour-by name, projection name, selected point index."""

    color_by: str
    projection: str
    selected: int


class EmbeddingExplorer:
    """Switch between precomputed 2-D projections, recolour by class or factor, inspect a point's image.

    Args:
        projections: name -> [N, 2] coordinates, one per checkpoint, e.g.
            ``{"epoch 0": umap_2d(f0), "epoch 5": umap_2d(f5)}`` (all the same N, same point order).
        images: optional [N, C, H, W] floats in [0, 1]; the selected point's image is shown.
        factors: optional name -> [N] values (nuisance factors such as colour or position)
            that can colour the points.
        label_names: names of the values: a mapping colour-by name -> names (a sequence indexed
            by value, or a mapping value -> name), or one sequence for the class labels.
        labels: optional [N] class labels, offered first as colour-by ``"class"``.

    Attributes:
        widget: the ipywidgets VBox to display (displaying the explorer displays it).
        color_by_control, projection_control, point_control, info: its Dropdown, SelectionSlider,
            BoundedIntText and HTML line describing the selected point.
        state: the current :class:`ExplorerState`.
        figure: the matplotlib Figure that is redrawn on each change.
        last_xy, last_colors: [N, 2] coordinates and [N, 4] RGBA colours of the last drawn scatter.
        last_image: [H, W] or [H, W, 3] pixels of the last drawn selected image (``None`` without images).

    With an interactive matplotlib backend (``%matplotlib widget``, ipympl) clicking a point selects
    it; with the default inline backend the figure is a picture and the "point" box selects.

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
    ) -> None:
        if not isinstance(projections, Mapping) or not projections:
            raise ValueError("projections must be a non-empty dict name -> [N, 2] coordinates")
        self.projections = {str(name): check_xy(xy, f"projections[{name!r}]") for name, xy in projections.items()}
        self.n_points = len(next(iter(self.projections.values())))
        for name, xy in self.projections.items():
            if len(xy) != self.n_points:
                raise ValueError(f"all projections must have the same N; got {self.n_points} and {len(xy)} ({name!r})")
        self.images = None if images is None else check_images(images, self.n_points)
        self.color_values = self._collect_color_values(labels, factors)
        self.label_names = self._names_per_color_by(label_names)
        for name, values in self.color_values.items():  # fail now on a label without a name, not in a callback
            point_colors(values, self.label_names.get(name))

        self.state = ExplorerState(next(iter(self.color_values)), next(iter(self.projections)), 0)
        self.last_xy: np.ndarray | None = None
        self.last_colors: np.ndarray | None = None
        self.last_image: np.ndarray | None = None
        self._build_widgets()
        self._redraw()

    def _collect_color_values(self, labels, factors) -> dict[str, np.ndarray]:
        values = {}
        if labels is not None:
            values[CLASS] = to_numpy(labels)
        for name, factor in (factors or {}).items():
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

    # -- the update methods the widgets call ------------------------------------------------

    def set_color_by(self, name: str) -> None:
        """Colour the points by ``name``: ``"class"`` or a factor's name."""
        _check_choice("color_by", name, self.color_values)
        self._update(color_by=name)

    def set_projection(self, name: str) -> None:
        """Show the projection (checkpoint) called ``name``."""
        _check_choice("projection", name, self.projections)
        self._update(projection=name)

    def select_point(self, index: int) -> None:
        """Highlight point ``index`` (0 <= index < N) and show its image."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < self.n_points:
            raise ValueError(f"index must be an int in [0, {self.n_points - 1}], got {index!r}")
        self._update(selected=int(index))

    def _update(self, **changes) -> None:
        new_state = replace(self.state, **changes)
        if new_state == self.state:  # a widget echoing a change made in code
            return
        self.state = new_state
        # Keep the controls in step when a method is called from code; their echo returns above.
        self.color_by_control.value = new_state.color_by
        self.projection_control.value = new_state.projection
        self.point_control.value = new_state.selected
        self._redraw()

    def _on_pick(self, event) -> None:
        """Select the picked point nearest the click (matplotlib pick_event; interactive backends only)."""
        if event.artist is not self._scatter or len(event.ind) == 0:
            return
        click = np.array([event.mouseevent.xdata, event.mouseevent.ydata])
        candidates = np.asarray(event.ind)
        distances = ((self.projections[self.state.projection][candidates] - click) ** 2).sum(axis=1)
        self.select_point(int(candidates[np.argmin(distances)]))

    # -- widgets and drawing ----------------------------------------------------------------

    def _build_widgets(self) -> None:
        self.color_by_control = widgets.Dropdown(
            options=list(self.color_values), value=self.state.color_by, description="colour by"
        )
        self.projection_control = widgets.SelectionSlider(
            options=list(self.projections),
            value=self.state.projection,
            description="checkpoint",
            continuous_update=False,  # redraw once the slider is released, not at every option it passes
        )
        self.point_control = widgets.BoundedIntText(value=0, min=0, max=self.n_points - 1, description="point")
        self.info = widgets.HTML()
        self.color_by_control.observe(lambda change: self.set_color_by(change["new"]), names="value")
        self.projection_control.observe(lambda change: self.set_projection(change["new"]), names="value")
        self.point_control.observe(lambda change: self.select_point(change["new"]), names="value")

        backend = matplotlib.get_backend()
        self._live_canvas = "ipympl" in backend or backend == "widget"
        if self._live_canvas:  # the canvas is itself a widget that redraws in place and reports clicks
            with plt.ioff():
                self.figure = plt.figure(figsize=self._figsize())
            view = self.figure.canvas
        else:  # inline: a plain Figure (pyplot would display it a second time), shown as a picture
            self.figure = Figure(figsize=self._figsize())
            view = self.output = widgets.Output()
        self.figure.canvas.mpl_connect("pick_event", self._on_pick)
        controls = widgets.HBox([self.color_by_control, self.projection_control])
        self.widget = widgets.VBox([controls, widgets.HBox([self.point_control, self.info]), view])

    def _figsize(self) -> tuple[float, float]:
        return (10.0, 4.5) if self.images is not None else (7.0, 4.5)

    def _redraw(self) -> None:
        state = self.state
        xy = self.projections[state.projection]
        self.figure.clear()
        if self.images is not None:
            scatter_ax, image_ax = self.figure.subplots(1, 2, width_ratios=[2.2, 1])
        else:
            scatter_ax, image_ax = self.figure.subplots(1, 1), None
        plot_embedding(
            xy,
            self.color_values[state.color_by],
            ax=scatter_ax,
            title=state.projection,
            label_names=self.label_names.get(state.color_by),
            legend_title=state.color_by,
        )
        if state.color_by == NO_COLOR:  # one colour needs no legend
            scatter_ax.get_legend().remove()
        self._scatter = scatter_ax.collections[0]
        self._scatter.set_picker(5)  # pick radius in points
        selected = xy[state.selected]
        scatter_ax.scatter(*selected, s=180, facecolors="none", edgecolors="black", linewidths=2)
        if image_ax is not None:
            pixels, cmap = display_pixels(self.images[state.selected])
            image_ax.imshow(pixels, cmap=cmap, vmin=0, vmax=1)
            caption = self._value_text(state.color_by, state.selected)
            image_ax.set_title(f"point {state.selected}\n{caption}", fontsize="medium")
            image_ax.set_axis_off()
            self.last_image = pixels
        self.figure.tight_layout()

        self.last_xy = np.asarray(self._scatter.get_offsets())
        self.last_colors = self._scatter.get_facecolors()
        self.info.value = self._describe_point(state.selected)
        self._show()

    def _describe_point(self, index: int) -> str:
        parts = [f"<b>point {index}</b>"] + [self._value_text(name, index) for name in self.color_values]
        return " &middot; ".join(part for part in parts if part)

    def _value_text(self, color_by: str, index: int) -> str:
        if color_by == NO_COLOR:
            return ""
        value = self.color_values[color_by][index].item()
        names = self.label_names.get(color_by)
        named = f" ({names[value]})" if names is not None and _has_name(names, value) else ""
        return f"{color_by}: {value}{named}"

    def _show(self) -> None:
        if self._live_canvas:
            self.figure.canvas.draw_idle()
            return
        show_figure(self.output, self.figure)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def _check_choice(what: str, name: str, choices: Mapping) -> None:
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
) -> EmbeddingExplorer:
    """Build an :class:`EmbeddingExplorer`; display it (or its ``.widget``) in a notebook.

    Shapes as in :class:`EmbeddingExplorer`: projections name -> [N, 2], images [N, C, H, W],
    factors name -> [N], labels [N].
    """
    return EmbeddingExplorer(projections, images, factors, label_names, labels=labels)


def explore_embeddings(
    path: str | Path,
    images: torch.Tensor | np.ndarray | None = None,
    label_names: LabelNames | None = None,
    *,
    seed: int = 0,
) -> EmbeddingExplorer:
    """Open the representations ``clcourse embed`` wrote (``.npy`` or ``.csv``) in the explorer.

    The features are projected with UMAP (:func:`~clcourse.viz.umap_2d`, seeded) and coloured by
    their labels; ``images`` [N, C, H, W], in the file's order, are shown for the selected point.
    """
    from clcourse.runs import load_embeddings

    from .projection import umap_2d

    features, labels = load_embeddings(path)
    return embedding_explorer({Path(path).stem: umap_2d(features, seed=seed)}, images,
                              label_names=label_names, labels=labels)
