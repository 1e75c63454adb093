"""Views for contrastive learning: per-sample reference pipelines and a batched on-device one.

SimCLR [1] learns by making two random views of the same image agree, so the choice of
augmentations *is* the definition of what the encoder must ignore: random resized crops,
flips, colour jitter, random grayscale and Gaussian blur [1, Sec. 3 and App. A].

Two implementations of the same distributions:

- :func:`simclr_transform` and :func:`digits_transform` build ``torchvision.transforms.v2``
  pipelines that augment one image [C, H, W] per call: the reference learners recognise.
- :class:`BatchedAugment` augments a whole batch [B, C, H, W] in one call on its device,
  every sample with its own random parameters, without a Python loop over samples. Given the
  same parameters, it reproduces the torchvision functional ops sample by sample
  (see :meth:`BatchedAugment.apply` for the exact correspondence and tolerance).
  For segmentation, :meth:`BatchedAugment.dense` moves each image's class mask [H, W] by the
  same crop, flip and rotation (nearest sampling), leaving colour ops to the image.

[1] Chen et al., A Simple Framework for Contrastive Learning of Visual Representations
    (SimCLR), ICML 2020.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

from clcourse.checks import check_images
from clcourse.data.dense_data import IGNORE_INDEX

__all__ = ["simclr_transform", "digits_transform", "AugmentParams", "BatchedAugment", "view_targets", "augmented_views"]

_CROP_TRIES = 10  # RandomResizedCrop's rejection-sampling tries before its central-crop fallback
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2 luma)


def _blur_kernel_size(size: int) -> int:
    """SimCLR's blur kernel: about 10% of the image side, odd, at least 3 [1, App. A]."""
    k = int(0.1 * size)
    return max(3, k + 1 - k % 2)


def simclr_transform(
    size: int = 32,
    *,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    jitter_strength: float = 0.5,
    blur_p: float = 0.5,
) -> v2.Compose:
    """SimCLR's per-sample augmentation [1, App. A] as a ``torchvision.transforms.v2`` pipeline.

    Input and output: a float tensor [C, H, W] in [0, 1] (C = 1 or 3); output [C, size, size].
    RandomResizedCrop(size, crop_scale) -> RandomHorizontalFlip(0.5) ->
    RandomApply(ColorJitter(0.8s, 0.8s, 0.8s, 0.2s), p=0.8) -> RandomGrayscale(0.2) ->
    RandomApply(GaussianBlur(kernel ~10% of size, sigma in (0.1, 2.0)), p=blur_p),
    with s = ``jitter_strength`` (SimCLR uses s = 0.5 on CIFAR-10, 1.0 on ImageNet).
    """
    s = jitter_strength
    ops = [
        v2.RandomResizedCrop(size, scale=crop_scale, antialias=True),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ]
    if blur_p > 0:
        blur = v2.GaussianBlur(_blur_kernel_size(size), sigma=(0.1, 2.0))
        ops.append(v2.RandomApply([blur], p=blur_p))
    return v2.Compose(ops)


def digits_transform(
    size: int = 16,
    *,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    rotation_degrees: float = 15.0,
    blur_p: float = 0.5,
) -> v2.Compose:
    """Per-sample augmentation for small 1-channel digits, in the spirit of SimCLR [1].

    Input and output: a float tensor [1, H, W] in [0, 1]; output [1, size, size].
    RandomResizedCrop(size, crop_scale) -> RandomRotation(+-rotation_degrees, bilinear) ->
    RandomApply(GaussianBlur(3, sigma in (0.1, 1.0)), p=blur_p). No flips (a mirrored 2 is
    not a 2) and no colour jitter (there is no colour to vary); milder crops than SimCLR's because
    a digit cropped to 8% of its area is no longer recognisable.
    """
    ops = [
        v2.RandomResizedCrop(size, scale=crop_scale, antialias=True),
        v2.RandomRotation(rotation_degrees, interpolation=v2.InterpolationMode.BILINEAR),
    ]
    if blur_p > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.0))], p=blur_p))
    return v2.Compose(ops)


@dataclass
class AugmentParams:
    """Per-sample random parameters of :class:`BatchedAugment`, as CPU tensors (B = batch size).

    They do not depend on the image size: crops are stored as the draws of torchvision's
    RandomResizedCrop (area fraction and log aspect ratio for each of its 10 tries, relative
    position) and turned into pixel boxes by :meth:`crop_boxes`.

    Attributes:
        crop_area: [B, 10] fraction of the image area, one per try.
        crop_log_ratio: [B, 10] log of the aspect ratio w/h, one per try.
        crop_position: [B, 2] in [0, 1): where the box lies among its valid (top, left) offsets.
        crop_ratio: the (min, max) aspect ratio range, for the fallback when no try fits.
        flip: [B] bool, horizontal flip.
        rotation: [B] angle in degrees (counter-clockwise, as ``torchvision`` rotate).
        jitter: [B] bool, colour jitter applied.
        brightness, contrast, saturation: [B] factors (1 = unchanged).
        hue: [B] hue shift in [-0.5, 0.5] (0 = unchanged).
        gray: [B] bool, converted to grayscale.
        blur: [B] bool, Gaussian blur applied.
        blur_sigma: [B] the blur's standard deviation in pixels.
    """

    crop_area: Tensor
    crop_log_ratio: Tensor
    crop_position: Tensor
    crop_ratio: tuple[float, float]
    flip: Tensor
    rotation: Tensor
    jitter: Tensor
    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    gray: Tensor
    blur: Tensor
    blur_sigma: Tensor

    def __len__(self) -> int:
        return self.flip.shape[0]

    def crop_boxes(self, height: int, width: int) -> Tensor:
        """Pixel crop boxes for an image of ``height`` x ``width``: int64 [B, 4] (top, left, h, w).

        Vectorised copy of torchvision's ``RandomResizedCrop`` rule: the first of the 10 tries
        whose box fits the image wins; if none fits, a central crop of the whole image with
        its aspect ratio clamped into ``crop_ratio``.
        """
        area = self.crop_area.double() * (height * width)
        ratio = self.crop_log_ratio.double().exp()
        w_try = (area * ratio).sqrt().round()  # round half to even, as Python's round
        h_try = (area / ratio).sqrt().round()
        fits = (w_try > 0) & (w_try <= width) & (h_try > 0) & (h_try <= height)
        first = fits.byte().argmax(dim=1, keepdim=True)  # argmax returns the first maximum
        w = w_try.gather(1, first).squeeze(1)
        h = h_try.gather(1, first).squeeze(1)
        top = (self.crop_position[:, 0].double() * (height - h + 1)).floor().clamp(max=height - h)
        left = (self.crop_position[:, 1].double() * (width - w + 1)).floor().clamp(max=width - w)

        fb_h, fb_w = height, width
        lo, hi = min(self.crop_ratio), max(self.crop_ratio)
        if width / height < lo:
            fb_h = int(round(width / lo))
        elif width / height > hi:
            fb_w = int(round(height * hi))
        fallback = torch.tensor([(height - fb_h) // 2, (width - fb_w) // 2, fb_h, fb_w], dtype=torch.double)
        boxes = torch.stack([top, left, h, w], dim=1)
        return torch.where(fits.any(dim=1, keepdim=True), boxes, fallback).long()


def _on_subset(x: Tensor, mask: Tensor, fn) -> Tensor:
    """Apply ``fn`` in place of the samples of ``x`` [B, ...] where the CPU bool ``mask`` [B] is set.

    Working on the selected samples only is cheaper than computing an op for every sample
    and discarding most of it, and it leaves the other samples bit-for-bit unchanged.
    ``fn(samples, index)`` gets the selected samples [n, ...] and their CPU indices [n].
    """
    index = mask.nonzero().squeeze(1)
    if len(index) == len(x):
        return fn(x, index)
    if len(index) > 0:
        device_index = index.to(x.device)
        x.index_copy_(0, device_index, fn(x.index_select(0, device_index), index))
    return x


def _pixel_to_grid(p: Tensor, n: int) -> Tensor:
    """Pixel coordinates -> grid_sample's normalised ones (align_corners=False): (2p + 1) / n - 1."""
    return p.mul(2 / n).add_(1 / n - 1)


def _crop_grid(boxes: Tensor, flip: Tensor, in_h: int, in_w: int, size: int, like: Tensor) -> Tensor:
    """Sampling grid [B, size, size, 2] of crop + resize (+ flip) for upsampling crops.

    ``resize(bilinear, align_corners=False)`` reads output pixel i at source coordinate
    (i + 0.5) * crop / size - 0.5, clamped into the crop; with those coordinates computed
    per sample, one ``grid_sample`` reproduces ``resized_crop`` (antialiasing does nothing
    when enlarging). A flip just reverses the column coordinates.
    """
    top, left, h, w = boxes.to(device=like.device, dtype=like.dtype).unbind(1)
    centres = torch.arange(size, device=like.device, dtype=like.dtype).add_(0.5)

    def source(start: Tensor, length: Tensor) -> Tensor:  # [B, size] pixel coordinates in the image
        p = torch.outer(length / size, centres).sub_(0.5).clamp_(min=0)
        return torch.minimum(p, (length - 1)[:, None]).add_(start[:, None])

    ys = _pixel_to_grid(source(top, h), in_h)
    xs = _pixel_to_grid(source(left, w), in_w)
    xs = _on_subset(xs, flip, lambda s, i: s.flip(1))
    return torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)


def _resize_matrix(start: Tensor, length: Tensor, in_size: int, size: int, like: Tensor) -> Tensor:
    """Weights [B, size, in_size] of torchvision's antialiased bilinear resize of a crop, per sample.

    Row i is PyTorch's antialiasing triangle filter centred at (i + 0.5) * scale (crop
    coordinates, scale = crop / size), widened by the scale when shrinking, cut to the crop
    and normalised: the exact linear map of ``resize(..., antialias=True)`` on one axis.
    """
    start, length = start.to(like), length.to(like)
    scale = length / size
    centres = torch.outer(scale, torch.arange(size, device=like.device, dtype=like.dtype).add_(0.5))
    pixels = torch.arange(in_size, device=like.device, dtype=like.dtype).add_(0.5) - start[:, None]  # [B, in]
    distance = (pixels[:, None, :] - centres[:, :, None]).abs_() / scale.clamp(min=1)[:, None, None]
    weights = (1 - distance).clamp_(min=0) * ((pixels > 0) & (pixels < length[:, None]))[:, None, :]
    return weights / weights.sum(dim=-1, keepdim=True)


def _rotation_grid(degrees: Tensor, h: int, w: int, like: Tensor) -> Tensor:
    """grid_sample grid [n, h, w, 2] (like's dtype and device) of a rotation by degrees [n] (CPU) about the centre.

    torchvision's _affine_grid, per sample: pixel-centred base grid [1, h*w, 3] times the inverse
    rotation [n, 3, 2], pre-divided by the half sizes (same operations, same rounding).
    """
    n = len(degrees)
    rad = (degrees.double() % 360).deg2rad()
    cos, sin = rad.cos(), rad.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([cos, sin, -sin, cos, zero, zero], dim=1).view(n, 3, 2)
    theta = theta.to(like).div_(torch.tensor([0.5 * w, 0.5 * h], device=like.device, dtype=like.dtype))
    base = torch.ones(1, h, w, 3, device=like.device, dtype=like.dtype)
    base[..., 0].copy_(torch.linspace((1 - w) / 2, (w - 1) / 2, w, device=like.device, dtype=like.dtype))
    base[..., 1].copy_(torch.linspace((1 - h) / 2, (h - 1) / 2, h, device=like.device, dtype=like.dtype)[:, None])
    return base.view(1, h * w, 3).expand(n, -1, -1).bmm(theta).view(n, h, w, 2)


def _rotate(x: Tensor, degrees: Tensor) -> Tensor:
    """Rotate each sample of x [n, C, H, W] by its own angle (degrees [n], CPU) about the centre.

    Same sampling grid as torchvision's ``rotate(bilinear)``; like ``RandomRotation`` (fill=0)
    the result is multiplied by the rotated all-ones mask, which torchvision uses to blend in
    the fill colour (so pixels near the border that sample outside are attenuated twice).
    """
    n, c, h, w = x.shape
    grid = _rotation_grid(degrees, h, w, x)
    with_ones = torch.cat([x, x.new_ones(n, 1, h, w)], dim=1)
    out = F.grid_sample(with_ones, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, :c] * out[:, c:]


def _rotate_masks(masks: Tensor, degrees: Tensor) -> Tensor:
    """Rotate each class map of masks int64 [n, H, W] by its own angle (degrees [n], CPU): nearest sampling.

    torchvision's ``rotate(nearest, fill=IGNORE_INDEX)`` of an integer mask: the grid of
    :func:`_rotation_grid` in float32, the class of the nearest source pixel, and
    ``IGNORE_INDEX`` where that pixel lies outside the image (no class was there to move).
    """
    n, h, w = masks.shape
    as_float = torch.stack([masks.float(), torch.ones(n, h, w, device=masks.device)], dim=1)
    grid = _rotation_grid(degrees, h, w, as_float)
    classes, inside = F.grid_sample(as_float, grid, mode="nearest", padding_mode="zeros",
                                    align_corners=False).unbind(1)
    return torch.where(inside < 0.5, IGNORE_INDEX, classes.long())


def _nearest_source(start: Tensor, length: Tensor, size: int) -> Tensor:
    """Source pixel int64 [B, size] of every output pixel of a nearest resize of crops (start, length int64 [B]).

    ``start + floor((i + 0.5) * length / size)``, clamped into the crop: the pixel that contains
    the centre of output pixel i, which is where the bilinear and antialiased resizes of
    :meth:`BatchedAugment.apply` centre their sample, so a mask stays on its image. It is
    PyTorch's "nearest-exact" mode, computed in float32 like its 2-D kernel (torchvision's
    ``resized_crop(InterpolationMode.NEAREST_EXACT)`` bit for bit); the legacy "nearest" mode
    reads ``floor(i * length / size)``, up to half a source pixel up and left of the sample.
    """
    scale = length.float() / size
    index = ((torch.arange(size, dtype=torch.float32) + 0.5) * scale[:, None]).floor().long()
    return torch.minimum(index, (length - 1)[:, None]) + start[:, None]


def _check_masks(masks, images: Tensor) -> None:
    """Check that masks is an int64 class map [B, H, W] for images [B, C, H, W]."""
    b, _, h, w = images.shape
    if not isinstance(masks, Tensor):
        raise TypeError(f"masks must be a torch.Tensor int64 [B, H, W] = [{b}, {h}, {w}], got {type(masks).__name__}")
    if masks.dtype != torch.long:
        raise ValueError(f"masks must be int64 class ids [B, H, W] (0 background, {IGNORE_INDEX} ignored), got "
                         f"{masks.dtype}: cast with .long()")
    if masks.shape != (b, h, w):
        raise ValueError(f"masks must be [B, H, W] = [{b}, {h}, {w}] to match images {list(images.shape)}, got "
                         f"{list(masks.shape)}")


def _grayscale_plane(x: Tensor) -> Tensor:
    """Luma [n, 1, H, W] of RGB x [n, 3, H, W], in torchvision's operation order (bit-identical)."""
    r, g, b = x.unbind(1)
    wr, wg, wb = _GRAY_WEIGHTS
    return r.mul(wr).add_(g, alpha=wg).add_(b, alpha=wb).unsqueeze(1)


def _blend_(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """In place: x * factor + other * (1 - factor), clamped to [0, 1], as torchvision's _blend.

    x [n, C, H, W]; other broadcasts to it; factor [n, 1, 1, 1].
    """
    return x.mul_(factor).addcmul_(other, 1 - factor).clamp_(0, 1)


def _adjust_hue(x: Tensor, hue: Tensor) -> Tensor:
    """Rotate the hue of RGB x [n, 3, H, W] by hue [n] (CPU, in turns); returns a new tensor.

    Equal to torchvision's RGB -> HSV -> shift -> RGB without building HSV. With V = max,
    m = min, C = V - m and H6 = 6 * (hue + shift) in [0, 6), channel n (R 5, G 3, B 1) is
    V - C * clamp(min(k, 4 - k), 0, 1) with k = (n + H6) mod 6, written here branch-free as
    m + C * (clamp(||n + H6 - 5| - 3|, 1, 2) - 1). It is continuous and 6-periodic in H6, so
    rounding at the wrap-around points is harmless. Masks are applied by multiplication:
    ``torch.where`` is two orders of magnitude slower on CPU.
    """
    r, g, b = x.unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    m = torch.minimum(torch.minimum(r, g), b)
    chroma = v - m
    # H6 from whichever channel is the maximum; where two tie, their formulas agree (mod 6).
    # The masks are float (eq with a float out=): bool masks take slow paths on CPU.
    is_max = torch.empty_like(v)
    h6 = (r - g).add_(chroma, alpha=4)  # blue is the maximum
    h6.addcmul_(torch.eq(v, g, out=is_max), (b - r).add_(chroma, alpha=2).sub_(h6))
    h6.addcmul_(torch.eq(v, r, out=is_max), (g - b).sub_(h6))
    h6.div_(chroma.clamp_(min=1e-12)).add_(6 * hue.to(x)[:, None, None])
    h6.sub_(h6.div(6).floor_().mul_(6))  # wrap into [0, 6)
    k = h6.unsqueeze(1) + torch.tensor([0.0, -2.0, -4.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    ramp = k.abs_().sub_(3).abs_().clamp_(1, 2)
    return torch.addcmul(m.sub_(chroma).unsqueeze(1), chroma.unsqueeze(1), ramp)


def _gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Blur each sample of x [n, C, H, W] with its own sigma [n] (CPU); returns a new tensor.

    torchvision's kernel (softmax of -(t / sigma)^2 on t = linspace(-l, l, k), l = (k-1)/(2 sqrt 2))
    and reflect padding, applied separably (rows, then columns). Each pass is a sum over the
    k taps of shifted views times per-sample weights [n, 1, 1, 1]: the loop runs over taps,
    not samples, and on CPU this beats a grouped convolution with n * C groups.
    """
    n, _, h, w = x.shape
    lim = (kernel_size - 1) / (2 * math.sqrt(2))
    t = torch.linspace(-lim, lim, kernel_size, device=x.device, dtype=x.dtype)
    weights = torch.softmax((t / sigma.to(x)[:, None]).pow_(2).neg_(), dim=1).view(n, 1, 1, 1, kernel_size)
    pad = kernel_size // 2
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = padded[..., :w] * weights[..., 0]
    for j in range(1, kernel_size):
        rows.addcmul_(padded[..., j : j + w], weights[..., j])
    out = rows[..., :h, :] * weights[..., 0]
    for j in range(1, kernel_size):
        out.addcmul_(rows[..., j : j + h, :], weights[..., j])
    return out


def _check_range(name: str, value: tuple[float, float], low: float, high: float) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not low <= lo <= hi <= high:
        raise ValueError(f"{name} must be (min, max) with {low} <= min <= max <= {high}, got {value}")
    return lo, hi


def _check_probability(name: str, p: float) -> float:
    if not 0 <= p <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    return float(p)


class BatchedAugment(nn.Module):
    """Augment a whole batch [B, C, H, W] in one call, every sample with its own random parameters.

    The SimCLR augmentations [1, App. A] as batched tensor ops on the data's device:
    random resized crop -> horizontal flip -> rotation -> colour jitter (brightness, contrast,
    saturation, hue; with probability ``jitter_p``) -> grayscale -> Gaussian blur. Works on
    1 or 3 channels (on 1 channel, saturation, hue and grayscale do nothing, as in torchvision).

    Every knob at its identity value switches its op off, e.g. ``crop_scale=(1, 1)`` (whole
    image), ``flip_p=0``, ``jitter_p=0`` or ``jitter=(0, 0, 0, 0)``, ``gray_p=0``,
    ``blur_p=0``, ``rotation_degrees=0``. The defaults are SimCLR's CIFAR-10 settings
    (:meth:`simclr`); :meth:`digits` is the 1-channel digits variant.

    Args:
        size: output side; the output is [B, C, size, size] whatever the input's H, W.
        crop_scale: (min, max) fraction of the image area a crop covers.
        crop_ratio: (min, max) aspect ratio w/h of a crop.
        flip_p: probability of a horizontal flip.
        jitter: (brightness, contrast, saturation, hue) strengths, as ``ColorJitter``.
        jitter_p: probability of applying the colour jitter.
        gray_p: probability of converting to grayscale.
        blur_p: probability of a Gaussian blur.
        blur_sigma: (min, max) range of the blur's sigma in pixels.
        blur_kernel: odd kernel size; ``None`` = about 10% of ``size``, at least 3 [1].
        rotation_degrees: angles are drawn uniformly in [-d, d].

    Randomness: :meth:`sample_params` draws everything on the CPU from a ``torch.Generator``,
    so a seed gives the same views on every device.

    Dense labels: :meth:`dense` / :meth:`apply_dense` also take class masks int64 [B, H, W] and
    return them moved with their images, [B, size, size].
    """

    def __init__(
        self,
        size: int = 32,
        *,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        gray_p: float = 0.2,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_kernel: int | None = None,
        rotation_degrees: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
            raise ValueError(
                f"jitter must be (brightness, contrast, saturation, hue) >= 0 with hue <= 0.5, got {jitter}"
            )
        blur_kernel = _blur_kernel_size(size) if blur_kernel is None else blur_kernel
        if blur_kernel < 1 or blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be a positive odd int, got {blur_kernel}")
        self.size = size
        self.crop_scale = _check_range("crop_scale", crop_scale, 1e-6, 1.0)
        self.crop_ratio = _check_range("crop_ratio", crop_ratio, 1e-6, math.inf)
        self.flip_p = _check_probability("flip_p", flip_p)
        self.jitter = tuple(float(j) for j in jitter)
        self.jitter_p = _check_probability("jitter_p", jitter_p)
        self.gray_p = _check_probability("gray_p", gray_p)
        self.blur_p = _check_probability("blur_p", blur_p)
        self.blur_sigma = _check_range("blur_sigma", blur_sigma, 1e-6, math.inf)
        self.blur_kernel = blur_kernel
        self.rotation_degrees = abs(float(rotation_degrees))

    @classmethod
    def simclr(cls, size: int = 32, **overrides) -> BatchedAugment:
        """SimCLR's CIFAR-10 augmentation [1]: the batched twin of :func:`simclr_transform` (same defaults).
        """
        return cls(size, **overrides)

    @classmethod
    def digits(cls, size: int = 16, **overrides) -> BatchedAugment:
        """The batched twin of :func:`digits_transform`: crop (0.5-1 of the area), +-15 degree
        rotation, blur (p 0.5, sigma 0.1-1); no flip, no colour. For [B, 1, H, W] digits [1].
        """
        settings = dict(crop_scale=(0.5, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.5,
                        blur_sigma=(0.1, 1.0), blur_kernel=3, rotation_degrees=15.0)
        return cls(size, **{**settings, **overrides})

    def extra_repr(self) -> str:
        return (f"size={self.size}, crop_scale={self.crop_scale}, crop_ratio={self.crop_ratio}, "
                f"flip_p={self.flip_p}, jitter={self.jitter}, jitter_p={self.jitter_p}, "
                f"gray_p={self.gray_p}, "
                f"blur_p={self.blur_p}, blur_sigma={self.blur_sigma}, blur_kernel={self.blur_kernel}, "
                f"rotation_degrees={self.rotation_degrees}")

    def sample_params(self, batch_size: int, generator: torch.Generator | None = None) -> AugmentParams:
        """Draw every sample's parameters on the CPU: an :class:`AugmentParams` of [batch_size] tensors.

        One ``torch.rand`` call with ``generator`` (the global RNG when ``None``) feeds all of
        them, so the same generator state gives the same parameters whatever the knobs.
        """
        u = torch.rand(batch_size, 2 * _CROP_TRIES + 12, generator=generator)
        area, log_ratio, rest = u.split([_CROP_TRIES, _CROP_TRIES, 12], dim=1)
        top, left, flip, rotation, jitter, b, c, s, h, gray, blur, sigma = rest.unbind(1)

        def between(x: Tensor, lo: float, hi: float) -> Tensor:
            return x * (hi - lo) + lo

        sb, sc, ss, sh = self.jitter
        log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        return AugmentParams(
            crop_area=between(area, *self.crop_scale),
            crop_log_ratio=between(log_ratio, log_lo, log_hi),
            crop_position=torch.stack([top, left], dim=1),
            crop_ratio=self.crop_ratio,
            flip=flip < self.flip_p,
            rotation=between(rotation, -self.rotation_degrees, self.rotation_degrees),
            jitter=jitter < self.jitter_p,
            brightness=between(b, max(0.0, 1 - sb), 1 + sb),
            contrast=between(c, max(0.0, 1 - sc), 1 + sc),
            saturation=between(s, max(0.0, 1 - ss), 1 + ss),
            hue=between(h, -sh, sh),
            gray=gray < self.gray_p,
            blur=blur < self.blur_p,
            blur_sigma=between(sigma, *self.blur_sigma),
        )

    def apply(self, x: Tensor, params: AugmentParams) -> Tensor:
        """Augment x [B, C, H, W] (float, in [0, 1], C = 1 or 3) with given parameters -> [B, C, size, size].

        Sample i of the output equals, to 1e-5 in float32 (tested; the worst seen is 6e-6),
        the ``torchvision.transforms.v2.functional`` ops applied to x[i] with params[i]:
        ``resized_crop(bilinear, antialias=True)`` with ``params.crop_boxes(H, W)[i]`` ->
        ``horizontal_flip`` -> ``rotate(bilinear, fill=0)`` -> if jitter: ``adjust_brightness``,
        ``adjust_contrast``, ``adjust_saturation``, ``adjust_hue`` -> ``rgb_to_grayscale``
        (C output channels) -> ``gaussian_blur``. The differences are float rounding:
        ``grid_sample`` takes normalised float32 coordinates, which moves sample points by
        about 1e-6 pixel; the blur is separable; the hue has a closed form; means are summed
        in another order. One deviation is by design and harmless: ``ColorJitter`` applies
        its four ops in a random order per image, this pipeline in the fixed order above.
        The input is never modified.
        """
        check_images(x)
        if len(params) != len(x):
            raise ValueError(f"params are for {len(params)} samples but x has {len(x)}: {list(x.shape)}")
        out = self._crop_and_flip(x, params)
        if self.rotation_degrees > 0:
            out = _on_subset(out, params.rotation != 0, lambda s, i: _rotate(s, params.rotation[i]))
        rgb = out.shape[1] == 3
        if any(self.jitter[:4 if rgb else 2]):  # saturation and hue do nothing to 1 channel
            out = _on_subset(out, params.jitter, lambda s, i: self._jitter(s, params, i))
        if rgb:
            out = _on_subset(out, params.gray, lambda s, i: s.copy_(_grayscale_plane(s)))
        blur = self.blur_kernel
        out = _on_subset(out, params.blur, lambda s, i: _gaussian_blur(s, params.blur_sigma[i], blur))
        # Bilinear weights and blur kernels sum to 1 only up to rounding: keep the promised range.
        return out.clamp_(0, 1)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment x [B, C, H, W] with freshly drawn parameters -> [B, C, size, size].

        ``augment(x, generator=g)`` = ``augment.apply(x, augment.sample_params(len(x), g))``.
        """
        check_images(x)
        return self.apply(x, self.sample_params(len(x), generator))

    def apply_dense(self, images: Tensor, masks: Tensor, params: AugmentParams) -> tuple[Tensor, Tensor]:
        """Augment images [B, C, H, W] and class masks int64 [B, H, W] alike -> [B, C, size, size], [B, size, size].

        The images are exactly ``apply(images, params)``. The masks take the same crop, flip and
        rotation, sampled nearest so every output pixel keeps a class: the class at the source
        pixel whose centre is nearest to where the image sampled (torchvision's
        ``resized_crop(InterpolationMode.NEAREST_EXACT)``, ``horizontal_flip`` and
        ``rotate(NEAREST, fill=IGNORE_INDEX)``, bit for bit). Pixels a rotation brings in from
        outside the image get ``IGNORE_INDEX`` (255), which losses and scores skip; colour
        jitter, grayscale and blur leave the masks alone. Neither input is modified.
        """
        check_images(images)
        _check_masks(masks, images)
        if len(params) != len(images):
            raise ValueError(f"params are for {len(params)} samples but images has {len(images)}: "
                             f"{list(images.shape)}")
        out = self._crop_and_flip_masks(masks, params)
        if self.rotation_degrees > 0:
            out = _on_subset(out, params.rotation != 0, lambda s, i: _rotate_masks(s, params.rotation[i]))
        return self.apply(images, params), out

    def dense(self, images: Tensor, masks: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Augment images [B, C, H, W] and masks int64 [B, H, W] with freshly drawn parameters.

        ``augment.dense(images, masks, generator=g)`` =
        ``augment.apply_dense(images, masks, augment.sample_params(len(images), g))``.
        """
        check_images(images)
        return self.apply_dense(images, masks, self.sample_params(len(images), generator))

    def _crop_and_flip(self, x: Tensor, params: AugmentParams) -> Tensor:
        """Random resized crop + flip -> a new tensor [B, C, size, size]."""
        b, c, h, w = x.shape
        boxes = params.crop_boxes(h, w)
        if h == w == self.size and bool((boxes == torch.tensor([0, 0, h, w])).all()):
            out = x.clone(memory_format=torch.contiguous_format)  # no resampling needed
            return _on_subset(out, params.flip, lambda s, i: s.flip(-1))
        if bool((boxes[:, 2:] <= self.size).all()):
            grid = _crop_grid(boxes, params.flip, h, w, self.size, x)
            # "border" only guards against rounding: every coordinate already lies inside the image.
            return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        # Some crop shrinks: torchvision then antialiases, which grid_sample cannot; apply the
        # exact separable resize as two batched matrix products (more work, so only here;
        # on a GPU with TF32 matmuls allowed, these lose precision like any float32 matmul).
        rows = _resize_matrix(boxes[:, 0], boxes[:, 2], h, self.size, x)  # [B, size, H]
        cols = _resize_matrix(boxes[:, 1], boxes[:, 3], w, self.size, x)  # [B, size, W]
        cols = _on_subset(cols, params.flip, lambda s, i: s.flip(1))
        return rows[:, None] @ x @ cols.transpose(1, 2)[:, None]

    def _crop_and_flip_masks(self, masks: Tensor, params: AugmentParams) -> Tensor:
        """Random resized crop + flip of masks [B, H, W] by nearest sampling -> a new tensor [B, size, size]."""
        b, h, w = masks.shape
        boxes = params.crop_boxes(h, w)
        rows = _nearest_source(boxes[:, 0], boxes[:, 2], self.size).to(masks.device)
        cols = _nearest_source(boxes[:, 1], boxes[:, 3], self.size)
        cols = torch.where(params.flip[:, None], cols.flip(1), cols).to(masks.device)
        batch = torch.arange(b, device=masks.device)
        return masks[batch[:, None, None], rows[:, :, None], cols[:, None, :]]

    def _jitter(self, x: Tensor, params: AugmentParams, index: Tensor) -> Tensor:
        """Colour jitter of the jittered samples x [n, C, H, W] (CPU index [n] into params), partly in place.

        Fixed order brightness -> contrast -> saturation -> hue (ColorJitter shuffles it per
        image; the distribution of views barely changes). An op whose strength is 0 is skipped.
        """
        def factor(values: Tensor) -> Tensor:
            return values[index].to(x).view(-1, 1, 1, 1)

        strength_b, strength_c, strength_s, strength_h = self.jitter
        if strength_b > 0:
            x.mul_(factor(params.brightness)).clamp_(0, 1)
        if strength_c > 0:
            # Contrast blends towards the mean luma of each image; the mean of the luma is the
            # luma of the channel means, which avoids a full grayscale image.
            means = x.mean(dim=(2, 3))
            if x.shape[1] == 3:
                means = means @ torch.tensor(_GRAY_WEIGHTS, device=x.device, dtype=x.dtype)
            _blend_(x, means.view(-1, 1, 1, 1), factor(params.contrast))
        if x.shape[1] == 3 and strength_s > 0:
            _blend_(x, _grayscale_plane(x), factor(params.saturation))
        if x.shape[1] == 3 and strength_h > 0:
            x = _adjust_hue(x, params.hue[index])
        return x


def view_targets(params: AugmentParams, height: int, width: int) -> dict[str, Tensor]:
    """What augmentation was applied to each view, as numbers to predict: name -> float [B].

    Ops that were not applied get their identity value, so every entry is the *effective*
    parameter of the view.

    - ``rotation``: angle in degrees.
    - ``crop_area``: fraction of the image area the crop covered (from the actual pixel box).
    - ``crop_aspect``: log of the crop's aspect ratio w / h.
    - ``flip``, ``gray``: 1 if applied, else 0.
    - ``brightness``, ``contrast``, ``saturation``: factor (1 when no jitter); ``hue``: shift (0).
    - ``blur_sigma``: the blur's sigma in pixels (0 when no blur).

    Args:
        params: from ``BatchedAugment.sample_params``.
        height, width: of the images the crops were taken from.
    """
    boxes = params.crop_boxes(height, width).double()
    jitter = params.jitter.double()

    def jittered(values: Tensor, identity: float) -> Tensor:
        return (jitter * values.double() + (1 - jitter) * identity).float()

    return {
        "rotation": params.rotation.float(),
        "crop_area": (boxes[:, 2] * boxes[:, 3] / (height * width)).float(),
        "crop_aspect": (boxes[:, 3] / boxes[:, 2]).log().float(),
        "flip": params.flip.float(),
        "brightness": jittered(params.brightness, 1.0),
        "contrast": jittered(params.contrast, 1.0),
        "saturation": jittered(params.saturation, 1.0),
        "hue": jittered(params.hue, 0.0),
        "gray": params.gray.float(),
        "blur_sigma": (params.blur.float() * params.blur_sigma.float()),
    }


@torch.no_grad()
def augmented_views(
    images: Tensor,
    augment,
    n_views: int = 2,
    seed: int = 0,
    targets: Sequence[str] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``n_views`` augmented views of every image, with the parameters that made them.

    Args:
        images: [N, C, H, W] in [0, 1].
        augment: a :class:`clcourse.augment.BatchedAugment` (needs ``sample_params``/``apply``).
        n_views: views per image; the output stacks view 1 of every image, then view 2, ...
        seed: seeds the CPU generator of the parameters (same views on every device).
        targets: names of :func:`view_targets` to keep; ``None`` keeps all.

    Returns:
        views [n_views * N, C, size, size] and targets: name -> float [n_views * N] (CPU).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {list(images.shape)}")
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    g = torch.Generator().manual_seed(seed)
    views, parts = [], []
    for _ in range(n_views):
        params = augment.sample_params(len(images), g)
        views.append(augment.apply(images, params))
        parts.append(view_targets(params, images.shape[2], images.shape[3]))
    names = list(parts[0]) if targets is None else list(targets)
    unknown = [t for t in names if t not in parts[0]]
    if unknown:
        raise ValueError(f"unknown targets {unknown}; choose from {list(parts[0])}")
    return torch.cat(views), {t: torch.cat([p[t] for p in parts]) for t in names}
