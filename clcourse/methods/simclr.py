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
from clcourse.methods.base import Method, views_and_labels


class SimCLR(Method):
    """Encoder + projection head + NT-Xent [1].

    Args:
        encoder: maps [B, C, H, W] to [B, encoder.out_dim].
        projection_dim: output size of the projection head.
        hidden_dim: hidden width of the head (default: the encoder's out_dim).
        head_layers: Linear layers in the head (2 = SimCLR's nonlinear head,
            1 = linear, 0 = none).
        temperature: the NT-Xent temperature tau > 0.
        gather_distributed: on several processes, negatives from all of them (the global
            batch of [1], section 2.2).

    A batch is ``(views, labels)`` with ``views`` a list of two tensors
    [B, C, H, W]; labels are ignored (self-supervised).
    """

    def __init__(
        self,
        encoder: nn.Module,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        head_layers: int = 2,
        temperature: float = 0.5,
        gather_distributed: bool = False,
    ):
        head = ProjectionHead(encoder.out_dim, hidden_dim=hidden_dim, out_dim=projection_dim, num_layers=head_layers)
        super().__init__(encoder, head, temperature=temperature, gather_distributed=gather_distributed)

    def training_step(self, batch) -> torch.Tensor:
        """NT-Xent of one batch ``(views, labels)``, views = [x1, x2] each [B, C, H, W]."""
        (x1, x2), _ = views_and_labels(batch, "SimCLR", n_views=2)
        # One forward pass over both views keeps batch-norm statistics shared, as in [1].
        z1, z2 = self.project(torch.cat([x1, x2])).chunk(2)
        return nt_xent(z1, z2, self.temperature, gather_distributed=self.gather_distributed)
