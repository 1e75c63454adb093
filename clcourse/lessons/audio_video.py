"""Lesson 18 helpers, sound and video: contrastive learning beyond images, probed against raw inputs.

Sound: synthesised clips (`clcourse.data.sounds`) become log-mel spectrograms [1, n_mels, frames]
(`clcourse.audio`), a picture a SmallCNN reads; SimCLR's NT-Xent [1] contrasts two views made by
`SpectrogramAugment` (a time shift, a gain, noise and SpecAugment's masks), with segments of one clip as
positives as in COLA [2]. Video: clips of a moving shape (`clcourse.data.clips`); two windows of 3 consecutive
frames of one clip, stacked as channels, are a positive pair and windows of other clips the negatives, the
time-contrastive idea of TCN [3]. Either way :func:`probe_encoders` asks a linear probe per factor what the
features hold, for the raw input (flattened), an untrained encoder and the trained one.

[1] Chen et al., SimCLR, ICML 2020.
[2] Saeed et al., Contrastive Learning of General-Purpose Audio Representations (COLA), ICASSP 2021.
[3] Sermanet et al., Time-Contrastive Networks: Self-Supervised Learning from Video, ICRA 2018.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from clcourse.audio import SpectrogramAugment, log_mel_spectrogram
from clcourse.data import ImageData, ViewLoader
from clcourse.data.clips import Clips, FrameWindows, middle_window
from clcourse.data.sounds import Sounds
from clcourse.encoders import SmallCNN
from clcourse.lessons.augmentations import probe_factors
from clcourse.methods.simclr import SimCLR
from clcourse.train import History, fit

__all__ = [
    "SOUND_FACTORS",
    "CLIP_FACTORS",
    "spectrogram_data",
    "window_data",
    "train_contrastive",
    "train_on_sounds",
    "train_on_clips",
    "probe_encoders",
]

SOUND_FACTORS = ("event", "timbre")
CLIP_FACTORS = ("shape", "direction")


def spectrogram_data(sounds: Sounds, **log_mel_options) -> ImageData:
    """The clips' log-mel spectrograms as images [N, 1, n_mels, frames], with the clips' labels and factors.

    ``log_mel_options`` go to :func:`clcourse.audio.log_mel_spectrogram` (defaults: n_fft 256, hop 128, 32 mels:
    a 0.5 s clip at 8 kHz gives [1, 32, 32]).
    """
    images = log_mel_spectrogram(sounds.waveforms, sounds.sample_rate, **log_mel_options).unsqueeze(1)
    return ImageData(images, sounds.labels, sounds.factors)


def window_data(clips: Clips, window: int = 3) -> ImageData:
    """Each clip's middle ``window`` frames as one image [N, window, H, W] (frames as channels), with its factors.

    ``window=1`` is a single frame: the shape and where it is, but not where it goes.
    """
    return ImageData(middle_window(clips.videos, window), clips.labels, clips.factors)


def train_contrastive(images: Tensor, augment: Callable[..., Tensor], encoder: nn.Module, *, steps: int,
                      batch_size: int = 128, lr: float = 2e-3, temperature: float = 0.5, projection_dim: int = 64,
                      seed: int = 0, device: torch.device | str | None = None,
                      progress: bool = False) -> tuple[SimCLR, History]:
    """SimCLR [1] on ``images`` [N, C, H, W] with two views per sample from ``augment``, for ``steps`` Adam steps.

    Args:
        images: what the loader slices batches from (spectrograms, or whole clips [N, T, H, W] that ``augment``
            cuts windows from).
        augment: batched ``augment(x, generator=g)``, e.g. `SpectrogramAugment` or `FrameWindows`.
        encoder: maps a view [B, C', H', W'] to [B, D]; built by the caller after seeding.
        steps, batch_size, lr: the budget and optimiser (Adam, cosine schedule, weight decay 1e-6).
        temperature, projection_dim: of NT-Xent and of SimCLR's 2-layer head.
        seed: the loader's order and views.

    Returns:
        the trained model (its ``encoder`` is what gets probed) and the training `History`.
    """
    model = SimCLR(encoder, projection_dim=projection_dim, temperature=temperature)
    labels = torch.zeros(len(images), dtype=torch.long)  # self-supervised: the loader's labels go unused
    loader = ViewLoader((images, labels), augment, batch_size=batch_size, seed=seed, device=device)
    history = fit(model, loader, steps=steps, lr=lr, schedule="cosine", device=device, progress=progress)
    return model, history


def sound_encoder(width: int = 16, out_dim: int = 64) -> SmallCNN:
    """SmallCNN for spectrograms [B, 1, n_mels, frames]; ``pool_size=2`` keeps low and high bands apart (global
    pooling would throw away where in frequency the energy is, which is what a timbre is)."""
    return SmallCNN(1, width=width, out_dim=out_dim, pool_size=2)


def train_on_sounds(train: ImageData, *, steps: int = 150, seed: int = 0, width: int = 16,
                    augment: SpectrogramAugment | None = None, **options) -> tuple[SimCLR, History]:
    """Contrastive learning on spectrograms: `sound_encoder` seeded with ``seed``, `SpectrogramAugment`'s views.

    ``options`` go to :func:`train_contrastive` (batch_size, lr, temperature, device, progress).
    """
    torch.manual_seed(seed)
    return train_contrastive(train.images, augment or SpectrogramAugment(), sound_encoder(width), steps=steps,
                             seed=seed, **options)


def clip_encoder(window: int = 3, width: int = 16, out_dim: int = 64) -> SmallCNN:
    """SmallCNN for windows of ``window`` (1 or 3) stacked grayscale frames [B, window, H, W]."""
    return SmallCNN(window, width=width, out_dim=out_dim, pool_size=2)


def train_on_clips(train: Clips, *, steps: int = 200, seed: int = 0, window: int = 3, width: int = 16,
                   temperature: float = 0.2, augment: FrameWindows | None = None,
                   **options) -> tuple[SimCLR, History]:
    """Time-contrastive learning on clips: windows of ``window`` frames of one clip attract, of others repel [3].

    Temperature 0.2, not SimCLR's 0.5: it weighs the hardest negatives (other clips moving the same way) more,
    which is where the shape tells clips apart (seed 0, 200 steps: shape probe 53.5% at 0.2, 49.8% at 0.5; the
    settings tried are in benchmarks/README.md). ``options`` go to :func:`train_contrastive` (batch_size, lr,
    device, progress).
    """
    torch.manual_seed(seed)
    return train_contrastive(train.videos, augment or FrameWindows(window), clip_encoder(window, width),
                             steps=steps, seed=seed, temperature=temperature, **options)


def probe_encoders(encoders: dict[str, nn.Module | None], train: ImageData, test: ImageData,
                   factors: Sequence[str]) -> dict[str, dict[str, float]]:
    """Linear-probe test accuracy in [0, 1] of each factor, for each encoder (``None``: the raw input, flattened).

    Returns ``{encoder name: {factor: accuracy}}``; see
    :func:`clcourse.lessons.augmentations.probe_factors` (all training labels, standardised features).
    """
    return {name: probe_factors(nn.Flatten() if encoder is None else encoder, train, test, factors)
            for name, encoder in encoders.items()}
