"""SimSiam: predict one view's projection from the other's, no negatives, no momentum encoder.

Two views go through the same encoder and projector (z1, z2); a predictor maps each to p1, p2, and the loss asks
p1 to point along z2 and p2 along z1, with the projections held fixed (stop-gradient). Without the stop-gradient
the encoder collapses to a constant; with it, it does not, although nothing in the loss forbids a constant [1].

[1] Chen & He, Exploring Simple Siamese Representation Learning (SimSiam), CVPR 2021.
"""

from __future__ import annotations

import torch
from torch import nn

from clcourse.encoders import ProjectionHead
from clcourse.methods.base import Method, views_and_labels
from clcourse.noncontrastive_losses import simsiam_loss


class SimSiam(Method):
    """Encoder + projector + predictor, the symmetric negative cosine with stop-gradient [1].

    Args:
        encoder: maps [B, C, H, W] to [B, encoder.out_dim].
        projection_dim: size of the projector's output z (and of the predictor's p).
        hidden_dim: the projector's hidden width (default: the encoder's out_dim).
        head_layers: Linear layers of the projector ([1]: 3 on ImageNet, 2 on CIFAR-10).
        predictor_hidden_dim: the predictor's bottleneck (a quarter of ``projection_dim`` in [1]; default so).
        prediction_layers: Linear layers of the predictor (2 in [1]; 1 = linear, without batch norm).
        stop_gradient: hold the projections fixed in the loss (False: the collapsing ablation of [1]).
        projection_batch_norm: batch norm (without affine parameters) on the projector's output too, as [1]'s
            projector ends.
        fixed_predictor_lr: give the predictor a learning rate of its own that neither warms up nor decays
            (:meth:`parameter_groups`; [1]'s table 1: "pred. w/ fixed lr" trains better than a decayed one).
        gather_distributed: accepted so that every image method is built alike; there is nothing to gather. The
            loss is a mean of per-image terms, so data-parallel training equals one process on the global batch
            with or without it (tests/test_distributed_methods.py), up to batch norm's per-process statistics.

    A batch is ``(views, labels)`` with two views [B, C, H, W]; labels are ignored.
    """

    def __init__(self, encoder: nn.Module, projection_dim: int = 128, hidden_dim: int | None = None,
                 head_layers: int = 2, predictor_hidden_dim: int | None = None, prediction_layers: int = 2,
                 stop_gradient: bool = True, projection_batch_norm: bool = False, fixed_predictor_lr: bool = False,
                 gather_distributed: bool = False):
        head = ProjectionHead(encoder.out_dim, hidden_dim=hidden_dim, out_dim=projection_dim, num_layers=head_layers,
                              output_batch_norm=projection_batch_norm)
        super().__init__(encoder, head, gather_distributed=gather_distributed)
        dim = self.projector.out_dim
        self.predictor = ProjectionHead(dim, hidden_dim=predictor_hidden_dim or max(1, dim // 4), out_dim=dim,
                                        num_layers=prediction_layers)
        self.stop_gradient = stop_gradient
        self.fixed_predictor_lr = fixed_predictor_lr

    def parameter_groups(self) -> list[dict]:
        """The optimiser's parameter groups: all parameters in one; with ``fixed_predictor_lr`` the encoder and
        projector, then the predictor with ``fixed_lr=True`` (:func:`clcourse.train.fit` keeps its base rate)."""
        if not self.fixed_predictor_lr:
            return [{"params": list(self.parameters())}]
        predictor = set(self.predictor.parameters())
        return [{"params": [p for p in self.parameters() if p not in predictor]},
                {"params": list(self.predictor.parameters()), "fixed_lr": True}]

    def training_step(self, batch) -> torch.Tensor:
        """The loss of one batch ``(views, labels)``, views = [x1, x2] each [B, C, H, W]."""
        (x1, x2), _ = views_and_labels(batch, "SimSiam", n_views=2)
        z1, z2 = self.project(torch.cat([x1, x2])).chunk(2)
        p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        return simsiam_loss(p1, p2, z1, z2, stop_gradient=self.stop_gradient)
