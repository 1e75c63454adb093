"""Encoders and heads.

An *encoder* maps images [B, C, H, W] to representations [B, out_dim]; it is
what we evaluate and reuse downstream.  A *projection head* maps
representations to the space where the contrastive loss is computed; it is
dropped after pre-training because the layer before it keeps more information
([1], section 4.2).  A *prediction head* sits on top of the projection in
methods such as NNCLR and BYOL.

[1] Chen et al., A Simple Framework for Contrastive Learning of Visual
    Representations (SimCLR), ICML 2020.
[2] He et al., Deep Residual Learning for Image Recognition, CVPR 2016.
[3] Yarats et al., Improving Sample Efficiency in Model-Free Reinforcement Learning from Images (SAC-AE), AAAI 2021;
    the pixel encoder that CURL [4] reuses.
[4] Srinivas, Laskin et al., CURL: Contrastive Unsupervised Representations for Reinforcement Learning, ICML 2020.
[5] Chen & He, Exploring Simple Siamese Representation Learning (SimSiam), CVPR 2021.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from clcourse.checks import check_images


class SmallCNN(nn.Module):
    """A small convolutional encoder for 8-32 px images (the quick profile's workhorse).

    Three conv-BN-ReLU blocks (the last two downsample by 2), then average
    pooling to a ``pool_size`` x ``pool_size`` grid, flattening and a linear layer.

    Args:
        in_channels: 1 (digits) or 3 (colour images).
        width: channels of the first block; later blocks use 2x and 4x.
        out_dim: size of the representation.
        pool_size: 1 is global average pooling; 2 keeps a coarse 2x2 layout
            of where the features are (the whole last feature map of an 8x8
            digit), which pays on tiny images whose position is normalised.

    Shapes: [B, in_channels, H, W] -> [B, out_dim].
    """

    def __init__(self, in_channels: int = 1, width: int = 32, out_dim: int = 128, pool_size: int = 1):
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self.in_channels = in_channels
        self.out_dim = out_dim

        def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(
            block(in_channels, width, 1),
            block(width, 2 * width, 2),
            block(2 * width, 4 * width, 2),
            nn.AdaptiveAvgPool2d(pool_size),
            nn.Flatten(),
        )
        self.fc = nn.Linear(4 * width * pool_size**2, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.in_channels)
        return self.fc(self.features(x))


class ResNet18(nn.Module):
    """ResNet-18 [2] without its classifier, with the stem chosen for the image size.

    - ``stem="cifar"``: conv1 a 3x3 stride-1 convolution and no max-pool, SimCLR's
      modification for 32 px images [1] (appendix B.9);
    - ``stem="imagenet"``: torchvision's 7x7 stride-2 convolution and max-pool, for 96 px
      STL-10 and larger, where the CIFAR stem (no downsampling) would cost 9x the compute.

    Shapes: [B, in_channels, H, W] -> [B, 512].
    """

    STEMS = ("cifar", "imagenet")

    def __init__(self, in_channels: int = 3, stem: str = "cifar"):
        super().__init__()
        if stem not in self.STEMS:
            raise ValueError(f"stem must be one of {self.STEMS}, got {stem!r}")
        net = torchvision.models.resnet18(weights=None)
        if stem == "cifar":
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        net.fc = nn.Identity()
        self.net = net
        self.in_channels = in_channels
        self.stem = stem
        self.out_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.in_channels)
        return self.net(x)


class PixelEncoder(nn.Module):
    """The pixel encoder of SAC-AE [3] and CURL [4]: convolutions that keep the layout, then a normalised code.

    ``layers`` 3 x 3 convolutions of ``filters`` channels with ReLU (the first of stride 2, the others 1; no
    pooling, so the code still knows where things are), a linear layer to ``out_dim``, LayerNorm and tanh.

    Args:
        in_channels: the stacked frames' channels (3 per RGB frame).
        size: the input's side S (the crop fed to it).
        out_dim: size of the code (CURL: 50).
        layers, filters: depth and width (CURL: 4 and 32).

    Shapes: float [B, in_channels, S, S] in [0, 1] -> [B, out_dim] in (-1, 1).
    """

    def __init__(self, in_channels: int, size: int, out_dim: int = 50, layers: int = 4, filters: int = 32):
        super().__init__()
        if layers < 1 or size < 3 + 2 * layers:
            raise ValueError(f"need layers >= 1 and size >= {3 + 2 * max(layers, 1)} for {layers} 3 x 3 convolutions, "
                             f"got layers={layers}, size={size}")
        self.in_channels, self.size, self.out_dim = in_channels, size, out_dim
        convs = [nn.Conv2d(in_channels, filters, 3, stride=2), nn.ReLU()]
        for _ in range(layers - 1):
            convs += [nn.Conv2d(filters, filters, 3, stride=1), nn.ReLU()]
        self.convs = nn.Sequential(*convs, nn.Flatten())
        side = (size - 3) // 2 + 1 - 2 * (layers - 1)
        self.fc = nn.Linear(filters * side * side, out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, self.size, self.size):
            raise ValueError(f"PixelEncoder expects [B, {self.in_channels}, {self.size}, {self.size}] floats in "
                             f"[0, 1], got {list(x.shape)}")
        return torch.tanh(self.norm(self.fc(self.convs(x))))


def resnet18_cifar(in_channels: int = 3) -> ResNet18:
    """A ResNet-18 with the CIFAR stem [1]; see :class:`ResNet18`."""
    return ResNet18(in_channels, stem="cifar")


class MLP(nn.Module):
    """A multilayer perceptron on flat vectors (or images, flattened).

    Args:
        in_dim: input size (for images: C*H*W).
        hidden_dims: sizes of the hidden layers (Linear-BN-ReLU each).
        out_dim: output size.

    Shapes: [B, in_dim] or [B, C, H, W] with C*H*W == in_dim -> [B, out_dim].
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int] = (256,), out_dim: int = 128):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_dim
        for h in hidden_dims:
            layers += [nn.Linear(prev, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
            prev = h
        layers.append(nn.Linear(prev, out_dim))
        self.net = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.in_dim:
            raise ValueError(f"expected inputs with {self.in_dim} features, got {x.shape[1]}")
        return self.net(x)


class ProjectionHead(nn.Module):
    """The nonlinear projection head g(.) of SimCLR [1]: (Linear-BN-ReLU) x (L-1), then Linear.

    ``num_layers=1`` gives a linear head and ``num_layers=0`` the identity
    (the three heads compared in [1], figure 8).

    Args:
        in_dim: encoder output size.
        hidden_dim: width of the hidden layers (default: ``in_dim``).
        out_dim: size of the space the loss sees.
        num_layers: number of Linear layers.
        batch_norm: put BatchNorm after each hidden Linear.
        output_batch_norm: put BatchNorm without affine parameters after the last Linear too (and drop that
            Linear's bias), as SimSiam's projector [5].

    Shapes: [B, in_dim] -> [B, out_dim] (``in_dim`` when ``num_layers=0``).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int | None = None,
        out_dim: int = 128,
        num_layers: int = 2,
        batch_norm: bool = True,
        output_batch_norm: bool = False,
    ):
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        hidden_dim = hidden_dim or in_dim
        layers: list[nn.Module] = []
        prev = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(prev, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            prev = hidden_dim
        if num_layers >= 1:
            layers.append(nn.Linear(prev, out_dim, bias=not output_batch_norm))
            if output_batch_norm:
                layers.append(nn.BatchNorm1d(out_dim, affine=False))
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim if num_layers >= 1 else in_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.ndim != 2:
            raise ValueError(f"expected representations [B, D], got shape {list(h.shape)}")
        return self.net(h)


class PredictionHead(ProjectionHead):
    """The predictor q(.) of NNCLR / BYOL: a 2-layer MLP from the projection space to itself.

    Shapes: [B, dim] -> [B, dim].

    [3] Dwibedi et al., With a Little Help from My Friends (NNCLR), ICCV 2021.
    """

    def __init__(self, dim: int = 128, hidden_dim: int = 512):
        super().__init__(dim, hidden_dim=hidden_dim, out_dim=dim, num_layers=2)


class SegmenterOutput(NamedTuple):
    """What :class:`SmallSegmenter` returns: class logits at the input's size and unit pixel embeddings.

    Attributes:
        logits: [B, K, H, W], one score per class and pixel (for cross-entropy and the prediction).
        embeddings: [B, E, h, w], L2-normalised along E, at the feature resolution (h = ceil(H / 2)).
    """

    logits: torch.Tensor
    embeddings: torch.Tensor


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallSegmenter(nn.Module):
    """A small fully-convolutional segmenter for 16-64 px images, with the projection head of pixel contrast [4].

    A tiny encoder-decoder: a full-resolution conv, two stages that each halve the resolution
    (1/2, then 1/4), and a decoder that upsamples the 1/4 features bilinearly and adds them to the
    1/2 ones (a skip connection: the deep stage knows *what*, the shallow one *where*). On those
    1/2-resolution features F sit two heads:

    - the classifier, a 1x1 conv to K logits, upsampled bilinearly to the input size;
    - the projection head of [4]: 1x1 conv - BN - ReLU - 1x1 conv to E channels, then L2
      normalisation over the channels: one unit embedding per pixel of F, the space the
      pixel-contrast loss sees (dropped after training, like SimCLR's head).

    Every layer is a convolution, batch norm, ReLU or interpolation, so the network takes any
    image size and runs channels-last on any device.

    Args:
        in_channels: 1 or 3.
        num_classes: K, the background included.
        width: channels of the full-resolution conv; the 1/2 and 1/4 stages use 2x and 4x.
        embedding_dim: E, the size of the pixel embeddings (256 in [4]).

    Shapes: images [B, in_channels, H, W] -> :class:`SegmenterOutput` with logits [B, K, H, W] and
    embeddings [B, E, ceil(H / 2), ceil(W / 2)].

    [4] Wang et al., Exploring Cross-Image Pixel Contrast for Semantic Segmentation, ICCV 2021.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 7, width: int = 32, embedding_dim: int = 64):
        super().__init__()
        for name, value, least in (("in_channels", in_channels, 1), ("num_classes", num_classes, 2),
                                   ("width", width, 1), ("embedding_dim", embedding_dim, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self.stem = _conv_bn_relu(in_channels, width)
        self.down2 = nn.Sequential(_conv_bn_relu(width, 2 * width, stride=2), _conv_bn_relu(2 * width, 2 * width))
        self.down4 = nn.Sequential(_conv_bn_relu(2 * width, 4 * width, stride=2), _conv_bn_relu(4 * width, 4 * width))
        # 1x1 before upsampling: the skip sum needs 2w channels, and mixing at 1/4 costs a quarter as much
        self.lateral = nn.Sequential(nn.Conv2d(4 * width, 2 * width, 1, bias=False), nn.BatchNorm2d(2 * width))
        self.fuse = _conv_bn_relu(2 * width, 2 * width)
        self.classifier = nn.Conv2d(2 * width, num_classes, 1)
        self.projection = nn.Sequential(
            nn.Conv2d(2 * width, 2 * width, 1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, embedding_dim, 1),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's features F: [B, in_channels, H, W] -> [B, 2 * width, ceil(H / 2), ceil(W / 2)]."""
        check_images(x, self.in_channels)
        half = self.down2(self.stem(x))
        deep = F.interpolate(self.lateral(self.down4(half)), size=half.shape[-2:], mode="bilinear",
                             align_corners=False)
        return self.fuse(F.relu(half + deep))

    def forward(self, x: torch.Tensor) -> SegmenterOutput:
        features = self.features(x)
        logits = F.interpolate(self.classifier(features), size=x.shape[-2:], mode="bilinear", align_corners=False)
        embeddings = F.normalize(self.projection(features), dim=1)
        return SegmenterOutput(logits, embeddings)
