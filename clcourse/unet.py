"""A small U-Net: an encoder that halves the resolution level by level, a decoder that climbs back with skips.

The encoder's levels give feature maps at full, 1/2, 1/4, ... resolution; the deepest one (the
*bottleneck*) is what an image-level method pools into a representation. The decoder upsamples the
bottleneck level by level and adds the encoder's map of the same resolution (the *skip connection*),
so that the detail lost by the pooling comes back; a 1x1 convolution on its full-resolution output
predicts a value per pixel: an image (reconstruction, PCRL's pretext task) or class scores
(segmentation, fine-tuned from the same encoder and decoder).

Sized for the course's 64-pixel, 1-channel slices on a CPU. Two departures from the original
U-Net [1], both for speed: one 3x3 convolution per level, and skips *added* to the upsampled map
(as LinkNet does) rather than concatenated, which halves the work of the decoder's convolutions.
The full-resolution level stays, though it costs more than all the others: the lesions of
:func:`clcourse.data.make_lesions` are 3 to 8 pixels across, and a variant that starts at half
resolution (a stride-2 first convolution, the prediction upsampled) segmented them with a Dice of
0.02 (0.12 with a sub-pixel head) where this one reached 0.53 to 0.57, after the same 300 steps on
200 labelled slices. The convolutions keep their weights channels-last (NHWC), the layout in which
oneDNN runs these small-channel layers on a CPU about 1.5x faster (and the one
:func:`clcourse.train.fit` chooses on a GPU).

[1] Ronneberger et al., U-Net: Convolutional Networks for Biomedical Image Segmentation, MICCAI 2015.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clcourse.checks import check_images
from clcourse.data.dense_data import IGNORE_INDEX
from clcourse.evaluate import predict_segmentation

__all__ = ["DEFAULT_WIDTHS", "UNetEncoder", "UNetDecoder", "UNet", "pixel_head"]

DEFAULT_WIDTHS = (8, 16, 32, 64)


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def _check_widths(widths) -> tuple[int, ...]:
    widths = tuple(widths)
    if len(widths) < 2 or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise ValueError(f"widths must be at least 2 positive ints (channels per level), got {widths!r}")
    return widths


class UNetEncoder(nn.Module):
    """The contracting half of the U-Net: L levels, each (2x2 max-pool, except the first) + conv-BN-ReLU.

    Args:
        in_channels: C of the images.
        widths: channels of the L levels, shallow to deep (the bottleneck has ``widths[-1]``).

    Attributes:
        out_dim: ``widths[-1]``, the size of the pooled representation.
        reduction: 2^(L-1); image sides must be multiples of it (8 for the default 4 levels).

    Shapes: :meth:`features` [B, C, H, W] -> L maps [B, widths[l], H / 2^l, W / 2^l];
    ``forward`` -> the bottleneck averaged over its pixels, [B, out_dim].
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = DEFAULT_WIDTHS):
        super().__init__()
        widths = _check_widths(widths)
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        deeper = [nn.Sequential(nn.MaxPool2d(2), _conv_bn_relu(a, b)) for a, b in zip(widths, widths[1:])]
        self.levels = nn.ModuleList([_conv_bn_relu(in_channels, widths[0]), *deeper])
        self.in_channels = in_channels
        self.widths = widths
        self.out_dim = widths[-1]
        self.reduction = 2 ** (len(widths) - 1)
        self.to(memory_format=torch.channels_last)  # see the module docstring

    def check(self, x) -> None:
        """Raise a ValueError unless x is a float batch [B, in_channels, H, W] with H, W multiples of ``reduction``."""
        check_images(x, self.in_channels)
        h, w = x.shape[-2:]
        if h % self.reduction or w % self.reduction or h == 0 or w == 0:
            raise ValueError(f"the U-Net halves the image {len(self.widths) - 1} times, so H and W must be positive "
                             f"multiples of {self.reduction}, got {h} x {w}")

    def feature_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """(channels, height, width) of the L maps of an image of ``height`` x ``width``."""
        return [(c, height >> i, width >> i) for i, c in enumerate(self.widths)]

    def features(self, x: Tensor) -> list[Tensor]:
        """The L feature maps of x [B, C, H, W], shallow (full resolution) to deep (the bottleneck)."""
        self.check(x)
        maps = []
        for level in self.levels:
            x = level(x)
            maps.append(x)
        return maps

    def forward(self, x: Tensor) -> Tensor:
        """Pooled bottleneck: [B, C, H, W] -> [B, out_dim]."""
        return self.features(x)[-1].mean(dim=(2, 3))


class UNetDecoder(nn.Module):
    """The expanding half: from the bottleneck up, each level 1x1 conv, x2 nearest upsampling, + skip, conv-BN-ReLU.

    Args:
        widths: the encoder's ``widths``.

    Shapes: forward(L maps as :meth:`UNetEncoder.features` returns them) -> [B, widths[0], H, W].
    """

    def __init__(self, widths: Sequence[int] = DEFAULT_WIDTHS):
        super().__init__()
        widths = _check_widths(widths)
        pairs = list(zip(widths[:0:-1], widths[-2::-1]))  # (deep, shallow) channels, from the bottleneck up
        # The 1x1 conv matches the channels of the skip before the sum, at the low resolution where it is cheap.
        self.reduce = nn.ModuleList([nn.Conv2d(deep, shallow, 1) for deep, shallow in pairs])
        self.fuse = nn.ModuleList([_conv_bn_relu(shallow, shallow) for _, shallow in pairs])
        self.widths = widths
        self.out_channels = widths[0]
        self.to(memory_format=torch.channels_last)  # see the module docstring

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if len(features) != len(self.widths):
            raise ValueError(f"the decoder expects {len(self.widths)} feature maps (one per level), "
                             f"got {len(features)}")
        x = features[-1]
        for reduce, fuse, skip in zip(self.reduce, self.fuse, features[-2::-1]):
            x = fuse(F.interpolate(reduce(x), scale_factor=2.0, mode="nearest") + skip)
        return x


def pixel_head(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 1x1 convolution on the decoder's output: [B, in_channels, H, W] -> [B, out_channels, H, W]."""
    return nn.Conv2d(in_channels, out_channels, 1).to(memory_format=torch.channels_last)


class UNet(nn.Module):
    """Encoder + decoder + a 1x1 convolution: a value per pixel and output channel.

    Args:
        in_channels: C of the images.
        out_channels: K outputs per pixel: class scores for segmentation (K >= 2, background
            included), or the image's channels for a reconstruction.
        widths: channels per level (ignored when encoder and decoder are given).
        encoder, decoder: pre-trained halves to start from (e.g. PCRL's); default fresh ones.
        class_weights: K weights of the classes in the cross-entropy (None: all 1). Lesions cover
            under 1% of the pixels of :func:`~clcourse.data.make_lesions`: with plain
            cross-entropy, 200 steps on 100 labelled slices ended at "all background" (Dice 0) for
            one seed in two; weights (1, 10) gave a Dice of 0.57 and 0.51.

    Shapes: forward [B, C, H, W] -> [B, K, H, W], H and W multiples of ``encoder.reduction``.

    Trains with :func:`clcourse.train.fit` on batches ``(images [B, C, H, W], masks int64 [B, H, W])``
    (a :class:`~clcourse.data.DenseLoader`): the per-pixel cross-entropy, pixels marked
    :data:`~clcourse.data.dense_data.IGNORE_INDEX` left out.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, widths: Sequence[int] = DEFAULT_WIDTHS, *,
                 encoder: UNetEncoder | None = None, decoder: UNetDecoder | None = None,
                 class_weights: Sequence[float] | None = None):
        super().__init__()
        if not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"out_channels must be a positive int, got {out_channels!r}")
        if class_weights is not None:
            class_weights = tuple(float(w) for w in class_weights)
            if len(class_weights) != out_channels or not all(0 < w < float("inf") for w in class_weights):
                raise ValueError(f"class_weights must be {out_channels} finite numbers > 0 (one per class), "
                                 f"got {class_weights}")
        self.encoder = UNetEncoder(in_channels, widths) if encoder is None else encoder
        self.decoder = UNetDecoder(self.encoder.widths) if decoder is None else decoder
        if self.decoder.widths != self.encoder.widths:
            raise ValueError(f"encoder and decoder must have the same widths, got {self.encoder.widths} and "
                             f"{self.decoder.widths}")
        self.head = pixel_head(self.decoder.out_channels, out_channels)
        self.out_channels = out_channels
        self.class_weights = class_weights

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.decoder(self.encoder.features(x)))

    def training_step(self, batch) -> Tensor:
        """Per-pixel cross-entropy, ``class_weights`` applied, of ``(images [B, C, H, W], masks int64 [B, H, W])``."""
        images, masks = batch
        if self.out_channels < 2:
            raise ValueError(f"segmentation needs out_channels >= 2 (background included), got {self.out_channels}")
        self.encoder.check(images)
        expected = (images.shape[0], *images.shape[2:])
        if not isinstance(masks, Tensor) or masks.dtype != torch.long or masks.shape != expected:
            got = f"{masks.dtype} {list(masks.shape)}" if isinstance(masks, Tensor) else type(masks).__name__
            raise ValueError(f"masks must be int64 [B, H, W] matching images {list(images.shape)}, got {got}")
        logits = self(images)
        weight = None if self.class_weights is None else torch.tensor(self.class_weights, device=logits.device)
        return F.cross_entropy(logits, masks, weight=weight, ignore_index=IGNORE_INDEX)

    def predict(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """The most likely class of every pixel of images [N, C, H, W]: int64 [N, H, W] on the CPU (eval mode)."""
        check_images(images, self.encoder.in_channels, batch="N")
        return predict_segmentation(self, images, batch_size)
