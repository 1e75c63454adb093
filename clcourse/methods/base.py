"""What every method shares: the encoder it trains, the head its loss sees, the hooks the loop calls.

A method file then holds only its mechanism (see docs/adding-a-method.md). A method is a
:class:`Method`, an ``nn.Module`` with

- ``encoder`` f, kept for downstream use and evaluated: ``forward(x) = f(x)``;
- ``projector`` g, the head the loss sees: ``project(x) = g(f(x))``, dropped after training;
- ``training_step(batch) -> scalar loss``: what the framework defines;
- hooks that :func:`clcourse.train.fit` calls: ``on_epoch_start(epoch)`` before every epoch
  (PCL's k-means E-step), ``on_step_end()`` after every optimiser step (momentum encoders,
  queues, prototype normalisation) and ``on_epoch_end(epoch)`` after every epoch;
- ``gather_distributed``: whether its loss draws negatives from every process
  (:mod:`clcourse.distributed`); ``sync_batch_norm``: whether data-parallel training on GPUs
  should compute batch-norm statistics over the global batch (SimCLR's global BN).

Batches. The loop moves whatever the loader yields to the device (tensors nested in tuples,
lists, dicts and dataclasses) and hands it over untouched; the method unpacks it. Image
methods take ``(views, labels)``, checked by :func:`views_and_labels`; a method whose data
carries more (masks, boxes, token ids) defines its own batch dataclass next to its dataset.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clcourse.checks import check_number

__all__ = ["Method", "moving_average", "views_and_labels"]


class Method(nn.Module):
    """Base of every framework: encoder, head, training step and the loop's hooks (module docstring).

    Args:
        encoder: maps inputs [B, ...] to representations [B, encoder.out_dim].
        projector: the head the loss sees; None = no head.
        temperature: checked to be a finite number > 0 and stored, for methods that have one.
        gather_distributed: contrast against the batch of every process when trained on
            several (the losses' option of the same name); None for a method that has
            nothing to gather (data-parallel training then needs an explicit opt-in).
    """

    sync_batch_norm = True

    def __init__(self, encoder: nn.Module, projector: nn.Module | None = None, *,
                 temperature: float | None = None, gather_distributed: bool | None = False):
        super().__init__()
        self.encoder = encoder
        self.projector = nn.Identity() if projector is None else projector
        if temperature is not None:
            self.temperature = check_number("temperature", temperature)
        self.gather_distributed = gather_distributed

    def forward(self, x: Tensor) -> Tensor:
        """Representations before the head: [B, ...] -> [B, encoder.out_dim]."""
        return self.encoder(x)

    def project(self, x: Tensor) -> Tensor:
        """What the loss sees: [B, ...] -> [B, projection_dim]."""
        return self.projector(self.encoder(x))

    def training_step(self, batch) -> Tensor:
        """The loss of one batch, a scalar with gradient."""
        raise NotImplementedError(f"{type(self).__name__} must define training_step(batch)")

    def on_epoch_start(self, epoch: int) -> None:
        """Called by the loop before every epoch, ``epoch`` the number of epochs done (0 before the first).

        Work over the whole dataset that the next steps need (PCL's E-step) goes here: a run resumed
        from the checkpoint of an epoch's end calls it again, as the uninterrupted run did.
        """

    def on_step_end(self) -> None:
        """Called by the loop after every optimiser step."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called by the loop after every epoch (``epoch`` counts from 1)."""


@torch.no_grad()
def moving_average(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """theta_target <- m theta_target + (1 - m) theta_online, in place, for every parameter and float buffer of two
    networks of the same architecture; integer buffers (batch norm's step counter) are copied. The momentum
    encoders of MoCo (its eq. 2) and BYOL's target."""
    for o, t in zip(online.parameters(), target.parameters()):
        t.lerp_(o, 1.0 - momentum)  # lerp is exact at both ends: m = 1 keeps the target, m = 0 gives the online net
    for o, t in zip(online.buffers(), target.buffers()):
        if t.is_floating_point():
            t.lerp_(o, 1.0 - momentum)
        else:
            t.copy_(o)


def views_and_labels(batch, method: str, *, n_views: int | None = None, min_views: int = 1,
                     same_shape: bool = True):
    """Unpack and check an image batch ``(views, labels)``: V tensors [B, C, H, W] of one shape.

    Args:
        batch: ``(views, labels)``, labels int [B] or None.
        method: the method's name, for the messages.
        n_views: exactly this many views (SimCLR's and MoCo's 2), or
        min_views: at least this many.
        same_shape: False lets the views differ in size (multi-crop: [B, C, H_v, W_v]), B and C still shared.

    Returns:
        ``(views, labels)`` unchanged.
    """
    views, labels = batch
    count = len(views)
    if n_views is not None and count != n_views:
        raise ValueError(f"{method} expects {n_views} views per image, got {count}")
    if count < min_views:
        raise ValueError(f"{method} expects at least {min_views} view(s) per image, got {count}")
    shapes = {tuple(v.shape) if same_shape else tuple(v.shape[:2]) for v in views}
    if len(shapes) > 1:
        what = "shape" if same_shape else "batch size and channels"
        raise ValueError(f"all views must have the same {what}, got {sorted(map(list, shapes))}")
    return views, labels
