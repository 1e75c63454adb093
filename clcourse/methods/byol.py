"""BYOL: an online network predicts a slowly moving target network's projection of the other view.

The online network (encoder, projector, predictor) is trained; the target network (encoder, projector) is its
exponential moving average and gets no gradient. No negatives: the predictor and the moving target keep the
online network from collapsing [1].

[1] Grill et al., Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning (BYOL), NeurIPS 2020.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from clcourse.checks import check_number
from clcourse.encoders import ProjectionHead
from clcourse.methods.base import Method, moving_average, views_and_labels
from clcourse.noncontrastive_losses import byol_loss


class BYOL(Method):
    """Online encoder + projector + predictor, momentum target, BYOL's normalised MSE [1].

    Args:
        encoder: maps [B, C, H, W] to [B, encoder.out_dim].
        projection_dim: size of the projections and predictions (256 in [1]).
        hidden_dim: hidden width of the projector (default: the encoder's out_dim).
        head_layers: Linear layers of the projector (2 in [1]).
        prediction_hidden_dim: hidden width of the predictor (default: ``hidden_dim``, else the encoder's out_dim).
        prediction_layers: Linear layers of the predictor (2 in [1]; 1 = linear, without batch norm; 0 = no
            predictor, the ablation that collapses in [1]'s table 5b).
        momentum: tau of the target's update xi <- tau xi + (1 - tau) theta after every step ([1] starts at
            0.996 and raises it to 1 with a cosine schedule; here it stays fixed).
        gather_distributed: accepted so that every image method is built alike; there is nothing to gather. The
            loss is a mean of per-image terms, so data-parallel training equals one process on the global batch
            with or without it (tests/test_distributed_methods.py), up to batch norm's per-process statistics.

    A batch is ``(views, labels)`` with two views [B, C, H, W]; labels are ignored. ``on_step_end`` moves the
    target.
    """

    def __init__(self, encoder: nn.Module, projection_dim: int = 128, hidden_dim: int | None = None,
                 head_layers: int = 2, prediction_hidden_dim: int | None = None, prediction_layers: int = 2,
                 momentum: float = 0.99, gather_distributed: bool = False):
        head = ProjectionHead(encoder.out_dim, hidden_dim=hidden_dim, out_dim=projection_dim, num_layers=head_layers)
        super().__init__(encoder, head, gather_distributed=gather_distributed)
        dim = self.projector.out_dim
        self.predictor = ProjectionHead(dim, hidden_dim=prediction_hidden_dim or hidden_dim or encoder.out_dim,
                                        out_dim=dim, num_layers=prediction_layers)
        self.momentum = check_number("momentum", momentum, strict=False)
        if self.momentum > 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(head).requires_grad_(False)

    def training_step(self, batch) -> torch.Tensor:
        """The loss of one batch ``(views, labels)``, views = [x1, x2] each [B, C, H, W]."""
        (x1, x2), _ = views_and_labels(batch, "BYOL", n_views=2)
        both = torch.cat([x1, x2])
        p1, p2 = self.predictor(self.project(both)).chunk(2)
        with torch.no_grad():
            t1, t2 = self.target_projector(self.target_encoder(both)).chunk(2)
        return byol_loss(p1, p2, t1, t2)

    @torch.no_grad()
    def on_step_end(self) -> None:
        """xi <- tau xi + (1 - tau) theta for every parameter and float buffer; integer buffers copied."""
        moving_average(self.target_encoder, self.encoder, self.momentum)
        moving_average(self.target_projector, self.projector, self.momentum)
