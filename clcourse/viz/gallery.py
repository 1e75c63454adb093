"""An ipywidgets gallery of augmented views: pick operations and strengths, see a grid of views.

Every operation of SimCLR's pipeline [1, App. A] (random resized crop, horizontal flip,
rotation, colour jitter, random grayscale, Gaussian blur) has a checkbox and one strength
slider. The gallery builds the matching :class:`clcourse.augment.BatchedAugment` and draws
one row per image: the original, then ``n_views`` random views.

The widget callbacks call :meth:`AugmentationGallery.set_enabled`,
:meth:`~AugmentationGallery.set_strength`, :meth:`~AugmentationGallery.set_n_views` and
:meth:`~AugmentationGallery.new_draw`, which tests call directly: a headless notebook run
never fires a callback.

[1] Chen et al., A Simple Framework for Contrastive Learning of Visual Representations
    (SimCLR), ICML 2020.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from clcourse.augment import BatchedAugment

from .output import show_figure
from .plots import check_images, display_pixels

__all__ = [
    "Operation",
    "OPERATIONS",
    "augment_from_settings",
    "AugmentationGallery",
    "image_rows",
    "views_figure",
    "operations_figure",
]


@dataclass(frozen=True)
class Operation:
    """One augmentation the gallery can switch on, and what its strength slider means.

    Attributes:
        label: the checkbox's text.
        strength: what the slider sets (its description).
        low, high, step: the slider's range.
        default: the slider's initial value (SimCLR's CIFAR-10 setting where it has one [1]).
        enabled: on when the gallery opens (SimCLR's CIFAR-10 pipeline: crop, flip, jitter, gray).
    """

    label: str
    strength: str
    low: float
    high: float
    step: float
    default: float
    enabled: bool


# In BatchedAugment's order of application. Probabilities that are not a slider are SimCLR's:
# colour jitter applied with p = 0.8, blur with p = 0.5 [1, App. A].
OPERATIONS: dict[str, Operation] = {
    "crop": Operation("random resized crop", "min area", 0.05, 1.0, 0.01, 0.08, True),
    "flip": Operation("horizontal flip", "probability", 0.0, 1.0, 0.05, 0.5, True),
    "rotation": Operation("rotation", "max degrees", 0.0, 180.0, 5.0, 30.0, False),
    "color": Operation("colour jitter", "strength s", 0.0, 2.0, 0.05, 0.5, True),
    "gray": Operation("grayscale", "probability", 0.0, 1.0, 0.05, 0.2, True),
    "blur": Operation("Gaussian blur", "max sigma (px)", 0.1, 3.0, 0.1, 2.0, False),
}


def augment_from_settings(size: int, enabled: Mapping[str, bool], strengths: Mapping[str, float]) -> BatchedAugment:
    """The :class:`~clcourse.augment.BatchedAugment` for switched-on operations and their strengths.

    Args:
        size: output side of the views.
        enabled: operation name (a key of `OPERATIONS`) -> on/off; missing names are off.
        strengths: operation name -> slider value; missing names take the default.

    An operation that is off gets its identity setting: crop area (1, 1), probabilities 0.
    Colour jitter of strength s is ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) with p = 0.8 [1, App. A].
    """
    unknown = (set(enabled) | set(strengths)) - set(OPERATIONS)
    if unknown:
        raise ValueError(f"unknown operations {sorted(unknown)}; known: {list(OPERATIONS)}")
    on = {name: bool(enabled.get(name, False)) for name in OPERATIONS}
    value = {name: float(strengths.get(name, op.default)) for name, op in OPERATIONS.items()}
    s = value["color"]
    return BatchedAugment(
        size,
        crop_scale=(value["crop"], 1.0) if on["crop"] else (1.0, 1.0),
        flip_p=value["flip"] if on["flip"] else 0.0,
        rotation_degrees=value["rotation"] if on["rotation"] else 0.0,
        jitter=(0.8 * s, 0.8 * s, 0.8 * s, min(0.5, 0.2 * s)),
        jitter_p=0.8 if on["color"] and s > 0 else 0.0,
        gray_p=value["gray"] if on["gray"] else 0.0,
        blur_p=0.5 if on["blur"] else 0.0,
        blur_sigma=(0.1, max(0.1, value["blur"])),
    )


def _views(augment: BatchedAugment, images: torch.Tensor, n_views: int, generator: torch.Generator) -> torch.Tensor:
    """[N, C, H, W] -> [N, n_views, C, S, S]: n_views batched calls, each sample its own parameters."""
    return torch.stack([augment(images, generator=generator) for _ in range(n_views)], dim=1)


def _draw_rows(figure: Figure, rows: Mapping[str, Sequence[np.ndarray]] | list[Sequence[np.ndarray]],
               column_titles: list[str] | None) -> None:
    """Draw rows of [C, H, W] images (e.g. arrays [K, C, H, W]) into ``figure``; a mapping's keys label the rows."""
    labels = list(rows) if isinstance(rows, Mapping) else None
    rows = list(rows.values()) if isinstance(rows, Mapping) else list(rows)
    n_cols = max(len(row) for row in rows)
    axes = figure.subplots(len(rows), n_cols, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            if c >= len(row):
                ax.set_axis_off()
                continue
            pixels, cmap = display_pixels(row[c])
            ax.imshow(pixels, cmap=cmap, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        if labels is not None:
            axes[r, 0].set_ylabel(labels[r], fontsize="small")
    for c, title in enumerate(column_titles or []):
        axes[0, c].set_title(title, fontsize="small")
    figure.tight_layout()


def image_rows(
    rows: Mapping[str, torch.Tensor] | list[torch.Tensor],
    column_titles: list[str] | None = None,
    *,
    scale: float = 1.3,
) -> Figure:
    """A grid of images given row by row, e.g. a query and its nearest neighbours.

    Args:
        rows: row label -> images [K, C, H, W] (floats in [0, 1], C = 1 or 3), or a list of
            such tensors (no labels). Rows may differ in length K.
        column_titles: titles of the first columns.
        scale: inches per image.

    Returns:
        the pyplot Figure (a notebook shows it at the end of the cell, like ``image_grid``).
    """
    arrays = {k: check_images(v, name=f"rows[{k!r}]") for k, v in rows.items()} if isinstance(rows, Mapping) \
        else [check_images(v, name=f"rows[{i}]") for i, v in enumerate(rows)]
    if not arrays:
        raise ValueError("rows must hold at least one row of images")
    values = list(arrays.values()) if isinstance(arrays, dict) else arrays
    figure = plt.figure(figsize=(scale * max(len(v) for v in values), scale * len(values)))
    _draw_rows(figure, arrays, column_titles)
    return figure


def views_figure(
    image: torch.Tensor,
    augments: Mapping[str, BatchedAugment],
    n_views: int = 6,
    *,
    seed: int = 0,
) -> Figure:
    """One row per augmentation pipeline: the original image, then ``n_views`` views of it.

    Args:
        image: [C, H, W] floats in [0, 1], C = 1 or 3.
        augments: row label -> batched pipeline ``augment(x [B, C, H, W], generator=g)``.
        n_views: views per row.
        seed: seeds the views (same seed, same figure).

    Returns:
        the pyplot Figure (a notebook shows it at the end of the cell, like ``image_grid``).
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        raise ValueError(f"image must be one tensor [C, H, W], got {getattr(image, 'shape', type(image).__name__)}")
    x = torch.from_numpy(check_images(image.unsqueeze(0)))
    generator = torch.Generator().manual_seed(seed)
    rows = {}
    for name, augment in augments.items():
        views = _views(augment, x, n_views, generator)[0]
        original = torch.nn.functional.interpolate(x, size=views.shape[-2:], mode="bilinear", antialias=True) \
            if views.shape[-2:] != x.shape[-2:] else x
        rows[name] = torch.cat([original.clamp(0, 1), views])
    titles = ["original"] + [f"view {i}" for i in range(1, n_views + 1)]
    return image_rows(rows, titles)


def operations_figure(
    image: torch.Tensor,
    operations: Iterable[str] = tuple(OPERATIONS),
    n_views: int = 6,
    *,
    strengths: Mapping[str, float] | None = None,
    seed: int = 0,
) -> Figure:
    """Each operation alone on one image: one row per operation, the original then ``n_views`` views.

    Args:
        image: [C, H, W] floats in [0, 1], C = 1 or 3.
        operations: names from `OPERATIONS`, one row each (in the given order).
        n_views: views per row.
        strengths: operation name -> strength; default: each operation's default. Flip, colour
            jitter and blur are applied with probability 1 here, so that every view shows them.
        seed: seeds the views (same seed, same figure).

    Returns:
        the pyplot Figure (a notebook shows it at the end of the cell, like ``image_grid``).
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        raise ValueError(f"image must be one tensor [C, H, W], got {getattr(image, 'shape', type(image).__name__)}")
    augments = {}
    for name in operations:
        if name not in OPERATIONS:
            raise ValueError(f"unknown operation {name!r}; known: {list(OPERATIONS)}")
        augment = augment_from_settings(image.shape[-1], {name: True}, strengths or {})
        if name == "flip":
            augment.flip_p = 1.0
        elif name == "color":
            augment.jitter_p = 1.0
        elif name == "blur":
            augment.blur_p = 1.0
        augments[OPERATIONS[name].label] = augment
    return views_figure(image, augments, n_views, seed=seed)


class AugmentationGallery:
    """Pick augmentation operations and strengths; see a grid of views of a few images.

    Args:
        images: [N, C, H, W] floats in [0, 1] (C = 1 or 3); the first ``max_images`` are shown.
        size: side of the views; default: the images' height.
        n_views: views per image.
        seed: seeds the views: the same settings and draw give the same grid.
        max_images: at most this many rows.

    Attributes:
        widget: the ipywidgets VBox to display (displaying the gallery displays it).
        checkboxes, sliders: operation name -> its Checkbox / FloatSlider.
        views_control, draw_button: the IntSlider of the number of views and the "new draw" Button.
        enabled, strengths: operation name -> on/off and slider value (the current settings).
        n_views, draw: views per image, and the index of the current random draw.
        augment: the :class:`~clcourse.augment.BatchedAugment` of the current settings.
        last_views: [rows, n_views, C, size, size] the views last drawn.
        figure: the matplotlib Figure redrawn on every change.

    Views of one image are what SimCLR asks the encoder to agree on [1].
    """

    def __init__(
        self,
        images: torch.Tensor,
        size: int | None = None,
        n_views: int = 6,
        *,
        seed: int = 0,
        max_images: int = 4,
    ) -> None:
        array = check_images(images)
        if not isinstance(max_images, int) or max_images < 1:
            raise ValueError(f"max_images must be an int >= 1, got {max_images!r}")
        self.images = torch.from_numpy(array[:max_images])
        self.size = int(size) if size is not None else self.images.shape[-2]
        if self.size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        _check_n_views(n_views)
        self.seed = seed
        self.n_views = n_views
        self.draw = 0
        self.enabled = {name: op.enabled for name, op in OPERATIONS.items()}
        self.strengths = {name: op.default for name, op in OPERATIONS.items()}
        self.augment = augment_from_settings(self.size, self.enabled, self.strengths)
        self.last_views: torch.Tensor | None = None
        self._build_widgets()
        self._redraw()

    # -- the update methods the widgets call ------------------------------------------------

    def set_enabled(self, name: str, on: bool) -> None:
        """Switch operation ``name`` (a key of `OPERATIONS`) on or off and redraw."""
        _check_operation(name)
        self._update(name, enabled=bool(on))

    def set_strength(self, name: str, value: float) -> None:
        """Set the strength of operation ``name`` within its slider's range and redraw."""
        _check_operation(name)
        op = OPERATIONS[name]
        if not op.low <= value <= op.high:
            raise ValueError(f"{name} {op.strength} must be in [{op.low}, {op.high}], got {value!r}")
        self._update(name, strength=float(value))

    def set_n_views(self, n_views: int) -> None:
        """Show ``n_views`` views per image and redraw."""
        _check_n_views(n_views)
        if n_views != self.n_views:
            self.n_views = n_views
            self.views_control.value = n_views
            self._redraw()

    def new_draw(self) -> None:
        """Draw fresh random views with the same settings."""
        self.draw += 1
        self._redraw()

    def _update(self, name: str, *, enabled: bool | None = None, strength: float | None = None) -> None:
        old = (self.enabled[name], self.strengths[name])
        if enabled is not None:
            self.enabled[name] = enabled
        if strength is not None:
            self.strengths[name] = strength
        if (self.enabled[name], self.strengths[name]) == old:  # a widget echoing a change made in code
            return
        # Keep the controls in step when a method is called from code; their echo returns above.
        self.checkboxes[name].value = self.enabled[name]
        self.sliders[name].value = self.strengths[name]
        self.sliders[name].disabled = not self.enabled[name]
        self.augment = augment_from_settings(self.size, self.enabled, self.strengths)
        self._redraw()

    # -- widgets and drawing ----------------------------------------------------------------

    def _build_widgets(self) -> None:
        self.checkboxes, self.sliders, rows = {}, {}, []
        for name, op in OPERATIONS.items():
            box = widgets.Checkbox(value=self.enabled[name], description=op.label, indent=False,
                                   layout=widgets.Layout(width="170px"))
            slider = widgets.FloatSlider(value=self.strengths[name], min=op.low, max=op.high, step=op.step,
                                         description=op.strength, disabled=not self.enabled[name],
                                         continuous_update=False,  # redraw once the slider is released
                                         style={"description_width": "100px"},
                                         layout=widgets.Layout(width="340px"))
            box.observe(lambda change, name=name: self.set_enabled(name, change["new"]), names="value")
            slider.observe(lambda change, name=name: self.set_strength(name, change["new"]), names="value")
            self.checkboxes[name], self.sliders[name] = box, slider
            rows.append(widgets.HBox([box, slider]))
        self.views_control = widgets.IntSlider(value=self.n_views, min=1, max=10, description="views",
                                               continuous_update=False)
        self.views_control.observe(lambda change: self.set_n_views(change["new"]), names="value")
        self.draw_button = widgets.Button(description="new draw", icon="refresh")
        self.draw_button.on_click(lambda _: self.new_draw())
        self.figure = Figure()
        self.output = widgets.Output()
        half = (len(rows) + 1) // 2
        controls = widgets.HBox([widgets.VBox(rows[:half]), widgets.VBox(rows[half:])])
        self.widget = widgets.VBox([controls, widgets.HBox([self.views_control, self.draw_button]), self.output])

    def _redraw(self) -> None:
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.draw]).generate_state(1)[0]))
        self.last_views = _views(self.augment, self.images, self.n_views, generator)
        self.figure.clear()
        self.figure.set_size_inches(1.3 * (1 + self.n_views), 1.3 * len(self.images))
        originals, views = self.images.numpy(), self.last_views.numpy()
        rows = [[originals[i], *views[i]] for i in range(len(originals))]  # views may differ in size
        _draw_rows(self.figure, rows, ["original"] + [f"view {i}" for i in range(1, self.n_views + 1)])
        self._show()

    def _show(self) -> None:
        show_figure(self.output, self.figure)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def _check_operation(name: str) -> None:
    if name not in OPERATIONS:
        raise ValueError(f"operation must be one of {list(OPERATIONS)}, got {name!r}")


def _check_n_views(n_views: int) -> None:
    if isinstance(n_views, bool) or not isinstance(n_views, int) or not 1 <= n_views <= 10:
        raise ValueError(f"n_views must be an int in [1, 10], got {n_views!r}")
