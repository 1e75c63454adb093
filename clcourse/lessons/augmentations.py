"""Lesson 01 helpers: sample photographs, the shortcut experiment, a throughput measurement.

The shortcut experiment [1, Sec. 3.1, Figs. 5-6] trains the same SimCLR model with different
augmentations (:func:`variant_augment`) and asks, with one linear probe per generative factor
of the shapes data (:func:`clcourse.data.make_shapes`), what the encoder learned: the shape
(what we want) or the colour (a shortcut). With random crops only, two views of an image share
its colours; once every image has colours of its own (:func:`instance_colors`), colour alone
tells a positive pair from the negatives and the encoder has no reason to learn the shape.
Colour jitter and random grayscale take that shortcut away. :func:`train_and_probe` runs one
variant; :func:`clcourse.viz.neighbours.nearest_neighbours` shows what the features group together.

[1] Chen et al., A Simple Framework for Contrastive Learning of Visual Representations
    (SimCLR), ICML 2020.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from clcourse.augment import BatchedAugment
from clcourse.data import COLOR_VALUES, ImageData, ViewLoader
from clcourse.encoders import SmallCNN
from clcourse.evaluate import extract_features, linear_probe
from clcourse.methods.simclr import SimCLR
from clcourse.train import History, fit

__all__ = [
    "sample_photos",
    "instance_colors",
    "VARIANTS",
    "variant_augment",
    "probe_factors",
    "ShortcutResult",
    "train_and_probe",
    "images_per_second",
]


def sample_photos(size: int = 96) -> Tensor:
    """Two real photographs (a temple, a flower) that ship with scikit-learn, as squares.

    ``sklearn.datasets.load_sample_images`` (427 x 640 JPEGs, offline): the left square of
    ``china.jpg`` and the centre square of ``flower.jpg``, resized with antialiasing.

    Returns:
        float32 [2, 3, size, size] in [0, 1].
    """
    from sklearn.datasets import load_sample_images
    from torchvision.transforms.v2 import functional as TF

    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    china, flower = (torch.from_numpy(image.copy()).permute(2, 0, 1) for image in load_sample_images().images)
    side = china.shape[1]
    left = (flower.shape[2] - side) // 2
    squares = [china[:, :, :side], flower[:, :, left : left + side]]
    return torch.stack([TF.resize(sq.float() / 255, [size, size], antialias=True) for sq in squares]).clamp_(0, 1)


def _decompose(data: ImageData) -> tuple[Tensor, Tensor, Tensor]:
    """Split shapes images into (coverage [N, 1, H, W], grey background [N, 1, H, W], fill [N, 3]).

    ``make_shapes`` renders ``image = grey * (1 - coverage) + fill * coverage`` with a grey
    (equal-channel) background and the solid fill ``COLOR_VALUES[color]``. Per pixel, the two
    channels a, b where the fill differs most give ``coverage = (x_a - x_b) / (f_a - f_b)``
    exactly, and then the grey level.
    """
    x = data.images
    fill = COLOR_VALUES.to(x.device)[data.factors["color"].to(x.device)]  # [N, 3]
    pair = (fill[:, :, None] - fill[:, None, :]).abs().flatten(1).argmax(dim=1)  # [N] in 0..8
    a, b = (pair // 3).view(-1, 1, 1, 1), (pair % 3).view(-1, 1, 1, 1)
    spatial = (-1, 1, *x.shape[2:])
    x_a, x_b = x.gather(1, a.expand(spatial)), x.gather(1, b.expand(spatial))
    f_a, f_b = fill.gather(1, a.view(-1, 1)).view(-1, 1, 1, 1), fill.gather(1, b.view(-1, 1)).view(-1, 1, 1, 1)
    coverage = ((x_a - x_b) / (f_a - f_b)).clamp(0, 1)
    grey = (x - coverage * fill[:, :, None, None]).mean(dim=1, keepdim=True) / (1 - coverage).clamp(min=1e-6)
    return coverage, grey.clamp(0, 1), fill


def instance_colors(
    data: ImageData, fill_jitter: float = 0.15, tint: float = 0.4, seed: int = 0
) -> ImageData:
    """Give every shapes image its own colours, as every photo has its own colour distribution.

    ``make_shapes`` uses 6 exact fill colours on grey backgrounds, so colour alone splits a batch
    into only 6 groups. Here each image's fill moves by up to ``fill_jitter`` per channel
    (uniform; the fill stays nearest its named colour, so the ``"color"`` factor keeps its
    meaning) and its background is tinted by a factor in [1 - tint, 1 + tint] per channel.
    Then colour nearly identifies the image, and two crops of one image share it: the
    shortcut SimCLR describes [1, Sec. 3, Fig. 6], where crops of one image are told apart
    from other images by their colour histograms alone.

    Args:
        data: from :func:`clcourse.data.make_shapes` (images [N, 3, H, W], factor ``"color"``).
        fill_jitter: half-width of the uniform change of each fill channel.
        tint: half-width of the uniform background tint factor around 1, per channel.
        seed: seeds the draws (CPU generator).

    Returns:
        a new :class:`~clcourse.data.ImageData`, same labels and factors; images in [0, 1].
    """
    if not 0 <= fill_jitter <= 0.25:
        raise ValueError(f"fill_jitter must be in [0, 0.25] (fills stay nearest their colour), got {fill_jitter}")
    if not 0 <= tint <= 1:
        raise ValueError(f"tint must be in [0, 1], got {tint}")
    if "color" not in data.factors or data.images.shape[1] != 3:
        raise ValueError(f"expected shapes data (3 channels, factor 'color'), got {data!r}")
    coverage, grey, fill = _decompose(data)
    g = torch.Generator().manual_seed(seed)
    n = len(data)
    fill = (fill + fill_jitter * (2 * torch.rand(n, 3, generator=g) - 1).to(fill)).clamp(0, 1)
    background = grey * (1 + tint * (2 * torch.rand(n, 3, 1, 1, generator=g) - 1).to(grey))
    images = (background * (1 - coverage) + fill[:, :, None, None] * coverage).clamp(0, 1)
    return ImageData(images, data.labels.clone(), {k: v.clone() for k, v in data.factors.items()})


# Which ops each variant of the experiment keeps (flip goes with the crop: both move pixels).
VARIANTS = ("none", "crop", "color", "crop+color")


def variant_augment(
    variant: str,
    size: int = 32,
    *,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    jitter_strength: float = 0.5,
    gray_p: float = 0.2,
    blur_p: float = 0.0,
) -> BatchedAugment:
    """The :class:`~clcourse.augment.BatchedAugment` of one variant of the shortcut experiment.

    Args:
        variant: one of `VARIANTS`: ``"none"`` (views equal the image, only resized to
            ``size``), ``"crop"`` (random resized crop + horizontal flip), ``"color"``
            (colour jitter with p = 0.8 + random grayscale), ``"crop+color"`` (both).
        size: output side; views are [B, C, size, size].
        crop_scale: area range of the random resized crop.
        jitter_strength: s of SimCLR's ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) [1, App. A].
        gray_p: probability of random grayscale in the colour variants.
        blur_p: probability of a Gaussian blur, in every variant (SimCLR omits it on CIFAR-10).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    crop = "crop" in variant
    color = "color" in variant
    s = jitter_strength
    return BatchedAugment(
        size,
        crop_scale=crop_scale if crop else (1.0, 1.0),
        flip_p=0.5 if crop else 0.0,
        jitter=(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s),
        jitter_p=0.8 if color else 0.0,
        gray_p=gray_p if color else 0.0,
        blur_p=blur_p,
    )


def probe_factors(
    encoder: nn.Module,
    train: ImageData,
    test: ImageData,
    factors: Sequence[str] = ("shape", "color"),
    *,
    C: float = 1.0,
) -> dict[str, float]:
    """Linear-probe test accuracy in [0, 1] of each factor, on the frozen encoder's features.

    Args:
        encoder: maps [B, C, H, W] -> [B, D]; evaluated in eval mode, on un-augmented images.
        train, test: :class:`~clcourse.data.ImageData` whose ``factors`` hold every name in ``factors``.
        factors: factor names, e.g. ``("shape", "color")``.
        C: inverse L2 strength of the logistic regression.

    Returns:
        ``{factor: accuracy}``. The features are extracted once and probed per factor
        (logistic regression on standardised features, all training labels [1]).
    """
    for name in factors:
        for split, data in (("train", train), ("test", test)):
            if name not in data.factors:
                raise ValueError(f"{split} data has no factor {name!r}; it has {list(data.factors)}")
    train_x, _ = extract_features(encoder, train.images)
    test_x, _ = extract_features(encoder, test.images)
    # One BLAS thread: these problems are small, and threads that spin-wait on a busy machine
    # made each probe tens of times slower (measured: 35 s -> 0.5 s of CPU per probe).
    with threadpool_limits(limits=1, user_api="blas"):
        return {
            name: linear_probe(train_x, train.factors[name], test_x, test.factors[name], C=C).mean
            for name in factors
        }


@dataclass
class ShortcutResult:
    """One run of the shortcut experiment.

    Attributes:
        variant: the name the run was given (e.g. ``"crop"``).
        accuracy: factor name -> linear-probe test accuracy in [0, 1].
        history: the training :class:`~clcourse.train.History` (``None`` for an untrained encoder).
        model: the :class:`~clcourse.methods.simclr.SimCLR` model (untrained for the baseline run).
    """

    variant: str
    accuracy: dict[str, float]
    history: History | None = None
    model: SimCLR | None = field(default=None, repr=False)


def train_and_probe(
    train: ImageData,
    test: ImageData,
    augment: Callable[..., Tensor] | None,
    *,
    variant: str = "",
    factors: Sequence[str] = ("shape", "color"),
    width: int = 32,
    out_dim: int = 128,
    projection_dim: int = 64,
    temperature: float = 0.5,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    device: torch.device | str | None = None,
    make_encoder: Callable[[], nn.Module] | None = None,
    progress: bool = False,
    **budget,
) -> ShortcutResult:
    """Train SimCLR [1] with ``augment`` on ``train`` and linear-probe every factor on ``test``.

    Args:
        train, test: shapes data [N, 3, S, S] with factors (``make_shapes``).
        augment: batched ``augment(x [B, C, H, W], generator=g)``, e.g. :func:`variant_augment`;
            ``None`` skips training and probes the freshly initialised encoder (the baseline:
            what a random convolutional network already exposes).
        variant: a name stored in the result.
        factors: factors to probe.
        width, out_dim: of the :class:`~clcourse.encoders.SmallCNN` encoder (3 channels).
        projection_dim, temperature: of the :class:`~clcourse.methods.simclr.SimCLR` head and loss.
        batch_size, lr: of the training (Adam, cosine schedule).
        seed: seeds the encoder's initialisation and the loader's order and views.
        device: where to train; default: the best available.
        make_encoder: builds the encoder instead of a SmallCNN (e.g. ``resnet18_cifar`` in the full
            profile); called after seeding, so the initialisation is reproducible too.
        progress: show fit's progress bar.
        **budget: exactly one of ``seconds=``, ``steps=``, ``epochs=`` for :func:`~clcourse.train.fit`.

    Returns:
        a :class:`ShortcutResult`.
    """
    torch.manual_seed(seed)
    if make_encoder is None:
        encoder = SmallCNN(in_channels=train.images.shape[1], width=width, out_dim=out_dim)
    else:
        encoder = make_encoder()
    model = SimCLR(encoder, projection_dim=projection_dim, temperature=temperature)
    history = None
    if augment is not None:
        loader = ViewLoader(train, augment, batch_size=batch_size, seed=seed, device=device)
        history = fit(model, loader, lr=lr, schedule="cosine", device=device, progress=progress, **budget)
    accuracy = probe_factors(model.encoder, train, test, factors)
    return ShortcutResult(variant, accuracy, history, model)


def images_per_second(
    augment: Callable[[Tensor], Tensor],
    images: Tensor,
    *,
    batched: bool,
    seconds: float = 1.0,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> float:
    """Throughput of an augmentation pipeline in images per second, measured for about ``seconds``.

    Args:
        augment: per-sample ``augment(x [C, H, W])`` (``batched=False``, e.g.
            :func:`clcourse.augment.simclr_transform`), or batched ``augment(x [B, C, H, W],
            generator=g)`` (``batched=True``, e.g. :class:`~clcourse.augment.BatchedAugment`).
        images: [N, C, H, W]; batches of ``batch_size`` are cycled through.
        batched: which kind ``augment`` is.
        seconds: wall-clock time to measure for (after one warm-up batch).
        batch_size: images per timed call (batched) or per timed loop (per sample).
        generator: for the batched pipeline's parameters.

    Returns:
        images augmented per second of wall-clock time.
    """
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty tensor [N, C, H, W], got shape {list(images.shape)}")
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")

    def one_batch(x: Tensor) -> None:
        if batched:
            augment(x, generator=generator)
        else:
            for image in x:
                augment(image)
        if x.is_cuda:  # GPU work is asynchronous: wait for it, or the clock measures the launch only
            torch.cuda.synchronize(x.device)

    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    one_batch(batches[0])  # warm-up: first calls allocate and dispatch
    done, start, i = 0, time.perf_counter(), 0
    while True:
        x = batches[i % len(batches)]
        one_batch(x)
        done += len(x)
        i += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


