"""Static plots: an embedding scatter with thumbnails, and a grid of augmented views.

Both draw with matplotlib and return the Axes / Figure, so a notebook can add
to them or save them.

[1] Chen et al., A Simple Framework for Contrastive Learning of Visual Representations (SimCLR), 2020.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.offsetbox import AnnotationBbox, OffsetImage

# Beyond 20 distinct values, categorical colours stop being distinguishable: use a colour scale.
MAX_CATEGORIES = 20

LabelNames = Sequence[str] | Mapping[object, str]


def to_numpy(x: torch.Tensor | np.ndarray | Sequence) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def check_xy(xy: torch.Tensor | np.ndarray, name: str = "xy") -> np.ndarray:
    """Validate 2-D coordinates [N, 2]; return them as a float64 array."""
    xy = to_numpy(xy)
    if xy.ndim != 2 or xy.shape[1] != 2 or xy.shape[0] == 0:
        raise ValueError(f"{name} must have shape [N, 2] with N >= 1, got {list(xy.shape)}")
    xy = xy.astype(np.float64)
    if not np.isfinite(xy).all():
        raise ValueError(f"{name} contains NaN or inf")
    return xy


def check_images(images: torch.Tensor | np.ndarray, n: int | None = None, name: str = "images") -> np.ndarray:
    """Validate images [N, C, H, W], C in {1, 3}, floats in [0, 1]; return a float32 array."""
    array = to_numpy(images)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have shape [N, C, H, W] with C = 1 or 3, got {list(array.shape)}")
    if n is not None and array.shape[0] != n:
        raise ValueError(f"{name} must hold one image per point: expected {n}, got {array.shape[0]}")
    array = array.astype(np.float32)
    _check_unit_range(array, name)
    return array


def _check_unit_range(array: np.ndarray, name: str) -> None:
    low, high = float(array.min()), float(array.max())
    if low < -1e-4 or high > 1 + 1e-4:  # tolerance for float rounding in augmentations
        raise ValueError(
            f"{name} must be floats in [0, 1], got values in [{low:.3g}, {high:.3g}] (divide uint8 images by 255)"
        )


def display_pixels(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """[C, H, W] image -> (pixels for imshow, colormap): [H, W] and "gray" for C = 1, [H, W, 3] for C = 3."""
    image = np.clip(image, 0.0, 1.0)
    if image.shape[0] == 1:
        return image[0], "gray"
    return image.transpose(1, 2, 0), None


@dataclass
class PointColors:
    """Colours for a scatter: per point, plus what explains them (legend entries or a colour scale)."""

    rgba: np.ndarray  # [N, 4]
    legend: list[tuple[str, np.ndarray]]  # (name, rgba) per category; empty for a colour scale
    scale: ScalarMappable | None  # for a colorbar when the values are too many to name


def point_colors(values: np.ndarray, label_names: LabelNames | None = None) -> PointColors:
    """Colour points by ``values`` [N]: one colour per category (<= 20 distinct values), else a viridis scale.

    Integer values in [0, 20) keep the colour of their value (label 5 is the same colour in every plot, even
    one where label 4 is missing); other categories are coloured in their sorted order. ``label_names`` names
    categories: a sequence indexed by the (integer) value, or a mapping value -> name.
    """
    categories, codes = np.unique(values, return_inverse=True)
    if len(categories) <= MAX_CATEGORIES:
        numeric = np.issubdtype(categories.dtype, np.number) and not np.issubdtype(categories.dtype, np.bool_)
        by_value = (numeric and bool(np.all(categories == np.round(categories)))
                    and categories.min() >= 0 and categories.max() < MAX_CATEGORIES)
        slots = categories.astype(int) if by_value else np.arange(len(categories))
        palette = matplotlib.colormaps["tab10" if slots.max() < 10 else "tab20"](slots)
        legend = [(_category_name(value.item(), label_names), palette[i]) for i, value in enumerate(categories)]
        return PointColors(palette[codes.reshape(-1)], legend, None)
    if not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"labels with more than {MAX_CATEGORIES} distinct values must be numeric, got {values.dtype}")
    scale = ScalarMappable(Normalize(float(values.min()), float(values.max())), cmap="viridis")
    return PointColors(scale.to_rgba(values.astype(np.float64)), [], scale)


def _category_name(value: object, label_names: LabelNames | None) -> str:
    if label_names is None:
        return str(value)
    if isinstance(label_names, Mapping):
        if value not in label_names:
            raise ValueError(f"label_names has no name for label {value!r}; it names {list(label_names)}")
        return str(label_names[value])
    if not float(value).is_integer() or not 0 <= int(value) < len(label_names):
        raise ValueError(
            f"label_names has {len(label_names)} names, so labels must be ints in [0, {len(label_names) - 1}], "
            f"got {value!r}"
        )
    return str(label_names[int(value)])


def marker_size(n: int) -> float:
    """Scatter marker area (points^2) for ``n`` points: large when few, small enough that 10,000 do not merge."""
    return float(np.clip(10000 / n, 4, 40))


def category_legend(ax: Axes, entries: list[tuple[str, np.ndarray]], title: str | None = None) -> None:
    """A legend of round markers, ``entries`` (name, rgba) as :class:`PointColors` lists them, right of ``ax``."""
    handles = [Line2D([], [], marker="o", linestyle="", color=rgba, label=name) for name, rgba in entries]
    ax.legend(
        handles=handles,
        title=title,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),  # outside the axes: a legend must not hide points
        borderaxespad=0,
        frameon=False,
        fontsize="small",
        ncols=1 if len(handles) <= 10 else 2,
    )


def plot_embedding(
    xy: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | Sequence,
    images: torch.Tensor | np.ndarray | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    label_names: LabelNames | None = None,
    *,
    legend_title: str | None = None,
    n_thumbnails: int = 16,
    thumbnail_size: float = 20.0,
) -> Axes:
    """Scatter a 2-D embedding coloured by label, optionally with image thumbnails.

    Args:
        xy: [N, 2] coordinates, e.g. from :func:`clcourse.viz.umap_2d`.
        labels: [N] values that colour the points: class labels or a nuisance factor.
            Up to 20 distinct values get one colour each and a legend; more get a
            colour scale and a colorbar.
        images: optional [N, C, H, W] floats in [0, 1] (C = 1 or 3), aligned with ``xy``;
            thumbnails are drawn at ``n_thumbnails`` points spread over the plot,
            framed in their point's colour.
        ax: the Axes to draw into; a new figure when ``None``.
        title: the Axes title.
        label_names: names for the legend: a sequence indexed by label, or a mapping label -> name.
        legend_title: the legend's (or colorbar's) title, e.g. the factor's name.
        n_thumbnails: how many thumbnails to draw (0 for none).
        thumbnail_size: a thumbnail's longer side, in points.

    Returns:
        The Axes; ``ax.collections[0]`` is the scatter.

    UMAP plots like this one are how [1] show the learned space is organised by class.
    """
    xy = check_xy(xy)
    n = len(xy)
    labels = to_numpy(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape [N] = [{n}] to match xy, got {list(labels.shape)}")
    colors = point_colors(labels, label_names)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 5))

    ax.scatter(xy[:, 0], xy[:, 1], c=colors.rgba, s=marker_size(n), linewidths=0)
    if colors.legend:
        category_legend(ax, colors.legend, legend_title)
    else:
        ax.figure.colorbar(colors.scale, ax=ax, label=legend_title)
    if images is not None:
        _add_thumbnails(ax, xy, check_images(images, n), colors.rgba, n_thumbnails, thumbnail_size)
    # UMAP axes have no units; only relative positions mean something.
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")
    if title is not None:
        ax.set_title(title)
    return ax


def _add_thumbnails(ax: Axes, xy: np.ndarray, images: np.ndarray, rgba: np.ndarray, count: int, size: float) -> None:
    zoom = size / max(images.shape[2:])
    for i in spread_out_points(xy, count):
        pixels, cmap = display_pixels(images[i])
        thumbnail = OffsetImage(pixels, cmap=cmap, norm=Normalize(0, 1), zoom=zoom)
        frame = {"edgecolor": rgba[i], "linewidth": 1.5}
        ax.add_artist(AnnotationBbox(thumbnail, tuple(xy[i]), pad=0.1, bboxprops=frame))


def spread_out_points(xy: np.ndarray, count: int) -> list[int]:
    """Indices of up to ``count`` points of ``xy`` [N, 2] spread over the plot (farthest-point sampling).

    Starts at the point nearest the centre; deterministic.
    """
    span = np.ptp(xy, axis=0)
    unit = (xy - xy.min(axis=0)) / np.where(span > 0, span, 1.0)  # equal weight to both axes
    first = int(np.argmin(((unit - unit.mean(axis=0)) ** 2).sum(axis=1)))
    chosen = [first] if count > 0 else []
    distance = ((unit - unit[first]) ** 2).sum(axis=1)
    while len(chosen) < count and distance.max() > 0:
        farthest = int(np.argmax(distance))
        chosen.append(farthest)
        distance = np.minimum(distance, ((unit - unit[farthest]) ** 2).sum(axis=1))
    return chosen


def image_grid(
    images: torch.Tensor | np.ndarray,
    titles: Sequence[str] | None = None,
    ncols: int = 8,
    scale: float = 1.2,
) -> Figure:
    """Show images [N, C, H, W] (C = 1 or 3, values in [0, 1]) in a grid, optionally titled.

    Returns the Figure.
    """
    array = check_images(images)
    n = len(array)
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles must hold one string per image: expected {n}, got {len(titles)}")
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, scale * nrows * (1.25 if titles else 1.0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            pixels, cmap = display_pixels(array[i])
            ax.imshow(pixels, cmap=cmap, vmin=0, vmax=1)
            if titles is not None:
                ax.set_title(titles[i], fontsize=7)
    fig.tight_layout()
    return fig


def show_views(
    images: torch.Tensor | np.ndarray,
    pipeline: Callable,
    n_views: int = 4,
    generator: torch.Generator | None = None,
    *,
    batched: bool | None = None,
    max_images: int = 8,
) -> Figure:
    """Show what an augmentation pipeline makes of a few images: one row per image, original then views.

    Args:
        images: [N, C, H, W] (or one [C, H, W]) floats in [0, 1], C = 1 or 3; the first
            ``max_images`` are shown.
        pipeline: either a per-sample callable on one [C, H, W] tensor (e.g. a
            ``torchvision.transforms.v2`` pipeline) or a batched callable
            ``pipeline(x [B, C, H, W], generator=...) -> [B, C, H', W']`` (e.g.
            :class:`clcourse.augment.BatchedAugment`).
        n_views: views per image.
        generator: CPU ``torch.Generator`` that makes the views reproducible. A batched
            pipeline receives it; for a per-sample pipeline (which draws from torch's
            global RNG) it seeds that RNG inside a fork, leaving the global state untouched.
        batched: which kind ``pipeline`` is; ``None`` detects it: batched when it has
            ``sample_params`` or takes a ``generator`` argument.
        max_images: at most this many rows.

    Returns:
        The Figure: rows = images, columns = original + ``n_views`` views.

    Two views of the same image are a positive pair in [1].
    """
    if not callable(pipeline):
        raise TypeError(f"pipeline must be callable, got {type(pipeline).__name__}")
    if not isinstance(n_views, int) or n_views < 1:
        raise ValueError(f"n_views must be an int >= 1, got {n_views!r}")
    originals = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if originals.ndim == 3:
        originals = originals.unsqueeze(0)
    check_images(originals)
    originals = originals[:max_images].float()
    if batched is None:
        batched = _looks_batched(pipeline)
    make_views = _batched_views if batched else _per_sample_views
    views = make_views(originals, pipeline, n_views, generator)

    rows, cols = len(originals), 1 + n_views
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False)
    for row in range(rows):
        shown = [originals[row]] + views[row]
        for col, image in enumerate(shown):
            pixels, cmap = display_pixels(to_numpy(image).astype(np.float32))
            axes[row, col].imshow(pixels, cmap=cmap, vmin=0, vmax=1)
            axes[row, col].set_axis_off()
    axes[0, 0].set_title("original", fontsize="small")
    for col in range(1, cols):
        axes[0, col].set_title(f"view {col}", fontsize="small")
    fig.tight_layout()
    return fig


def _looks_batched(pipeline: Callable) -> bool:
    if hasattr(pipeline, "sample_params"):
        return True
    try:
        return "generator" in inspect.signature(pipeline).parameters
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return False


def _per_sample_views(
    originals: torch.Tensor, pipeline: Callable, n_views: int, generator: torch.Generator | None
) -> list[list[torch.Tensor]]:
    # torchvision transforms draw from the global RNG: seed it from the generator, inside a fork.
    fork = torch.random.fork_rng(devices=[]) if generator is not None else contextlib.nullcontext()
    with fork:
        if generator is not None:
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        views = [[_check_view(pipeline(image), image.ndim) for _ in range(n_views)] for image in originals]
    return views


def _batched_views(
    originals: torch.Tensor, pipeline: Callable, n_views: int, generator: torch.Generator | None
) -> list[list[torch.Tensor]]:
    batches = [_check_view(pipeline(originals, generator=generator), originals.ndim) for _ in range(n_views)]
    if any(len(batch) != len(originals) for batch in batches):
        raise ValueError(f"a batched pipeline must return one view per image ({len(originals)})")
    return [[batch[i] for batch in batches] for i in range(len(originals))]


def _check_view(view: object, ndim: int) -> torch.Tensor:
    if not isinstance(view, torch.Tensor):
        raise TypeError(
            f"pipeline must return a tensor, got {type(view).__name__} "
            "(end a PIL pipeline with v2.ToImage(), v2.ToDtype(torch.float32, scale=True))"
        )
    if view.ndim != ndim or view.shape[-3] not in (1, 3):
        kind = "[C, H, W]" if ndim == 3 else "[B, C, H, W]"
        raise ValueError(f"pipeline must return {kind} with C = 1 or 3, got {list(view.shape)}")
    return view.detach().cpu()
