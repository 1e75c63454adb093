"""SimCLR: contrast two augmented views of every image against the rest of the batch.

For a batch of N images, two views each give 2N projections z = g(f(x)).
Each projection's positive is the other view of the same image and its
negatives are the other 2(N-1) projections; the loss is NT-Xent [1].  The
encoder f is kept for downstream use and the projection head g is dropped.

[1] Chen et al., A Simple Framework for Contrastive Learning of Visual
    Representations (SimCLR), ICML 2020.
"""

from __future__ import annotations

import torch
from torch import nn

from clcourse.encoders import ProjectionHead
from clcourse.losses import nt_xent


class SimCLR(nn.Module):
    """Encoder + projection head + NT-Xent [1].

    Args:
        encoder: maps [B, C, H, W] to [B, encoder.out_dim].
        projection_dim: output size of the projection head.
        hidden_dim: hidden width of the head (default: the encoder's out_dim).
        head_layers: Linear layers in the head (2 = SimCLR's nonlinear head,
            1 = linear, 0 = none).
        temperature: the NT-Xent temperature tau > 0.

    A batch is ``(views, labels)`` with ``views`` a list of two tensors
    [B, C, H, W]; labels are ignored (self-supervised).

    ``loss_fn(z1, z2, temperature)`` is the loss, :func:`clcourse.losses.nt_xent`;
    data-parallel training sets it to :func:`clcourse.distributed.distributed_nt_xent`
    so that negatives come from every process.
    """

    loss_fn = staticmethod(nt_xent)

    def __init__(
        self,
        encoder: nn.Module,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        head_layers: int = 2,
        temperature: float = 0.5,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.encoder = encoder
        self.projector = ProjectionHead(
            encoder.out_dim, hidden_dim=hidden_dim, out_dim=projection_dim, num_layers=head_layers
        )
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Representations before the head: [B, C, H, W] -> [B, encoder.out_dim]."""
        return self.encoder(x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Projections the loss sees: [B, C, H, W] -> [B, projection_dim]."""
        return self.projector(self.encoder(x))

    def training_step(self, batch) -> torch.Tensor:
        """NT-Xent of one batch ``(views, labels)``, views = [x1, x2] each [B, C, H, W]."""
        views, _ = batch
        if len(views) != 2:
            raise ValueError(f"SimCLR expects 2 views per image, got {len(views)}")
        x1, x2 = views
        if x1.shape != x2.shape:
            raise ValueError(f"the two views must have the same shape, got {list(x1.shape)} and {list(x2.shape)}")
        # One forward pass over both views keeps batch-norm statistics shared, as in [1].
        z = self.project(torch.cat([x1, x2]))
        z1, z2 = z.chunk(2)
        return self.loss_fn(z1, z2, self.temperature)
