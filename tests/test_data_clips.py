"""Tests of clcourse.data.clips: clips of moving shapes, their windows of frames, FrameWindows."""

from __future__ import annotations

import math

import pytest
import torch

from clcourse.data import clips as clips_module
from clcourse.data.clips import CLIP_SHAPES, DIRECTION_NAMES, FrameWindows, make_clips, middle_window


def test_clips_shapes_factors_and_determinism():
    data = make_clips(40, frames=8, size=24, seed=1)
    assert data.videos.shape == (40, 8, 24, 24) and data.videos.dtype == torch.float32
    assert data.videos.min() >= 0 and data.videos.max() <= 1
    assert set(data.factors) == {"shape", "direction", "speed"} and torch.equal(data.labels, data.factors["shape"])
    assert int(data.labels.max()) < len(CLIP_SHAPES) and int(data.factors["direction"].max()) < len(DIRECTION_NAMES)
    assert torch.equal(make_clips(40, frames=8, size=24, seed=1).videos, data.videos)
    assert not torch.equal(make_clips(40, frames=8, size=24, seed=2).videos, data.videos)
    part = data.subset(torch.tensor([3, 0]))
    assert len(part) == 2 and torch.equal(part.factors["direction"], data.factors["direction"][[3, 0]])
    assert "frames=8" in repr(data)


def _centroids(videos: torch.Tensor) -> torch.Tensor:
    """[N, T, 2] centre (x right, y up, pixels) of the bright pixels of every frame."""
    background = videos.flatten(2).median(dim=2).values[..., None, None]
    mask = (videos > background + 0.25).float()
    size = videos.shape[-1]
    axis = torch.arange(size, dtype=torch.float32)
    mass = mask.sum(dim=(2, 3))
    x = (mask * axis).sum(dim=(2, 3)) / mass
    y = (mask * (size - 1 - axis).view(-1, 1)).sum(dim=(2, 3)) / mass
    return torch.stack([x, y], dim=2)


def test_the_shape_moves_in_its_direction_at_its_speed_and_stays_inside():
    data = make_clips(200, frames=8, size=24, seed=0)
    centre = _centroids(data.videos)
    step = (centre[:, -1] - centre[:, 0]) / 7  # pixels per frame
    heading = torch.atan2(step[:, 1], step[:, 0])
    expected = data.factors["direction"].float() * math.pi / 4
    error = torch.remainder(heading - expected + math.pi, 2 * math.pi) - math.pi
    assert error.abs().max() < math.radians(12)
    speed = step.norm(dim=1)
    assert speed.min() > clips_module.SPEED_RANGE[0] - 0.2 and speed.max() < clips_module.SPEED_RANGE[1] + 0.2
    fast = data.factors["speed"] == 1
    assert speed[fast].min() > speed[~fast].max() - 0.2  # the speed bin orders the speeds
    # The path is centred: the middle position does not lean towards the direction of motion.
    middle = (centre[:, 3] + centre[:, 4]) / 2 - 11.5
    along = (middle * torch.stack([torch.cos(expected), torch.sin(expected)], dim=1)).sum(dim=1)
    assert abs(float(along.mean())) < 0.5
    # Nothing of the shape reaches the border of any frame.
    border = torch.cat([data.videos[..., 0, :], data.videos[..., -1, :], data.videos[..., 0], data.videos[..., -1]], -1)
    background = data.videos.flatten(2).median(dim=2).values[..., None]
    assert (border < background + 0.25).all()


def test_middle_window_is_the_centred_slice():
    videos = torch.rand(3, 8, 16, 16)
    assert torch.equal(middle_window(videos, 3), videos[:, 2:5])
    assert torch.equal(middle_window(videos, 2), videos[:, 3:5])
    assert torch.equal(middle_window(videos, 1), videos[:, 3:4])


def test_frame_windows_are_frames_of_their_own_clip_at_a_playback_speed():
    videos = torch.rand(32, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    windows = FrameWindows(window=3, max_stride=2, max_translate=0, jitter=0.0)
    out = windows(videos, generator=torch.Generator().manual_seed(1))
    assert out.shape == (32, 3, 16, 16)
    drawn = []
    for i in range(32):
        found = [(start, stride) for stride in (1, 2) for start in range(8 - 2 * stride)
                 if torch.equal(out[i], videos[i, start : start + 2 * stride + 1 : stride])]
        assert len(found) == 1, f"clip {i} is not one window of its own frames"
        drawn += found
    assert {stride for _, stride in drawn} == {1, 2} and len({start for start, _ in drawn}) > 3
    consecutive = FrameWindows(window=3, max_stride=1, max_translate=0, jitter=0.0)(videos)
    assert all(any(torch.equal(consecutive[i], videos[i, s : s + 3]) for s in range(6)) for i in range(32))


def test_frame_windows_move_all_frames_alike_and_jitter_is_affine():
    videos = torch.rand(8, 6, 16, 16, generator=torch.Generator().manual_seed(0))
    moved = FrameWindows(window=6, max_stride=1, max_translate=2, jitter=0.0)
    out = moved(videos, generator=torch.Generator().manual_seed(2))
    for i in range(8):
        shifts = [(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)
                  if torch.equal(out[i, :, 2:-2, 2:-2], videos[i, :, 2 - dy : 14 - dy, 2 - dx : 14 - dx])]
        assert len(shifts) == 1, f"clip {i} is not one translation of its frames"
    jitter = FrameWindows(window=6, max_stride=1, max_translate=0, jitter=0.3)
    jittered = jitter(videos, generator=torch.Generator().manual_seed(3))
    for i in range(8):
        a, b = jittered[i].flatten(), videos[i].flatten()
        contrast = float(((a - a.mean()) * (b - b.mean())).sum() / ((b - b.mean()) ** 2).sum())
        assert 0.7 - 1e-5 <= contrast <= 1.3 + 1e-5
        assert torch.allclose(a, contrast * b + (a.mean() - contrast * b.mean()), atol=1e-5)


def test_frame_windows_replay_with_a_generator():
    videos = torch.rand(8, 8, 16, 16)
    windows = FrameWindows()
    first = windows(videos, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, windows(videos, generator=torch.Generator().manual_seed(4)))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: make_clips(0), "n must be"),
        (lambda: make_clips(4, frames=1), "frames"),
        (lambda: make_clips(4, size=8), "size"),
        (lambda: make_clips(4, frames=16, size=24), "needs frames of at least 35 pixels"),
        (lambda: FrameWindows(window=0), "window"),
        (lambda: FrameWindows(max_translate=-1), "max_translate"),
        (lambda: FrameWindows(jitter=1.0), "jitter"),
        (lambda: FrameWindows(window=4)(torch.rand(2, 6, 16, 16)), "at least 7 frames"),
        (lambda: FrameWindows(max_stride=0), "max_stride"),
        (lambda: FrameWindows()(torch.rand(2, 8, 16)), r"\[B, T, H, W\]"),
        (lambda: middle_window(torch.zeros(2, 8, 16, 16, dtype=torch.uint8)), "floats"),
    ],
)
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
