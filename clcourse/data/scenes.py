"""Procedural scenes: several shapes per image, with a class mask and a box for every object.

The dense counterpart of `clcourse.data.shapes`: each image holds one to a few of the same
coloured shapes on the same grey textured backgrounds, drawn with the same signed-distance
renderers [1], and the labels are those of segmentation and detection: a class per pixel and a
tight box per object, as in the synthetic multi-object sets used to study object-centric
learning (CLEVR [2], Multi-dSprites [3]).  Every label is exact by construction, so a lesson on
pixel-level contrast or open-world detection measures its model and not the annotators.

- The class is the shape (``SCENE_CLASSES``: background, then `SHAPE_NAMES`); colour, size,
  rotation and position are drawn independently of it, so colour is never a shortcut.
- Objects are drawn back to front and may overlap: the mask shows the class of the object on
  top, a box frames only the visible part of its object, and an object left with no visible
  pixel has no box.  Edges are anti-aliased in the image; the mask is hard, a pixel belongs to
  the object that covers more than half of it.
- ``classes=`` draws only some shapes (the "known" classes of an open-world lesson) while every
  class keeps its id, ``SHAPE_NAMES.index(name) + 1``.

[1] Quilez, "2D distance functions", iquilezles.org/articles/distfunctions2d.
[2] Johnson et al., "CLEVR: A Diagnostic Dataset for Compositional Language and Elementary
    Visual Reasoning", CVPR 2017.
[3] Burgess et al., "MONet: Unsupervised Scene Decomposition and Representation", 2019.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from clcourse.data.dense_data import DenseData, tight_boxes
from clcourse.data.shapes import (
    COLOR_VALUES,
    MARGIN,
    SHAPE_EXTENT,
    SHAPE_NAMES,
    TEXTURE_NAMES,
    PixelGrid,
    draw_texture_params,
    shape_coverage,
    symmetry_periods,
    texture_background,
)

__all__ = ["SCENE_CLASSES", "make_scenes"]

SCENE_CLASSES = ("background", *SHAPE_NAMES)  # mask value k is SCENE_CLASSES[k]

# Object radius in image half-widths: at 32 px, 3.5 to 6.4 pixels, so three objects fit side by side.
SCENE_RADIUS_RANGE = (0.22, 0.4)
# Each object takes the best of a few random positions (farthest from the objects already drawn):
# objects still overlap, but seldom hide one another completely.
PLACEMENT_TRIES = 4


def make_scenes(
    n: int,
    size: int = 32,
    seed: int = 0,
    max_objects: int = 3,
    min_objects: int = 1,
    *,
    classes: Sequence[str] | None = None,
) -> DenseData:
    """Generate ``n`` scenes of ``min_objects``..``max_objects`` coloured shapes on textured backgrounds.

    Deterministic: the same arguments give the same scenes (pixels up to float rounding across
    machines).  Vectorised over the images, with Python loops only over object slots and shape
    kinds: 2,000 scenes of 32 x 32 take about 0.25 s on one CPU core.

    Args:
        n: number of images N.
        size: side S in pixels, at least 16 (objects are 3.5 to 6.4 pixels in radius at 32).
        seed: seed of the CPU generator that draws everything.
        max_objects, min_objects: each image draws a uniform number of objects in
            [min_objects, max_objects]; ``min_objects=0`` allows empty scenes.
        classes: the shape names (from `SHAPE_NAMES`) to draw, e.g. ``("circle", "square")``;
            ``None`` draws all.  Ids never change: a square is class
            ``SCENE_CLASSES.index("square")`` = 2 whichever classes are drawn.

    Returns:
        `DenseData` with
            - images float32 [N, 3, S, S] in [0, 1];
            - masks int64 [N, S, S]: 0 background, k = 1..6 the shape ``SCENE_CLASSES[k]`` on top;
            - boxes: per image float32 [n_i, 4], ``(x0, y0, x1, y1)`` in pixels (x1, y1 exclusive),
              the tight box of each visible object's mask pixels, in drawing order (back to front);
            - box_labels: per image int64 [n_i], each box's class;
            - class_names `SCENE_CLASSES`;
            - factors ``"num_objects"`` (int64 [N], visible objects, = n_i) and ``"texture"``
              (int64 [N], index into `TEXTURE_NAMES`).
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an int >= 16 (objects are unrecognisable below), got {size!r}")
    if not (isinstance(min_objects, int) and isinstance(max_objects, int) and 0 <= min_objects <= max_objects
            and max_objects >= 1):
        raise ValueError(f"need ints 0 <= min_objects <= max_objects with max_objects >= 1, got "
                         f"min_objects={min_objects!r}, max_objects={max_objects!r}")
    allowed = _class_codes(classes)

    g = torch.Generator().manual_seed(seed)
    slots = max_objects
    count = torch.randint(min_objects, max_objects + 1, (n,), generator=g)
    shape = allowed[torch.randint(len(allowed), (n, slots), generator=g)]
    color = torch.randint(len(COLOR_VALUES), (n, slots), generator=g)
    u_scale, u_rotation = torch.rand(2, n, slots, generator=g)
    u_position = torch.rand(n, slots, PLACEMENT_TRIES, 2, generator=g)
    texture = torch.randint(len(TEXTURE_NAMES), (n,), generator=g)
    texture_params = draw_texture_params(n, g)

    radius = SCENE_RADIUS_RANGE[0] + (SCENE_RADIUS_RANGE[1] - SCENE_RADIUS_RANGE[0]) * u_scale
    angle = u_rotation * symmetry_periods()[shape]
    centre_x, centre_y = _place(u_position, radius, count)

    grid = PixelGrid.of(size)
    images = texture_background(texture, texture_params, grid, g).unsqueeze(1).repeat(1, 3, 1, 1)
    owner = torch.full((n, size, size), -1, dtype=torch.long)  # slot of the object on top, -1 none
    coverage = torch.empty(n, size, size)
    for slot in range(slots):
        idx = (count > slot).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        coverage.zero_()
        coverage[idx] = shape_coverage(shape[idx, slot], centre_x[idx, slot], centre_y[idx, slot],
                                       radius[idx, slot], angle[idx, slot], grid)
        # lerp is exact at coverage 1 (it computes fill - (fill - image) * 0): interiors get the exact fill.
        images.lerp_(COLOR_VALUES[color[:, slot]].view(n, 3, 1, 1), coverage.unsqueeze(1))
        owner.masked_fill_(coverage > 0.5, slot)

    labels = shape + 1
    masks = torch.where(owner >= 0, labels.gather(1, owner.clamp(min=0).flatten(1)).view_as(owner), 0)
    boxes, visible = tight_boxes(owner.unsqueeze(1) == torch.arange(slots).view(1, -1, 1, 1))
    per_image = visible.sum(1)
    counts = per_image.tolist()
    return DenseData(
        images,
        masks,
        list(boxes[visible].split(counts)),
        list(labels[visible].split(counts)),
        SCENE_CLASSES,
        {"num_objects": per_image, "texture": texture},
    )


def _class_codes(classes: Sequence[str] | None) -> Tensor:
    """int64 codes into `SHAPE_NAMES` of the shape names to draw."""
    if classes is None:
        return torch.arange(len(SHAPE_NAMES))
    if isinstance(classes, str) or not all(isinstance(name, str) for name in classes):
        raise ValueError(f"classes must be a sequence of shape names from {SHAPE_NAMES}, got {classes!r}")
    unknown = [name for name in classes if name not in SHAPE_NAMES]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names from {SHAPE_NAMES}, at least one, got {tuple(classes)!r}")
    return torch.tensor([SHAPE_NAMES.index(name) for name in classes])


def _place(u_position: Tensor, radius: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """Object centres float32 [N, K] (x, y in grid units, y up) from candidates u_position [N, K, T, 2] in [0, 1).

    Every object stays inside the image; of its T candidate centres it takes the one whose gap to
    the nearest object drawn before it (distance minus both extents) is largest.
    """
    n, slots, _, _ = u_position.shape
    travel = (1.0 - MARGIN - SHAPE_EXTENT * radius)[..., None]  # [N, K, 1], how far a centre may move
    candidates_x = (2 * u_position[..., 0] - 1) * travel
    candidates_y = (1 - 2 * u_position[..., 1]) * travel  # u = 0 is the top, as in make_shapes
    centre_x, centre_y = torch.empty(n, slots), torch.empty(n, slots)
    for slot in range(slots):
        gap = torch.full(candidates_x[:, slot].shape, torch.inf)  # [N, T]
        for earlier in range(slot):
            distance = torch.hypot(candidates_x[:, slot] - centre_x[:, earlier, None],
                                   candidates_y[:, slot] - centre_y[:, earlier, None])
            extents = SHAPE_EXTENT * (radius[:, slot] + radius[:, earlier])[:, None]
            drawn = (count > earlier)[:, None]
            gap = torch.where(drawn, torch.minimum(gap, distance - extents), gap)
        best = gap.argmax(1, keepdim=True)  # ties (no earlier object) take the first candidate
        centre_x[:, slot] = candidates_x[:, slot].gather(1, best).squeeze(1)
        centre_y[:, slot] = candidates_y[:, slot].gather(1, best).squeeze(1)
    return centre_x, centre_y

