"""Procedural medical-like slices: an organ with a few lesions, imaged by one of two "scanners".

Real medical images are scarce, labelled by experts and hard to share; a lesson on contrastive
pre-training for medical segmentation (PCRL [1]) needs data it can generate, with exact lesion
masks, and a domain shift to show why pre-training on the target scanner's unlabelled images
helps.  Each grayscale slice is built in two steps:

1. Anatomy (from the seed only): a body (an ellipse of soft tissue in dark air), an organ
   inside it (a brighter ellipse whose outline is deformed by low-frequency harmonics), gentle
   low-frequency tissue texture, and 0-3 lesions inside the organ: blobs of random size,
   elongation and edge softness, mostly darker than the organ (hypo-intense, as most liver
   lesions in CT), some brighter, some so faint that they hide in the noise.
2. Scanner: an intensity response (gain, offset, gamma), a smooth multiplicative bias field
   (the slow intensity drift of MR coils [2]) and Rician noise, the noise of MR magnitude
   images [3].  Scanner "B" has lower contrast, twice the noise and a stronger bias than "A",
   so a segmenter trained on "A" loses accuracy on "B".

The same seed gives the same anatomy on both scanners: masks and boxes are identical, only the
pixels differ, so a lesson can measure the shift alone.

[1] Zhou et al., "Preservational Learning Improves Self-supervised Medical Image Models by
    Reconstructing Diverse Contexts" (PCRL), ICCV 2021.
[2] Sled, Zijdenbos & Evans, "A nonparametric method for automatic correction of intensity
    nonuniformity in MRI data", IEEE TMI 1998.
[3] Gudbjartsson & Patz, "The Rician distribution of noisy MRI data", Magn. Reson. Med. 1995.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from clcourse.data.dense_data import DenseData, tight_boxes
from clcourse.data.shapes import PixelGrid

__all__ = ["LESION_CLASSES", "SCANNERS", "Scanner", "make_lesions"]

LESION_CLASSES = ("background", "lesion")

MAX_LESIONS = 3
HARMONICS = (2, 3, 4)  # the outline wobbles: an ellipse times 1 + sum of a_k cos(k theta + phi_k)
LESION_RADIUS = (0.04, 0.13)  # semi-major axis in image half-widths: 1.3 to 4.2 pixels at 64 x 64
LESION_CONTRAST = (0.04, 0.3)  # |intensity change| against the organ, log-uniform: the low end is faint
DARK_LESION_P = 0.7
LESION_PLACEMENT_TRIES = 10  # candidate centres per lesion; one that cannot avoid the others is dropped


@dataclass(frozen=True)
class Scanner:
    """How a scanner turns anatomy (clean intensities in [0, 1]) into an image.

    ``offset + gain * clean ** gamma``, times ``exp(bias * field)`` with a smooth random field in
    [-1, 1], plus Rician noise of standard deviation ``noise``.
    """

    gain: float
    offset: float
    gamma: float
    bias: float
    noise: float


SCANNERS = {
    "A": Scanner(gain=1.0, offset=0.0, gamma=1.0, bias=0.1, noise=0.025),
    # Flatter response (gamma < 1 lifts the dark end and compresses organ-lesion contrast),
    # brighter background, a stronger bias field and more noise.
    "B": Scanner(gain=0.8, offset=0.1, gamma=0.6, bias=0.35, noise=0.05),
}


class _Anatomy(NamedTuple):
    """Clean intensities float32 [N, S, S] in [0, 1], organ bool [N, S, S], lesions bool [N, L, S, S]."""

    clean: Tensor
    organ: Tensor
    lesions: Tensor


def make_lesions(n: int, size: int = 64, seed: int = 0, scanner: str = "A") -> DenseData:
    """Generate ``n`` grayscale slices of an organ with 0-3 lesions, as imaged by ``scanner``.

    Each slice draws 0, 1, 2 or 3 lesions with equal chance; a lesion that finds no room clear of
    the others is left out (about 3 lesions in 100, mostly the third of a slice).

    Deterministic: the same arguments give the same images; the same ``(n, size, seed)`` gives
    the same anatomy, masks and boxes on both scanners.  Vectorised over the images: 2,000
    slices of 64 x 64 take about 1.5 s on one CPU core.

    Args:
        n: number of images N.
        size: side S in pixels, at least 32 (the smallest lesions are 1.3 pixels in radius at 64).
        seed: seed of the CPU generator that draws everything.
        scanner: ``"A"`` (the source domain) or ``"B"`` (shifted contrast, noise and bias), see `SCANNERS`.

    Returns:
        `DenseData` with
            - images float32 [N, 1, S, S] in [0, 1];
            - masks int64 [N, S, S]: 1 on lesion pixels (a lesion's blob covers the pixel's centre,
              inside the organ), 0 elsewhere;
            - boxes: per image float32 [n_i, 4], ``(x0, y0, x1, y1)`` in pixels (x1, y1 exclusive),
              the tight box of each lesion's mask pixels (lesions never touch one another);
            - box_labels: per image int64 [n_i], all 1;
            - class_names `LESION_CLASSES` = ("background", "lesion");
            - factors ``"scanner"`` (int64 [N], 0 for A, 1 for B) and ``"num_lesions"`` (int64 [N], = n_i).
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(size, int) or size < 32:
        raise ValueError(f"size must be an int >= 32 (small lesions vanish below), got {size!r}")
    if scanner not in SCANNERS:
        raise ValueError(f"scanner must be one of {sorted(SCANNERS)}, got {scanner!r}")

    g = torch.Generator().manual_seed(seed)
    grid = PixelGrid.of(size)
    anatomy = _draw_anatomy(n, grid, g)
    images = _image(anatomy.clean, SCANNERS[scanner], grid, g).unsqueeze(1)

    masks = anatomy.lesions.any(1).long()
    boxes, visible = tight_boxes(anatomy.lesions)
    per_image = visible.sum(1)
    counts = per_image.tolist()
    return DenseData(
        images,
        masks,
        list(boxes[visible].split(counts)),
        list(torch.ones(int(per_image.sum()), dtype=torch.long).split(counts)),
        LESION_CLASSES,
        {"scanner": torch.full((n,), list(SCANNERS).index(scanner)), "num_lesions": per_image},
    )


def _uniform(shape: tuple[int, ...], low: float, high: float, g: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=g)


def _wobbly_ellipse(grid: PixelGrid, centre: Tensor, axes: Tensor, angle: Tensor, wobble: Tensor,
                    phase: Tensor) -> Tensor:
    """Approximate signed distance in pixels float32 [M, S, S] (< 0 inside) to M deformed ellipses.

    centre, axes float32 [M, 2] (grid units); angle float32 [M] (radians); wobble, phase float32
    [M, len(HARMONICS)]: the outline is the ellipse scaled by ``1 + sum wobble_k cos(k theta + phase_k)``.
    """
    cos, sin = (f(angle).view(-1, 1, 1) for f in (torch.cos, torch.sin))
    dx, dy = grid.x - centre[:, 0].view(-1, 1, 1), grid.y - centre[:, 1].view(-1, 1, 1)
    u = (cos * dx + sin * dy) / axes[:, 0].view(-1, 1, 1)
    v = (cos * dy - sin * dx) / axes[:, 1].view(-1, 1, 1)
    theta = torch.atan2(v, u)
    outline = torch.ones_like(theta)
    for k, (amplitude, offset) in enumerate(zip(wobble.unbind(1), phase.unbind(1))):
        outline += amplitude.view(-1, 1, 1) * torch.cos(HARMONICS[k] * theta + offset.view(-1, 1, 1))
    # The normalised radius minus the outline, scaled by the short axis: exact on a circle, a
    # smooth underestimate elsewhere; enough for anti-aliasing and a hard "< 0" mask.
    return (torch.hypot(u, v) - outline) * axes.min(1).values.view(-1, 1, 1) / grid.pixel


def _harmonics(m: int, amplitude: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random outline wobble of m shapes: amplitudes in [0, amplitude) and phases, float32 [m, len(HARMONICS)]."""
    return _uniform((m, len(HARMONICS)), 0.0, amplitude, g), _uniform((m, len(HARMONICS)), 0.0, 2 * math.pi, g)


def _coverage(distance: Tensor) -> Tensor:
    """Anti-aliased coverage in [0, 1] from a signed distance in pixels (the edge at 0.5)."""
    return (0.5 - distance).clamp(0, 1)


def _draw_anatomy(n: int, grid: PixelGrid, g: torch.Generator) -> _Anatomy:
    """Body, organ, texture and lesions of n slices (see the module docstring), scanner-free."""
    body_wobble, organ_wobble, lesion_wobble = 0.03, 0.06, 0.06
    body_centre = _uniform((n, 2), -0.03, 0.03, g)
    body_axes = torch.stack([_uniform((n,), 0.82, 0.95, g), _uniform((n,), 0.68, 0.85, g)], 1)
    body = _wobbly_ellipse(grid, body_centre, body_axes, torch.zeros(n), *_harmonics(n, body_wobble, g))
    organ_centre = _uniform((n, 2), -0.1, 0.1, g)
    organ_axes = torch.stack([_uniform((n,), 0.45, 0.6, g), _uniform((n,), 0.35, 0.48, g)], 1)
    organ_angle = _uniform((n,), 0.0, math.pi, g)
    organ = _wobbly_ellipse(grid, organ_centre, organ_axes, organ_angle, *_harmonics(n, organ_wobble, g))
    organ = torch.maximum(organ, body)  # the intersection with the body: the organ never leaves it
    tissue = _uniform((n, 1, 1), 0.25, 0.35, g)
    organ_step = _uniform((n, 1, 1), 0.18, 0.28, g)

    # Low-frequency texture: a few plane waves.
    frequency = _uniform((n, 4), 0.5, 2.0, g) * math.pi  # per half-width: 0.5-2 cycles across the image
    direction = _uniform((n, 4), 0.0, 2 * math.pi, g)
    phase = _uniform((n, 4), 0.0, 2 * math.pi, g)
    texture = torch.zeros(n, grid.size, grid.size)
    for k in range(4):
        along = grid.x * direction[:, k].cos().view(-1, 1, 1) + grid.y * direction[:, k].sin().view(-1, 1, 1)
        texture += 0.015 * torch.cos(frequency[:, k].view(-1, 1, 1) * along + phase[:, k].view(-1, 1, 1))

    body_cover, organ_cover = _coverage(body), _coverage(organ)
    clean = body_cover * (tissue + texture) + organ_cover * organ_step
    organ_mask = organ < 0

    count = torch.randint(0, MAX_LESIONS + 1, (n,), generator=g)
    radius = _uniform((n, MAX_LESIONS), *LESION_RADIUS, g)
    aspect = _uniform((n, MAX_LESIONS), 0.65, 1.0, g)
    lesion_angle = _uniform((n, MAX_LESIONS), 0.0, math.pi, g)
    wobble, wobble_phase = (t.view(n, MAX_LESIONS, len(HARMONICS))
                            for t in _harmonics(n * MAX_LESIONS, lesion_wobble, g))
    softness = _uniform((n, MAX_LESIONS), 0.4, 1.2, g)  # edge width in pixels
    low, high = (math.log(c) for c in LESION_CONTRAST)
    contrast = _uniform((n, MAX_LESIONS), low, high, g).exp()
    contrast = torch.where(torch.rand(n, MAX_LESIONS, generator=g) < DARK_LESION_P, -contrast, contrast)
    candidates = torch.rand(n, MAX_LESIONS, LESION_PLACEMENT_TRIES, 2, generator=g)

    # A lesion's outline stays within bound = radius * (1 + sum of its wobble) of its centre.
    bound = radius * (1 + wobble.sum(2))
    centre, placed = _place_lesions(candidates, bound, count, organ_centre, organ_axes, organ_angle,
                                    organ_wobble * len(HARMONICS), grid.pixel)
    lesions = torch.zeros(n, MAX_LESIONS, grid.size, grid.size, dtype=torch.bool)
    for slot in range(MAX_LESIONS):
        idx = placed[:, slot].nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        axes = torch.stack([radius[idx, slot], radius[idx, slot] * aspect[idx, slot]], 1)
        distance = _wobbly_ellipse(grid, centre[idx, slot], axes, lesion_angle[idx, slot], wobble[idx, slot],
                                   wobble_phase[idx, slot])
        profile = torch.sigmoid(-distance / softness[idx, slot].view(-1, 1, 1))  # 0.5 on the outline
        clean[idx] += contrast[idx, slot].view(-1, 1, 1) * profile * organ_cover[idx]
        lesions[idx, slot] = (distance < 0) & organ_mask[idx]
    return _Anatomy(clean.clamp_(0, 1), organ_mask, lesions)


def _place_lesions(candidates: Tensor, bound: Tensor, count: Tensor, organ_centre: Tensor, organ_axes: Tensor,
                   organ_angle: Tensor, organ_wobble: float, pixel: float) -> tuple[Tensor, Tensor]:
    """Lesion centres float32 [N, L, 2] inside the organ and bool [N, L]: which lesions are drawn.

    candidates [N, L, T, 2] in [0, 1) are (angle, radius) fractions in the organ's frame; a
    lesion keeps to the part of the organ where its bound (float32 [N, L]) fits inside the
    outline's inner limit (the ellipse shrunk by the largest wobble).  Of its T candidates it
    takes the one farthest from the lesions placed before it; if even that one comes within a
    pixel of another lesion, it is not drawn: lesions never touch, so each box is one lesion's.
    """
    n, slots, tries, _ = candidates.shape
    short_axis = organ_axes.min(1).values.view(n, 1, 1)
    reach = ((1 - organ_wobble) - bound[..., None] / short_axis).clamp(min=0)  # [N, L, 1], of the organ's axes
    psi = 2 * math.pi * candidates[..., 0]
    rho = reach * candidates[..., 1].sqrt()  # sqrt: uniform over the area
    u, v = rho * psi.cos() * organ_axes[:, 0, None, None], rho * psi.sin() * organ_axes[:, 1, None, None]
    cos, sin = organ_angle.cos().view(n, 1, 1), organ_angle.sin().view(n, 1, 1)
    xs = organ_centre[:, 0, None, None] + cos * u - sin * v
    ys = organ_centre[:, 1, None, None] + sin * u + cos * v

    centre = torch.zeros(n, slots, 2)
    placed = torch.zeros(n, slots, dtype=torch.bool)
    for slot in range(slots):
        gap = torch.full((n, tries), torch.inf)
        for earlier in range(slot):
            distance = torch.hypot(xs[:, slot] - centre[:, earlier, 0, None], ys[:, slot] - centre[:, earlier, 1, None])
            clearance = distance - (bound[:, slot] + bound[:, earlier] + pixel)[:, None]
            gap = torch.where(placed[:, earlier, None], torch.minimum(gap, clearance), gap)
        best_gap, best = gap.max(1, keepdim=True)
        centre[:, slot] = torch.stack([xs[:, slot].gather(1, best), ys[:, slot].gather(1, best)], 2).squeeze(1)
        placed[:, slot] = (count > slot) & (best_gap.squeeze(1) > 0)
    return centre, placed


def _image(clean: Tensor, scanner: Scanner, grid: PixelGrid, g: torch.Generator) -> Tensor:
    """The scanner's image float32 [N, S, S] in [0, 1] of clean intensities [N, S, S]."""
    n = len(clean)
    signal = scanner.offset + scanner.gain * clean.pow(scanner.gamma)
    # Bias field: a random quadratic, normalised so its largest possible magnitude on the image is 1.
    basis = torch.stack(torch.broadcast_tensors(grid.x, grid.y, grid.x * grid.y, grid.x**2, grid.y**2), 0)[:, 0]
    coefficients = _uniform((n, len(basis)), -1.0, 1.0, g)
    coefficients = coefficients / coefficients.abs().sum(1, keepdim=True)
    field = torch.einsum("nk,khw->nhw", coefficients, basis)
    signal = signal * torch.exp(scanner.bias * field)
    real, imaginary = torch.randn(2, *clean.shape, generator=g) * scanner.noise
    return torch.hypot(signal + real, imaginary).clamp_(0, 1)

