"""CURL: crops that keep a stack aligned, the bilinear InfoNCE against a loop, the momentum key encoder."""

import math

import pytest
import torch
import torch.nn.functional as F

from clcourse.encoders import PixelEncoder
from clcourse.losses import bilinear_info_nce
from clcourse.methods.curl import CURL, center_crop, random_crop, random_view, to_unit


def stacked_frames(batch=16, frames=3, size=12):
    """Rows whose channel c is the row's base image + 1000 c, each pixel of the base a distinct value."""
    base = torch.arange(batch * size * size, dtype=torch.float64).reshape(batch, 1, size, size)
    return base + 1000.0 * torch.arange(3 * frames, dtype=torch.float64)[None, :, None, None]


def test_a_crop_is_one_window_for_the_whole_stack():
    frames = stacked_frames()
    crops = random_crop(frames, 7, torch.Generator().manual_seed(0))
    assert crops.shape == (16, 9, 7, 7)
    offsets = 1000.0 * torch.arange(9.0, dtype=torch.float64)[None, :, None, None]
    torch.testing.assert_close(crops - crops[:, :1], offsets.expand_as(crops))  # every channel cut at the same place
    for row, crop in zip(frames, crops):
        top, left = divmod(int(crop[0, 0, 0] - row[0, 0, 0]), 12)
        torch.testing.assert_close(crop, row[:, top:top + 7, left:left + 7])  # a contiguous window
    corners = {tuple(int(v) for v in divmod(int(c[0, 0, 0] - r[0, 0, 0]), 12)) for r, c in zip(frames, crops)}
    assert len(corners) > 1  # each row its own window
    again = random_crop(frames, 7, torch.Generator().manual_seed(0))
    assert torch.equal(again, crops)


def test_a_random_shift_pads_with_edge_pixels_and_keeps_the_size():
    frames = stacked_frames(batch=32, size=8)
    assert torch.equal(random_view(frames, 5, 0, torch.Generator().manual_seed(3)),
                       random_crop(frames, 5, torch.Generator().manual_seed(3)))  # pad 0: a crop
    shifted = random_view(frames, 8, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == frames.shape
    padded = F.pad(frames, (2, 2, 2, 2), mode="replicate")
    moves = set()
    for row, view in zip(padded, shifted):
        matches = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(view, row[:, dy:dy + 8, dx:dx + 8])]
        assert matches  # a window of the padded stack, the same for every channel
        moves.add(matches[0])
    assert len(moves) > 5  # shifts of up to 2 px each way, drawn per row
    edge = padded[0, :, 0, 0]
    assert torch.equal(edge, frames[0, :, 0, 0])  # the padding repeats the edge: no black border appears
    with pytest.raises(ValueError, match="pad must be an int >= 0"):
        random_view(frames, 8, -1)


def test_center_crop_and_unit_scaling():
    frames = stacked_frames(batch=2, size=10)
    torch.testing.assert_close(center_crop(frames, 6), frames[..., 2:8, 2:8])
    assert torch.equal(center_crop(frames, 10), frames)
    assert to_unit(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match=r"size must be an int in \[1, 10\]"):
        random_crop(frames, 11)
    with pytest.raises(ValueError, match=r"frames must be \[B, C, H, W\]"):
        random_crop(frames[0], 4)


def loop_loss(q, k, w, scale=1.0):
    """CURL's loss written out: each query's own key against all keys, bilinear scores times ``scale``."""
    total = 0.0
    for i in range(len(q)):
        scores = [scale * float(q[i] @ w @ k[j]) for j in range(len(k))]
        total += -scores[i] + math.log(sum(math.exp(s) for s in scores))
    return torch.tensor(total / len(q), dtype=torch.float64)


def test_bilinear_info_nce_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(2))
    w = torch.randn(4, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(bilinear_info_nce(q, k, w), loop_loss(q, k, w))
    assert bilinear_info_nce(q, k, torch.zeros(4, 4, dtype=torch.float64)).item() == pytest.approx(math.log(6))
    big = bilinear_info_nce(q * 1e3, k * 1e3, w)
    assert torch.isfinite(big)  # the row maximum is subtracted: no overflow
    with pytest.raises(ValueError, match=r"weight must be a \[4, 4\] tensor"):
        bilinear_info_nce(q, k, w[:3])
    with pytest.raises(ValueError, match="N >= 2"):
        bilinear_info_nce(q[:1], k[:1], w)


def test_the_logit_scale_multiplies_every_similarity():
    g = torch.Generator().manual_seed(1)
    q, k = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(2))
    w = torch.randn(3, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(bilinear_info_nce(q, k, w, 0.1), loop_loss(q, k, w, 0.1))
    torch.testing.assert_close(bilinear_info_nce(q, k, w, 0.1), bilinear_info_nce(q, k, 0.1 * w))
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        bilinear_info_nce(q, k, w, 0.0)


def test_the_key_encoder_moves_with_momentum_and_gets_no_gradient():
    torch.manual_seed(0)
    encoder = PixelEncoder(9, 10, out_dim=8, layers=2, filters=4)
    curl = CURL(encoder, crop=10, momentum=0.9, generator=torch.Generator().manual_seed(0))
    frames = torch.randint(0, 256, (5, 9, 12, 12), dtype=torch.uint8)
    loss = curl.training_step(frames)
    loss.backward()
    assert encoder.fc.weight.grad is not None and curl.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in curl.key_encoder.parameters())
    before_key = curl.key_encoder.fc.weight.clone()
    with torch.no_grad():
        encoder.fc.weight.add_(1.0)
    curl.on_step_end()
    torch.testing.assert_close(curl.key_encoder.fc.weight, 0.9 * before_key + 0.1 * encoder.fc.weight)
    with pytest.raises(ValueError, match="at least 2 observations"):
        curl.training_step(frames[:1])
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        CURL(encoder, crop=10, momentum=1.0)


def test_with_no_crop_to_take_and_w_the_identity_the_loss_is_plain_info_nce_of_the_codes():
    torch.manual_seed(0)
    encoder = PixelEncoder(3, 8, out_dim=6, layers=1, filters=4)
    curl = CURL(encoder, crop=8)
    with torch.no_grad():
        curl.weight.copy_(torch.eye(6))
    frames = torch.rand(4, 3, 8, 8)
    codes = encoder(frames)  # the key encoder is still a copy: keys equal queries
    logits = codes @ codes.t()
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(4))
    torch.testing.assert_close(curl.training_step(frames), expected)


def test_contrast_on_codes_of_the_anchor_crops_is_the_training_step():
    torch.manual_seed(0)
    encoder = PixelEncoder(9, 10, out_dim=8, layers=2, filters=4)
    curl = CURL(encoder, crop=10, generator=torch.Generator().manual_seed(3))
    frames = torch.randint(0, 256, (6, 9, 12, 12), dtype=torch.uint8)
    whole = curl.training_step(frames)
    curl.generator = torch.Generator().manual_seed(3)  # the same anchor window, then the same positive one
    anchors = random_crop(to_unit(frames), 10, curl.generator)
    torch.testing.assert_close(curl.contrast(encoder(anchors), frames), whole)
    with pytest.raises(ValueError, match=r"queries must be \[B, D\] with B = 6"):
        curl.contrast(encoder(anchors)[:5], frames)


def test_the_pixel_encoder_keeps_its_promises():
    encoder = PixelEncoder(9, 36, out_dim=50)
    out = encoder(torch.rand(2, 9, 36, 36))
    assert out.shape == (2, 50) and out.abs().max() < 1
    with pytest.raises(ValueError, match=r"expects \[B, 9, 36, 36\]"):
        encoder(torch.rand(2, 3, 36, 36))
    with pytest.raises(ValueError, match="size >= 11"):
        PixelEncoder(3, 10, layers=4)
