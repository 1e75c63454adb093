"""Procedural shapes: a dataset whose generative factors are all known.

Each image is one coloured shape on a grey textured background.  The class is
the shape; colour, position, scale, rotation and background texture are
nuisance factors drawn independently (unless ``correlated_color`` is set), and
every one of them is returned as a label.  A lesson can therefore measure what
an encoder learned (shape) versus what it could have used as a shortcut
(colour, texture): the idea of dSprites [1] and 3D Shapes [2], in colour and
small enough to generate in a notebook.

Rendering is vectorised over the batch: every shape is a signed distance
function (SDF) evaluated on a coordinate grid in the shape's own frame, and the
distance to the edge, in pixels, gives an anti-aliased coverage.  Most SDFs
follow Inigo Quilez's 2D distance functions [3].  The multi-object scenes of
`clcourse.data.scenes` draw with the same renderers (`shape_coverage`,
`texture_background`).

[1] Matthey et al., "dSprites: Disentanglement testing Sprites dataset", 2017.
[2] Burgess & Kim, "3D Shapes Dataset", 2018.
[3] Quilez, "2D distance functions", iquilezles.org/articles/distfunctions2d.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from clcourse.data.image_data import ImageData

SHAPE_NAMES = ("circle", "square", "triangle", "star", "cross", "heart")
COLOR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan")
TEXTURE_NAMES = ("plain", "stripes", "checker", "noise", "dots")
FACTOR_NAMES = ("shape", "color", "x", "y", "scale", "rotation", "texture")

# Bright, saturated fills (luminance >= 0.44) on a dark grey background (<= 0.32), so
# the shape stays visible after a random-grayscale augmentation.
COLOR_VALUES = torch.tensor(
    [
        [1.00, 0.20, 0.20],  # red
        [0.20, 0.85, 0.20],  # green
        [0.30, 0.50, 1.00],  # blue
        [1.00, 0.90, 0.10],  # yellow
        [0.95, 0.30, 0.95],  # magenta
        [0.10, 0.90, 0.90],  # cyan
    ]
)

# Continuous factors are reported as bin codes so every factor is categorical.
POSITION_BINS = 3  # x: left/centre/right, y: top/middle/bottom
SCALE_BINS = 3  # small/medium/large
ROTATION_BINS = 4  # quarter of the shape's symmetry period

# The angle after which each shape looks the same again (circle: any angle).
SYMMETRY_PERIOD = {
    "circle": 2 * math.pi,
    "square": math.pi / 2,
    "triangle": 2 * math.pi / 3,
    "star": 2 * math.pi / 5,
    "cross": math.pi / 2,
    "heart": 2 * math.pi,
}

# Shape radius as a fraction of the image half-width; every canonical shape fits a
# circle of radius ~1.05, so with this range and MARGIN no shape touches the border.
RADIUS_RANGE = (0.5, 0.8)
SHAPE_EXTENT = 1.05
MARGIN = 0.02
BACKGROUND_BASE = (0.02, 0.12)
BACKGROUND_AMPLITUDE = (0.10, 0.20)
TEXTURE_PERIOD = (0.25, 0.5)  # in half-widths: 4..8 pixels at 32x32


# --- signed distance functions of the canonical shapes (x right, y up; < 0 inside) ---


def _box(x: Tensor, y: Tensor, half_w: float, half_h: float) -> Tensor:
    qx, qy = x.abs() - half_w, y.abs() - half_h
    outside = torch.hypot(qx.clamp(min=0), qy.clamp(min=0))
    return outside + torch.maximum(qx, qy).clamp(max=0)


def _circle(x: Tensor, y: Tensor) -> Tensor:
    return torch.hypot(x, y) - 0.9


def _square(x: Tensor, y: Tensor) -> Tensor:
    return _box(x, y, 0.72, 0.72)


def _triangle(x: Tensor, y: Tensor) -> Tensor:
    # Equilateral, centroid at the origin, a vertex pointing up; folded into one edge.
    half_side, k = 0.9, math.sqrt(3.0)
    px = x.abs() - half_side
    py = y + half_side / k
    fold = px + k * py > 0
    px, py = torch.where(fold, (px - k * py) / 2, px), torch.where(fold, (-k * px - py) / 2, py)
    px = px - px.clamp(-2 * half_side, 0)
    return -torch.hypot(px, py) * torch.sign(py)


def _star(x: Tensor, y: Tensor) -> Tensor:
    # Five-pointed star, outer radius 1.05, fat enough spikes to survive 16x16: mirror into one spike.
    outer, inner_ratio = 1.05, 0.5
    k1x, k1y = 0.809016994375, -0.587785252292
    k2x, k2y = -k1x, k1y
    px = x.abs()
    py = y
    dot = (k1x * px + k1y * py).clamp(min=0)
    px, py = px - 2 * dot * k1x, py - 2 * dot * k1y
    dot = (k2x * px + k2y * py).clamp(min=0)
    px, py = px - 2 * dot * k2x, py - 2 * dot * k2y
    px = px.abs()
    py = py - outer
    bax, bay = inner_ratio * -k1y, inner_ratio * k1x - 1.0
    h = ((px * bax + py * bay) / (bax * bax + bay * bay)).clamp(0, outer)
    return torch.hypot(px - bax * h, py - bay * h) * torch.sign(py * bax - px * bay)


def _cross(x: Tensor, y: Tensor) -> Tensor:
    return torch.minimum(_box(x, y, 0.95, 0.32), _box(x, y, 0.32, 0.95))


def _heart(x: Tensor, y: Tensor) -> Tensor:
    # Quilez's heart has its tip at (0, 0) and lobes up to y ~ 1.1; centre (0, 0.552) and
    # scale 0.64 make it reach SHAPE_EXTENT (its lobes are its farthest points).
    scale = 0.64
    px = x.abs() * scale
    py = y * scale + 0.552
    lobe = torch.hypot(px - 0.25, py - 0.75) - math.sqrt(2.0) / 4
    to_top = (px**2 + (py - 1.0) ** 2)
    half = 0.5 * (px + py).clamp(min=0)
    to_diagonal = (px - half) ** 2 + (py - half) ** 2
    lower = torch.sqrt(torch.minimum(to_top, to_diagonal)) * torch.sign(px - py)
    return torch.where(px + py > 1.0, lobe, lower) / scale


_SDF = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "cross": _cross,
    "heart": _heart,
}


# --- background textures, in image coordinates; values in [0, 1] before base/amplitude ---


def _texture_pattern(
    texture: str, x: Tensor, y: Tensor, p: dict[str, Tensor], pixel: float, g: torch.Generator
) -> Tensor:
    """Pattern [M, S, S] in [0, 1] for M images of one texture; p holds their [M, 1, 1] params."""
    period = p["period"]
    shape = torch.broadcast_shapes(x.shape, y.shape, period.shape)
    if texture == "plain":
        return torch.zeros(shape)
    if texture == "stripes":
        along = (x * torch.cos(p["angle"]) + y * torch.sin(p["angle"])) / period + p["phase_x"]
        # A clipped sine: stripes with soft (anti-aliased) edges.
        return (0.5 + 1.5 * torch.sin(2 * math.pi * along)).clamp(0, 1)
    if texture == "checker":
        cells = torch.floor(x / period + p["phase_x"]) + torch.floor(y / period + p["phase_y"])
        return torch.remainder(cells, 2)
    if texture == "noise":
        return torch.rand(shape, generator=g)
    if texture == "dots":
        fx = torch.frac(x / period + p["phase_x"] + 8) - 0.5  # +8 keeps frac's argument positive
        fy = torch.frac(y / period + p["phase_y"] + 8) - 0.5
        distance = (torch.hypot(fx, fy) - 0.25) * period
        return (0.5 - distance / pixel).clamp(0, 1)
    raise AssertionError(f"unknown texture {texture!r}")


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


# --- rendering shared with the multi-object scenes (clcourse.data.scenes) ---


@dataclass(frozen=True)
class PixelGrid:
    """Pixel centres of an image of side S = ``size`` in [-1, 1], x right and y up; a pixel is ``pixel`` wide.

    ``x`` is float32 [1, 1, S] and ``y`` float32 [1, S, 1], so they broadcast against per-image [M, 1, 1]
    parameters to [M, S, S].
    """

    x: Tensor
    y: Tensor
    pixel: float
    size: int

    @classmethod
    def of(cls, size: int) -> PixelGrid:
        """The grid of an image of side ``size``."""
        pixel = 2.0 / size
        axis = (torch.arange(size, dtype=torch.float32) + 0.5) * pixel - 1
        return cls(axis.view(1, 1, -1), -axis.view(1, -1, 1), pixel, size)


def symmetry_periods() -> Tensor:
    """float32 [len(SHAPE_NAMES)]: `SYMMETRY_PERIOD` of every shape code, in radians."""
    return torch.tensor([SYMMETRY_PERIOD[name] for name in SHAPE_NAMES])


def draw_texture_params(n: int, g: torch.Generator) -> dict[str, Tensor]:
    """Random background settings of ``n`` images: name -> float32 [n] (base, amplitude, period, angle, phases)."""
    return {
        "base": _uniform(n, *BACKGROUND_BASE, g),
        "amplitude": _uniform(n, *BACKGROUND_AMPLITUDE, g),
        "period": _uniform(n, *TEXTURE_PERIOD, g),
        "angle": _uniform(n, 0.0, math.pi, g),
        "phase_x": torch.rand(n, generator=g),
        "phase_y": torch.rand(n, generator=g),
    }


def shape_coverage(
    shape: Tensor, centre_x: Tensor, centre_y: Tensor, radius: Tensor, angle: Tensor, grid: PixelGrid
) -> Tensor:
    """Anti-aliased coverage float32 [M, S, S] in [0, 1] of M shapes, one per image.

    Args:
        shape: int64 [M] codes into `SHAPE_NAMES`.
        centre_x, centre_y, radius: float32 [M], in grid units (the image spans [-1, 1], y up).
        angle: float32 [M], counter-clockwise rotation in radians.
        grid: the images' `PixelGrid`.

    A pixel's coverage is 0.5 minus its signed distance to the edge in pixels, clamped to [0, 1]:
    exactly 0.5 on the edge, so ``coverage > 0.5`` is the shape's hard mask.
    """
    coverage = torch.empty(len(shape), grid.size, grid.size)
    for code, name in enumerate(SHAPE_NAMES):
        idx = (shape == code).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        r, cos, sin = (t[idx].view(-1, 1, 1) for t in (radius, torch.cos(angle), torch.sin(angle)))
        dx, dy = grid.x - centre_x[idx].view(-1, 1, 1), grid.y - centre_y[idx].view(-1, 1, 1)
        # Rotate the grid by -angle into the shape's frame and divide by its radius.
        x, y = (cos * dx + sin * dy) / r, (cos * dy - sin * dx) / r
        distance_pixels = _SDF[name](x, y) * r / grid.pixel
        coverage[idx] = (0.5 - distance_pixels).clamp(0, 1)
    return coverage


def texture_background(texture: Tensor, params: dict[str, Tensor], grid: PixelGrid, g: torch.Generator) -> Tensor:
    """Grey backgrounds float32 [M, S, S] in [0, 1]: ``base + amplitude * pattern`` of each image's texture.

    Args:
        texture: int64 [M] codes into `TEXTURE_NAMES`.
        params: from `draw_texture_params` (float32 [M] each).
        grid: the images' `PixelGrid`.
        g: draws the "noise" texture's pixels.
    """
    background = torch.empty(len(texture), grid.size, grid.size)
    for code, name in enumerate(TEXTURE_NAMES):
        idx = (texture == code).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        p = {key: value[idx].view(-1, 1, 1) for key, value in params.items()}
        pattern = _texture_pattern(name, grid.x, grid.y, p, grid.pixel, g)
        background[idx] = p["base"] + p["amplitude"] * pattern
    return background


def _bin(u: Tensor, bins: int) -> Tensor:
    return (u * bins).long().clamp(max=bins - 1)


def make_shapes(
    n: int, image_size: int = 32, seed: int = 0, *, correlated_color: float = 0.0
) -> ImageData:
    """Generate ``n`` images of coloured shapes on textured backgrounds.

    Deterministic: the same ``(n, image_size, seed, correlated_color)`` gives the
    same factors on every machine and the same pixels up to float rounding.
    Fast: the whole batch is rendered with tensor operations (10,000 images of
    32x32 take well under a second on one core).

    Factors (all int64 [N] codes; ``labels == factors["shape"]``):
        - ``"shape"``: index into `SHAPE_NAMES` (circle, square, triangle, star, cross, heart).
        - ``"color"``: index into `COLOR_NAMES`, fill `COLOR_VALUES[color]` (solid, exact).
        - ``"x"``, ``"y"``: position of the centre in `POSITION_BINS` = 3 bins
          (x: 0 left .. 2 right; y: 0 top .. 2 bottom), relative to the range a
          shape of that size can move in.
        - ``"scale"``: size in `SCALE_BINS` = 3 bins (0 small .. 2 large).
        - ``"rotation"``: `ROTATION_BINS` = 4 bins of the angle *within the shape's
          symmetry period* (`SYMMETRY_PERIOD`: square and cross 90 deg, triangle
          120 deg, star 72 deg, heart 360 deg).  Angles are drawn only within that
          period, so two images with the same code are rotated alike, and a rotated
          square (a diamond) is still a square: rotation never turns one class into
          another.  The circle looks the same at every angle; its rotation code is
          drawn but invisible.
        - ``"texture"``: index into `TEXTURE_NAMES` (plain, stripes, checker, noise,
          dots), a grey pattern with random period, phase and orientation.

    Args:
        n: number of images N.
        image_size: side S in pixels; shapes are recognisable from 16 up.
        seed: seed of the CPU generator that draws every factor.
        correlated_color: probability p that an image's colour is the fixed
            function ``color = shape`` (red circles, green squares, ...) instead
            of uniform.  p > 0 plants a spurious correlation: an encoder can
            classify by colour, a shortcut that fails when p = 0 at test time.

    Returns:
        `ImageData`: images float32 [N, 3, S, S] in [0, 1], labels int64 [N],
        factors as above.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
    if not 0.0 <= correlated_color <= 1.0:
        raise ValueError(f"correlated_color must be a probability in [0, 1], got {correlated_color!r}")

    g = torch.Generator().manual_seed(seed)
    shape = torch.randint(len(SHAPE_NAMES), (n,), generator=g)
    color = torch.randint(len(COLOR_NAMES), (n,), generator=g)
    color = torch.where(torch.rand(n, generator=g) < correlated_color, shape % len(COLOR_NAMES), color)
    u_scale, u_x, u_y, u_rotation = torch.rand(4, n, generator=g)
    texture = torch.randint(len(TEXTURE_NAMES), (n,), generator=g)
    texture_params = draw_texture_params(n, g)

    radius = RADIUS_RANGE[0] + (RADIUS_RANGE[1] - RADIUS_RANGE[0]) * u_scale
    travel = 1.0 - MARGIN - SHAPE_EXTENT * radius  # how far the centre may move from the middle
    centre_x = (2 * u_x - 1) * travel
    centre_y = (1 - 2 * u_y) * travel  # y points up, so u_y = 0 is the top
    angle = u_rotation * symmetry_periods()[shape]

    grid = PixelGrid.of(image_size)
    coverage = shape_coverage(shape, centre_x, centre_y, radius, angle, grid)
    background = texture_background(texture, texture_params, grid, g)
    fill = COLOR_VALUES[color].view(n, 3, 1, 1)
    coverage = coverage.unsqueeze(1)
    images = background.unsqueeze(1) * (1 - coverage) + fill * coverage

    factors = {
        "shape": shape,
        "color": color,
        "x": _bin(u_x, POSITION_BINS),
        "y": _bin(u_y, POSITION_BINS),
        "scale": _bin(u_scale, SCALE_BINS),
        "rotation": _bin(u_rotation, ROTATION_BINS),
        "texture": texture,
    }
    return ImageData(images, shape.clone(), factors)
