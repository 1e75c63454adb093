"""Short clips of a moving shape, and windows of consecutive frames: data for time-contrastive learning.

Each clip is ``T`` grayscale frames of one shape (`CLIP_SHAPES`) gliding in a straight line at constant speed in
one of `DIRECTION_NAMES` (8 compass directions), over a background of its own grey level, with fresh pixel noise in
every frame. The shape is drawn by the renderer of `clcourse.data.shapes` (`shape_coverage`). The path is centred:
the shape passes the clip's middle position at the middle time, and that position is drawn where the whole path
stays inside the frame, so where the shape is in any one frame says (almost) nothing about where it is heading.

A single frame shows the shape and where it is, never where it goes: motion is a difference between frames.
`FrameWindows` therefore cuts a window of ``W`` consecutive frames out of each clip and stacks them as channels
[W, H, W]; with W >= 2 the direction is visible (the shape's edge leads on one side), and a convolution over the
stacked channels can compute frame differences. Two windows of one clip at random times are a positive pair and
windows of other clips the negatives, the time-contrastive idea of TCN [1] (there: frames close in time of the
same scene attract, frames far apart repel; here all frames of a short clip are close).

[1] Sermanet et al., Time-Contrastive Networks: Self-Supervised Learning from Video, ICRA 2018.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from clcourse.checks import check_number, shape_of
from clcourse.data.shapes import SHAPE_EXTENT, SHAPE_NAMES, PixelGrid, shape_coverage

__all__ = ["CLIP_SHAPES", "DIRECTION_NAMES", "Clips", "make_clips", "FrameWindows", "middle_window"]

CLIP_SHAPES = ("circle", "square", "triangle", "cross")
DIRECTION_NAMES = ("E", "NE", "N", "NW", "W", "SW", "S", "SE")  # direction d points at d * 45 degrees, y up
RADIUS_RANGE = (0.27, 0.33)  # in half-widths: a shape about 7 pixels across at 24 x 24
SPEED_RANGE = (0.8, 1.6)  # pixels per frame
SPEED_BINS = 2
OBJECT_LEVEL = (0.7, 1.0)
BACKGROUND_LEVEL = (0.0, 0.25)
PIXEL_NOISE = 0.04


@dataclass(eq=False)
class Clips:
    """Grayscale clips with their shape class and every generative factor.

    Attributes:
        videos: float32 [N, T, H, W] in [0, 1], frames in time order.
        labels: int64 [N], the shape (index into `CLIP_SHAPES`).
        factors: name -> int64 [N]: ``"shape"``, ``"direction"`` (into `DIRECTION_NAMES`), ``"speed"``
            (`SPEED_BINS` bins, slow to fast).
    """

    videos: Tensor
    labels: Tensor
    factors: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.videos.shape[0]

    def subset(self, index: Tensor | slice) -> Clips:
        """The selected clips, labels and factors (int64 indices, a bool mask or a slice)."""
        return Clips(self.videos[index], self.labels[index], {k: v[index] for k, v in self.factors.items()})

    def __repr__(self) -> str:
        n, t, h, w = self.videos.shape
        return f"Clips(n={n}, frames={t}, frame=[{h}, {w}], factors={list(self.factors)})"


def _uniform(n: int, low: float | Tensor, high: float | Tensor, g: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def make_clips(n: int, frames: int = 8, size: int = 24, seed: int = 0) -> Clips:
    """Generate ``n`` clips of a shape moving in a straight line (module docstring).

    Per clip, independently: the shape (uniform over `CLIP_SHAPES`), its size (`RADIUS_RANGE`), the direction
    (uniform over the 8 of `DIRECTION_NAMES`), the speed (`SPEED_RANGE` pixels per frame), the middle position
    (uniform where the path fits), the shape's and the background's grey levels; every frame gets its own
    Gaussian pixel noise (std `PIXEL_NOISE`). Deterministic: the same arguments give the same clips.

    Args:
        n: number of clips N.
        frames: T, frames per clip (2 to 16).
        size: side of a frame in pixels (16 to 64).
        seed: seed of the CPU generator that draws everything.

    Returns:
        `Clips` with videos float32 [N, T, size, size].
    """
    for name, value, low, high in (("n", n, 1, None), ("frames", frames, 2, 16), ("size", size, 16, 64)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ValueError(f"{name} must be an int {bound}, got {value!r}")
    longest_path = SPEED_RANGE[1] * (frames - 1) + 2 * SHAPE_EXTENT * RADIUS_RANGE[1] * size / 2 + 2
    if longest_path > size:
        raise ValueError(f"a clip of {frames} frames needs frames of at least {math.ceil(longest_path)} pixels (the "
                         f"fastest shape's path and the shape must fit), got size={size}")
    g = torch.Generator().manual_seed(seed)
    shape = torch.randint(len(CLIP_SHAPES), (n,), generator=g)
    radius = _uniform(n, *RADIUS_RANGE, g)
    direction = torch.randint(len(DIRECTION_NAMES), (n,), generator=g)
    u_speed = torch.rand(n, generator=g)
    grid = PixelGrid.of(size)
    speed = (SPEED_RANGE[0] + (SPEED_RANGE[1] - SPEED_RANGE[0]) * u_speed) * grid.pixel  # grid units per frame
    angle = direction.float() * (math.pi / 4)
    velocity_x, velocity_y = speed * torch.cos(angle), speed * torch.sin(angle)
    half_path = (frames - 1) / 2
    room = 1.0 - grid.pixel - SHAPE_EXTENT * radius  # how far the centre may move: a pixel of background stays
    middle_x = (2 * torch.rand(n, generator=g) - 1) * (room - velocity_x.abs() * half_path)
    middle_y = (2 * torch.rand(n, generator=g) - 1) * (room - velocity_y.abs() * half_path)
    object_level = _uniform(n, *OBJECT_LEVEL, g)
    background_level = _uniform(n, *BACKGROUND_LEVEL, g)

    time = torch.arange(frames, dtype=torch.float32) - half_path  # [T], 0 at the middle frame
    centre_x = (middle_x[:, None] + velocity_x[:, None] * time).flatten()
    centre_y = (middle_y[:, None] + velocity_y[:, None] * time).flatten()
    codes = torch.tensor([SHAPE_NAMES.index(name) for name in CLIP_SHAPES])[shape]
    per_frame = lambda x: x.repeat_interleave(frames)  # noqa: E731 (one value per clip -> per frame)
    coverage = shape_coverage(per_frame(codes), centre_x, centre_y, per_frame(radius), torch.zeros(n * frames), grid)
    coverage = coverage.view(n, frames, size, size)
    videos = background_level.view(n, 1, 1, 1) + (object_level - background_level).view(n, 1, 1, 1) * coverage
    videos = (videos + PIXEL_NOISE * torch.randn(videos.shape, generator=g)).clamp(0, 1)
    speed_bin = (u_speed * SPEED_BINS).long().clamp(max=SPEED_BINS - 1)
    factors = {"shape": shape, "direction": direction, "speed": speed_bin}
    return Clips(videos, shape.clone(), factors)


def _check_videos(videos, frames: int) -> None:
    if not isinstance(videos, Tensor) or videos.ndim != 4 or not videos.is_floating_point():
        got = f"{videos.dtype} of shape {shape_of(videos)}" if isinstance(videos, Tensor) else type(videos).__name__
        raise ValueError(f"expected clips [B, T, H, W] as floats (frames as channels), got {got}")
    if videos.shape[1] < frames:
        raise ValueError(f"these windows need clips of at least {frames} frames, got shape {shape_of(videos)}")


def _windows(videos: Tensor, start: Tensor, window: int, stride: Tensor | int = 1) -> Tensor:
    """Frames start, start + stride, ... (``window`` of them) of each clip: [B, T, H, W] -> [B, window, H, W].

    ``start`` int64 [B]; ``stride`` int64 [B] or one int.
    """
    stride = torch.as_tensor(stride).view(-1, 1)
    index = (start.view(-1, 1) + stride * torch.arange(window)).to(videos.device)
    return torch.gather(videos, 1, index.view(*index.shape, 1, 1).expand(-1, -1, *videos.shape[2:]))


def middle_window(videos: Tensor, window: int = 3) -> Tensor:
    """The ``window`` frames around each clip's middle, stacked as channels: [N, T, H, W] -> [N, window, H, W].

    The evaluation input: the path is centred on the middle frame, so the window's position carries no hint of the
    direction; only the frames' differences do (for ``window`` >= 2).
    """
    _check_videos(videos, window)
    start = (videos.shape[1] - window) // 2
    return videos[:, start : start + window]


def _translate(x: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
    """Each [C, H, W] of x [B, C, H, W] moved by (dx, dy) whole pixels (int64 [B], x right, y down), every frame
    alike; pixels moved in repeat the nearest edge."""
    b, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device) - dy.to(x.device).view(b, 1)).clamp(0, h - 1)  # [B, H]
    columns = (torch.arange(w, device=x.device) - dx.to(x.device).view(b, 1)).clamp(0, w - 1)  # [B, W]
    x = torch.gather(x, 2, rows.view(b, 1, h, 1).expand(b, c, h, w))
    return torch.gather(x, 3, columns.view(b, 1, 1, w).expand(b, c, h, w))


class FrameWindows(nn.Module):
    """Random windows of ``window`` frames of each clip, at a random playback speed, moved, with a random brightness.

    One call gives one view per clip: every ``stride``-th frame (stride uniform in 1 .. max_stride, a playback
    speed) from a start uniform over where the window fits; all its frames move by the same random whole-pixel
    offset in [-max_translate, max_translate] along each axis (edges repeated), which keeps the motion within the
    window; then they are mapped to ``contrast * x + brightness`` (contrast in [1 - jitter, 1 + jitter],
    brightness in [-jitter, jitter], per view). Without the offset, two windows of a clip are told from other
    clips' by where the shape is; without the jitter, by the clip's grey levels; without the playback speed, by the
    shape's speed: each is a shortcut (lesson 01) that spares the encoder a look at the shape. Called twice on a
    batch, it gives TCN's [1] positive pairs. Plugs into `clcourse.data.ViewLoader` as its ``augment``, with the
    clips' videos as images.

    Shapes: videos float [B, T, H, W] -> [B, window, H, W].
    """

    def __init__(self, window: int = 3, max_stride: int = 2, max_translate: int = 4, jitter: float = 0.3):
        super().__init__()
        for name, value, least in (("window", window, 1), ("max_stride", max_stride, 1),
                                   ("max_translate", max_translate, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        self.window = window
        self.max_stride = max_stride
        self.max_translate = max_translate
        self.jitter = check_number("jitter", jitter, strict=False)
        if self.jitter >= 1:
            raise ValueError(f"jitter must be in [0, 1) (a contrast of 1 - jitter > 0), got {jitter}")

    def extra_repr(self) -> str:
        return (f"window={self.window}, max_stride={self.max_stride}, max_translate={self.max_translate}, "
                f"jitter={self.jitter:g}")

    def forward(self, videos: Tensor, generator: torch.Generator | None = None) -> Tensor:
        span = (self.window - 1) * self.max_stride + 1
        _check_videos(videos, span)
        b = len(videos)
        stride = torch.randint(1, self.max_stride + 1, (b,), generator=generator)
        room = videos.shape[1] - (self.window - 1) * stride  # starts 0 .. room - 1 fit
        start = (torch.rand(b, generator=generator) * room).long()
        dx, dy = torch.randint(-self.max_translate, self.max_translate + 1, (2, b), generator=generator)
        contrast = _uniform(b, 1 - self.jitter, 1 + self.jitter, generator).to(videos).view(b, 1, 1, 1)
        brightness = _uniform(b, -self.jitter, self.jitter, generator).to(videos).view(b, 1, 1, 1)
        return _translate(_windows(videos, start, self.window, stride), dx, dy) * contrast + brightness
