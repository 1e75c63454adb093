"""Lesson 01 tasks: a batched colour jitter and the random-resized-crop box sampler."""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as TF

from clcourse.grading.harness import Case, Mistake, compare_with_reference
from clcourse.grading.registry import task

# ITU-R 601-2 luma, the weights torchvision's rgb_to_grayscale uses.
_LUMA = (0.2989, 0.587, 0.114)


# --- 01.color_jitter -------------------------------------------------------------------------

def _jitter_reference(x, brightness, saturation):
    """torchvision's per-sample brightness then saturation: the definition the batched version must match."""
    return torch.stack([
        TF.adjust_saturation(TF.adjust_brightness(img, float(b)), float(s))
        for img, b, s in zip(x, brightness, saturation)
    ])


def _per_sample(f):
    return f.to(torch.float64).view(-1, 1, 1, 1)


def _gray(x, weights=_LUMA):
    w = torch.tensor(weights, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _jitter_variant(x, brightness, saturation, *, clamp_brightness=True, clamp_end=True,
                    gray=_gray, factor=_per_sample, reverse_blend=False):
    y = x * factor(brightness).to(x.dtype)
    if clamp_brightness:
        y = y.clamp(0, 1)
    s = factor(saturation).to(x.dtype)
    g = gray(y)
    y = s * g + (1 - s) * y if reverse_blend else s * y + (1 - s) * g
    return y.clamp(0, 1) if clamp_end else y


_JITTER_MISTAKES = [
    Mistake("No clamping: torchvision clamps the image to [0, 1] after the brightness step and "
            "after the saturation blend (.clamp(0, 1)).",
            lambda x, b, s: _jitter_variant(x, b, s, clamp_brightness=False, clamp_end=False)),
    Mistake("Clamp after the brightness step too, not only at the end: the grayscale image of the "
            "saturation step is computed from the clamped, brightened image.",
            lambda x, b, s: _jitter_variant(x, b, s, clamp_brightness=False)),
    Mistake("The grayscale image uses the plain channel mean; torchvision uses the luma weights "
            "0.2989 R + 0.587 G + 0.114 B.",
            lambda x, b, s: _jitter_variant(x, b, s, gray=lambda y: y.mean(dim=1, keepdim=True))),
    Mistake("That blends towards the *mean* gray level of the image (a contrast change). Saturation "
            "blends each pixel with its own grayscale value.",
            lambda x, b, s: _jitter_variant(x, b, s, gray=lambda y: _gray(y).mean(dim=(1, 2, 3), keepdim=True))),
    Mistake("The saturation blend is reversed: the result is s * image + (1 - s) * gray, so that "
            "s = 1 keeps the image and s = 0 gives gray.",
            lambda x, b, s: _jitter_variant(x, b, s, reverse_blend=True)),
    Mistake("The factors broadcast along the image width instead of the batch: reshape a [B] "
            "factor to [B, 1, 1, 1] so that sample i gets factor i.",
            lambda x, b, s: _jitter_variant(x, b, s, factor=lambda f: f.to(torch.float64).view(1, 1, 1, -1))),
    Mistake("Every sample got the first sample's factors: each sample has its own factors.",
            lambda x, b, s: _jitter_variant(x, b, s, factor=lambda f: f[:1].to(torch.float64).view(1, 1, 1, 1))),
]


def _jitter_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)

    def rand(*shape, low=0.0, high=1.0, dtype=torch.float32):
        return (low + (high - low) * torch.rand(*shape, generator=g, dtype=torch.float64)).to(dtype)

    bright = rand(6, 3, 5, 5, low=0.5, high=1.0)
    return [
        Case("B=4 random 3x5x7 images, random factors", (rand(4, 3, 5, 7), rand(4, low=0.3, high=1.7),
                                                         rand(4, low=0.0, high=2.0))),
        Case("B=3, brightness and saturation factors all 1 (the image must not change)",
             (rand(3, 3, 4, 4), torch.ones(3), torch.ones(3))),
        Case("B=2, saturation 0 (the result must be gray)", (rand(2, 3, 4, 4), rand(2, low=0.5, high=1.5),
                                                             torch.zeros(2))),
        Case("B=6 bright images, brightness 1.2..1.9 and saturation 1.5..2 (clamping matters)",
             (bright, rand(6, low=1.2, high=1.9), rand(6, low=1.5, high=2.0))),
        Case("B=8 images of width 8 (factors must follow the batch dimension)",
             (rand(8, 3, 6, 8), rand(8, low=0.3, high=1.7), rand(8, low=0.0, high=2.0))),
        Case("B=1, float64 image (the dtype must be kept)",
             (rand(1, 3, 3, 3, dtype=torch.float64), rand(1, low=0.5, high=1.5), rand(1, low=0.0, high=2.0))),
    ]


@task("01.color_jitter", "batched brightness + saturation jitter, one factor pair per sample, by broadcasting", 2)
def check_color_jitter(answer) -> None:
    """Compare with torchvision.transforms.v2.functional, sample by sample."""
    compare_with_reference(
        answer, _jitter_cases(), _jitter_reference, _JITTER_MISTAKES,
        generic_hint="Per sample i: y = clamp(b_i * x_i); then clamp(s_i * y + (1 - s_i) * gray(y)).",
        error_hints=[("must match the size", "A [B] factor does not broadcast against [B, C, H, W]: "
                                             "reshape it with f.view(-1, 1, 1, 1).")],
    )


# --- 01.crop_boxes ---------------------------------------------------------------------------

def _boxes_variant(scale, ratio, u, height, width, *, invert_ratio=False, rounding=torch.round,
                   positions=None, swap_hw=False):
    if swap_hw:
        height, width = width, height
    area = scale.to(torch.float64) * height * width
    r = 1 / ratio.to(torch.float64) if invert_ratio else ratio.to(torch.float64)
    w = rounding(torch.sqrt(area * r)).clamp(1, width)
    h = rounding(torch.sqrt(area / r)).clamp(1, height)
    u = u.to(torch.float64)
    room_h, room_w = positions(height, width, h, w) if positions else (height - h + 1, width - w + 1)
    top = torch.floor(u[:, 0] * room_h)
    left = torch.floor(u[:, 1] * room_w)
    return torch.stack([top, left, h, w], dim=1).long()


def _boxes_reference(scale, ratio, u, height, width):
    """Crop boxes (top, left, h, w) as RandomResizedCrop draws them, random numbers given."""
    return _boxes_variant(scale, ratio, u, height, width)


_BOXES_MISTAKES = [
    Mistake("The aspect ratio is width / height: w = sqrt(area * ratio), h = sqrt(area / ratio).",
            lambda *a: _boxes_variant(*a, invert_ratio=True)),
    Mistake("The box can leave the image: the top-left corner must leave room for the box, "
            "top = floor(u * (H - h + 1)), not floor(u * H).",
            lambda *a: _boxes_variant(*a, positions=lambda H, W, h, w: (H, W))),
    Mistake("Off by one: there are H - h + 1 possible top rows (0 ... H - h), so multiply u by (H - h + 1).",
            lambda *a: _boxes_variant(*a, positions=lambda H, W, h, w: (H - h, W - w))),
    Mistake("Round the side lengths to the nearest integer (torch.round); .long() truncates them.",
            lambda *a: _boxes_variant(*a, rounding=torch.floor)),
    Mistake("Height and width are swapped somewhere: the image has `height` rows and `width` columns.",
            lambda *a: _boxes_variant(*a, swap_hw=True)),
    Mistake("The sides are not limited to the image: clamp h to [1, height] and w to [1, width].",
            lambda s, r, u, H, W: _boxes_no_clamp(s, r, u, H, W)),
]


def _boxes_no_clamp(scale, ratio, u, height, width):
    area = scale.to(torch.float64) * height * width
    w = torch.round(torch.sqrt(area * ratio.to(torch.float64)))
    h = torch.round(torch.sqrt(area / ratio.to(torch.float64)))
    top = torch.floor(u[:, 0].to(torch.float64) * (height - h + 1))
    left = torch.floor(u[:, 1].to(torch.float64) * (width - w + 1))
    return torch.stack([top, left, h, w], dim=1).long()


def _boxes_cases() -> list[Case]:
    g = torch.Generator().manual_seed(2)
    n = 16
    scale = 0.08 + 0.92 * torch.rand(n, generator=g)
    ratio = torch.exp(torch.empty(n).uniform_(-0.2877, 0.2877, generator=g))  # log-uniform in (3/4, 4/3)
    u = torch.rand(n, 2, generator=g)
    return [
        Case("16 random draws on a 32x32 image", (scale, ratio, u, 32, 32)),
        Case("16 random draws on a 24x40 image (height 24, width 40)", (scale, ratio, u, 24, 40)),
        Case("scale 1 and ratio 1 on a 32x32 image (the box is the whole image)",
             (torch.ones(2), torch.ones(2), torch.tensor([[0.0, 0.0], [0.999, 0.999]]), 32, 32)),
        Case("u = 0 and u close to 1 (first and last position)",
             (torch.full((2,), 0.25), torch.ones(2), torch.tensor([[0.0, 0.0], [0.9999, 0.9999]]), 20, 20)),
        Case("extreme ratios 1/4 and 4 at scale 0.9 (the box must be clamped to the image)",
             (torch.full((2,), 0.9), torch.tensor([0.25, 4.0]), torch.tensor([[0.5, 0.5], [0.5, 0.5]]), 16, 16)),
    ]


@task("01.crop_boxes", "RandomResizedCrop's box (top, left, h, w) from scale, ratio and uniform draws")
def check_crop_boxes(answer) -> None:
    """Exact integer boxes on random and edge-case draws."""
    compare_with_reference(
        answer, _boxes_cases(), _boxes_reference, _BOXES_MISTAKES,
        generic_hint="area = scale * H * W; w = round(sqrt(area * ratio)), h = round(sqrt(area / ratio)), "
                     "clamped to the image; top = floor(u[:, 0] * (H - h + 1)), left likewise. "
                     "Return int64 [B, 4] (top, left, h, w).",
    )
