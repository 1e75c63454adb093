"""Barlow Twins: make the cross-correlation of two views' embeddings the identity matrix.

Both views go through one encoder and projector; the loss asks each embedding dimension to be the same in the two
views (the diagonal of the cross-correlation at 1) and unrelated to every other dimension (the off-diagonal at
0). No negatives and no asymmetry: a collapsed embedding cannot have uncorrelated dimensions [1].

[1] Zbontar et al., Barlow Twins: Self-Supervised Learning via Redundancy Reduction, ICML 2021.
"""

from __future__ import annotations

import torch
from torch import nn

from clcourse.checks import check_number
from clcourse.distributed import gather_with_grad
from clcourse.encoders import ProjectionHead
from clcourse.methods.base import Method, views_and_labels
from clcourse.noncontrastive_losses import barlow_twins_loss


class BarlowTwins(Method):
    """Encoder + projector + the redundancy-reduction loss [1].

    Args:
        encoder: maps [B, C, H, W] to [B, encoder.out_dim].
        projection_dim: embedding size D ([1]: 8192, wider is better there).
        hidden_dim: the projector's hidden width (default: ``projection_dim``).
        head_layers: Linear layers of the projector (3 in [1]).
        off_diagonal_weight: lambda of the off-diagonal term (5e-3 in [1]).
        gather_distributed: on several processes, compute the cross-correlation over the global batch (as [1]
            does over all GPUs), gathering the embeddings with their gradients; without it each process
            standardises and correlates its own share, a different and noisier loss.

    A batch is ``(views, labels)`` with two views [B, C, H, W], B >= 2; labels are ignored.
    """

    def __init__(self, encoder: nn.Module, projection_dim: int = 256, hidden_dim: int | None = None,
                 head_layers: int = 3, off_diagonal_weight: float = 5e-3, gather_distributed: bool = False):
        head = ProjectionHead(encoder.out_dim, hidden_dim=hidden_dim or projection_dim, out_dim=projection_dim,
                              num_layers=head_layers)
        super().__init__(encoder, head, gather_distributed=gather_distributed)
        self.off_diagonal_weight = check_number("off_diagonal_weight", off_diagonal_weight, strict=False)

    def training_step(self, batch) -> torch.Tensor:
        """The loss of one batch ``(views, labels)``, views = [x1, x2] each [B, C, H, W]."""
        (x1, x2), _ = views_and_labels(batch, "Barlow Twins", n_views=2)
        z1, z2 = self.project(torch.cat([x1, x2])).chunk(2)
        if self.gather_distributed:  # every process then computes the global batch's loss (see gather_with_grad)
            z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
        return barlow_twins_loss(z1, z2, self.off_diagonal_weight)
