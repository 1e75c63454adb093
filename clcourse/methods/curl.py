"""CURL: a contrastive task beside reinforcement learning, on the encoder the agent acts with.

Learning control from pixels is slow: the reward is the only signal that shapes the encoder. CURL [1] adds a
self-supervised one. From each observation in a batch (a stack of frames) it takes two random crops, one window
for the whole stack so the frames stay aligned: the *anchor* goes through the agent's own encoder f (the query
q = f(anchor)), the *positive* through a momentum copy f_m of it (the key k = f_m(positive), no gradient), and
InfoNCE with the bilinear similarity q^T W k (W learned) asks each query to find its own key among the batch's
keys (:func:`clcourse.losses.bilinear_info_nce`). After every update f_m <- m f_m + (1 - m) f, as in MoCo.
The contrastive loss trains the encoder together with the agent's loss, which also sees crops (the
augmentation alone, without the contrastive term, is the ablation later work asked for).

:class:`CURL` holds the contrastive half (crops, momentum encoder, W). The agent that shares its encoder, and
the loop that acts in an environment, are in :mod:`clcourse.agents`.

[1] Srinivas, Laskin et al., CURL: Contrastive Unsupervised Representations for Reinforcement Learning, ICML 2020.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clcourse.checks import check_number, shape_of
from clcourse.losses import bilinear_info_nce
from clcourse.methods.base import Method

__all__ = ["CURL", "center_crop", "random_crop", "random_view", "to_unit"]


def _check_frames(frames: Tensor, size: int) -> None:
    if not isinstance(frames, Tensor) or frames.ndim != 4:
        got = shape_of(frames) if isinstance(frames, Tensor) else type(frames).__name__
        raise ValueError(f"frames must be [B, C, H, W] (a stack of frames per row), got {got}")
    if not isinstance(size, int) or not 1 <= size <= min(frames.shape[-2:]):
        raise ValueError(f"size must be an int in [1, {min(frames.shape[-2:])}] (the frames' side), got {size!r}")


def random_crop(frames: Tensor, size: int, generator: torch.Generator | None = None) -> Tensor:
    """A random ``size`` x ``size`` window of each row of frames [B, C, H, W] -> [B, C, size, size].

    Each row gets its own window, the same for all its C channels: every frame of a stack is cut at the same
    place, so the stack still shows a motion. ``generator`` (CPU) draws the windows.
    """
    _check_frames(frames, size)
    b, _, h, w = frames.shape
    top = torch.randint(0, h - size + 1, (b,), generator=generator).to(frames.device)
    left = torch.randint(0, w - size + 1, (b,), generator=generator).to(frames.device)
    # every window as a view [B, C, H - size + 1, W - size + 1, size, size], then one row's window each: one copy,
    # five times faster than indexing every pixel (benchmarks/README.md)
    windows = frames.unfold(2, size, 1).unfold(3, size, 1)
    return windows[torch.arange(b, device=frames.device), :, top, left]


def random_view(frames: Tensor, size: int, pad: int = 0, generator: torch.Generator | None = None) -> Tensor:
    """A random ``size`` x ``size`` window of frames [B, C, H, W] padded by ``pad`` px of repeated edge pixels.

    ``pad`` = 0 is :func:`random_crop`. ``size`` = H with ``pad`` > 0 is the *random shift* of DrQ and of CURL's
    Atari code (their pad 4 around 84 px): the picture moves by up to ``pad`` px and keeps its size, where a
    smaller crop loses its border. One window per row, the same for all its channels.
    """
    if not isinstance(pad, int) or isinstance(pad, bool) or pad < 0:
        raise ValueError(f"pad must be an int >= 0 (pixels repeated around the frames), got {pad!r}")
    if pad:
        _check_frames(frames, 1)
        frames = F.pad(frames, (pad,) * 4, mode="replicate")
    return random_crop(frames, size, generator)


def center_crop(frames: Tensor, size: int) -> Tensor:
    """The central ``size`` x ``size`` window of frames [B, C, H, W]: what the agent sees when it acts."""
    _check_frames(frames, size)
    h, w = frames.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return frames[..., top:top + size, left:left + size]


def to_unit(frames: Tensor) -> Tensor:
    """uint8 frames (0-255) as floats in [0, 1], the encoder's input."""
    return frames.float() / 255.0


class CURL(Method):
    """CURL's contrastive half [1] on a shared encoder (module docstring).

    Args:
        encoder: f, the agent's encoder (shared: the agent's updates and this loss both train it); maps floats
            [B, C, crop, crop] in [0, 1] to [B, D] with ``encoder.out_dim`` = D.
        crop: the side of the crops (CURL: 84 out of 100-px renders).
        momentum: m of the key encoder's update f_m <- m f_m + (1 - m) f (CURL's code: 0.95, its tau = 0.05;
            0.999 in its Atari code).
        pad: crops of the frames padded by this many repeated edge pixels (:func:`random_view`): ``crop`` = H
            with ``pad`` 4 is the random shift of CURL's Atari code; 0 (default) crops the frames themselves.
        logit_scale: s of :func:`clcourse.losses.bilinear_info_nce` (CURL's Atari code: 0.1; default 1).

    ``training_step(frames)`` takes uint8 or [0, 1] float observations [B, C, H, W] with B >= 2 and returns the
    contrastive loss; ``on_step_end()`` moves the key encoder. The encoder and W train; the key encoder does not.
    """

    sync_batch_norm = False

    def __init__(self, encoder: nn.Module, crop: int, momentum: float = 0.95, generator: torch.Generator | None = None,
                 pad: int = 0, logit_scale: float = 1.0):
        super().__init__(encoder, gather_distributed=None)
        dim = getattr(encoder, "out_dim", None)
        if not isinstance(dim, int) or dim < 1:
            raise ValueError("encoder must state its output size as an int encoder.out_dim")
        self.momentum = check_number("momentum", momentum, strict=False)
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not isinstance(pad, int) or isinstance(pad, bool) or pad < 0:
            raise ValueError(f"pad must be an int >= 0 (pixels repeated around the frames), got {pad!r}")
        self.logit_scale = check_number("logit_scale", logit_scale)
        self.crop, self.pad, self.generator = crop, pad, generator
        self.key_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.weight = nn.Parameter(torch.rand(dim, dim))  # CURL's code starts W uniform in [0, 1)

    def training_step(self, frames: Tensor) -> Tensor:
        """The bilinear InfoNCE of two random crops of each observation: anchors through f, positives through f_m."""
        frames = self._unit_batch(frames)
        return self.contrast(self.encoder(self.view(frames)), frames)

    def view(self, frames: Tensor) -> Tensor:
        """A random view [B, C, crop, crop] of frames [B, C, H, W]: a crop, of the padded frames when ``pad``."""
        return random_view(frames, self.crop, self.pad, self.generator)

    def contrast(self, queries: Tensor, frames: Tensor) -> Tensor:
        """The loss for queries [B, D] = f(anchor crops of ``frames`` [B, C, H, W]) computed elsewhere.

        The agent encodes its own random crops for its update; CURL's code takes those same crops as the anchors,
        so the agent passes their codes here and f runs once. Each row's positive is a fresh crop of its frames.
        """
        frames = self._unit_batch(frames)
        if queries.ndim != 2 or queries.shape[0] != frames.shape[0]:
            raise ValueError(f"queries must be [B, D] with B = {frames.shape[0]} (one per observation), "
                             f"got {shape_of(queries)}")
        with torch.no_grad():
            keys = self.key_encoder(self.view(frames))
        return bilinear_info_nce(queries, keys, self.weight, self.logit_scale)

    def _unit_batch(self, frames: Tensor) -> Tensor:
        """frames [B, C, H, W] (B >= 2, large enough for the crop once padded) as floats in [0, 1]."""
        _check_frames(frames, max(1, self.crop - 2 * self.pad))
        if frames.shape[0] < 2:
            raise ValueError(f"CURL needs a batch of at least 2 observations (the other rows are the negatives), "
                             f"got {shape_of(frames)}")
        return to_unit(frames) if frames.dtype == torch.uint8 else frames

    @torch.no_grad()
    def on_step_end(self) -> None:
        """f_m <- m f_m + (1 - m) f, parameter by parameter (buffers copied)."""
        for key, query in zip(self.key_encoder.parameters(), self.encoder.parameters()):
            key.mul_(self.momentum).add_(query.detach(), alpha=1 - self.momentum)
        for key, query in zip(self.key_encoder.buffers(), self.encoder.buffers()):
            key.copy_(query)
