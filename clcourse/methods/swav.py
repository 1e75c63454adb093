"""SwAV: predict the cluster code of one view from another, with codes that share the batch equally.

Every crop of an image is projected to a unit vector z and scored against K learnable prototypes c_k (unit
vectors too): s = z^T C. The scores of the large crops become *codes* q by Sinkhorn-Knopp
(:func:`clcourse.clustering.sinkhorn`), soft assignments in which every prototype receives the same share of
the batch: without that equipartition constraint the trivial solution puts every image in one cluster. Each
crop then predicts the codes of the other crops, a cross-entropy with softmax(s / t)
(:func:`clcourse.losses.swapped_prediction`): the views are compared through their cluster assignments instead
of directly, so no negative pairs are needed [1].

Three details of [1] (section 4 and its code) are here too: *multi-crop* (2 large crops plus several small
ones; only the large ones are coded, every crop predicts), *frozen prototypes* during the first iterations
(they get no gradient, so the assignments settle before the prototypes move), and a *queue* of past
embeddings that joins the Sinkhorn input when the batch is small next to K, so equipartition is imposed on
more samples than the batch holds. The prototypes are L2-normalised after every step.

[1] Caron et al., Unsupervised Learning of Visual Features by Contrasting Cluster Assignments (SwAV),
    NeurIPS 2020.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clcourse.checks import check_number
from clcourse.clustering import sinkhorn
from clcourse.encoders import ProjectionHead
from clcourse.losses import swapped_prediction
from clcourse.methods.base import Method, views_and_labels


class SwAV(Method):
    """Encoder + projection head + prototypes, trained by swapped prediction of Sinkhorn codes [1].

    Args:
        encoder: maps [B, C, H, W] to [B, encoder.out_dim] (any H, W: small crops go through it too).
        projection_dim: D, the size of z and of the prototypes (128 in [1]).
        hidden_dim: hidden width of the head (default: the encoder's out_dim).
        head_layers: Linear layers in the head (2 in [1]: Linear-BN-ReLU-Linear).
        num_prototypes: K (3000 on ImageNet in [1]; about ten times the number of classes is a good start).
        temperature: t > 0 of the prediction softmax (0.1 in [1]).
        epsilon: > 0, Sinkhorn's entropy weight (0.05 in [1]).
        sinkhorn_iterations: >= 1 (3 in [1]).
        n_large_crops: the first n views are the large crops, the ones that get codes (2 in [1]).
        freeze_prototypes_steps: during the first steps the prototypes get no gradient ([1]'s code: one epoch).
        queue_length: past large-crop embeddings kept per coded crop; once the queue is full they join the
            Sinkhorn input (0: no queue; 3840 in [1] for batches of 256 and fewer).
        gather_distributed: on several processes, Sinkhorn's sums run over the global batch, as in [1].
        equipartition: False replaces Sinkhorn by softmax(scores / epsilon), codes without the equal-share
            constraint: the ablation that shows why [1] needs it (the batch drifts into few clusters).

    Attributes:
        prototypes: ``nn.Linear(D, K, bias=False)``, its weight [K, D] the unit prototypes.
        queue: buffer [n_large_crops, queue_length, D] of past embeddings, newest first; queue_size: buffer,
            how many rows are filled; steps: buffer, optimiser steps taken (for the freeze). All are in
            ``state_dict()``, so a resumed run continues exactly.

    A batch is ``(views, labels)``: ``views`` a list of V >= 2 tensors [B, C, H_v, W_v], the n large crops
    first (one shape), then any small crops (another shape); labels are ignored.
    """

    find_unused_parameters = True  # frozen prototypes get no gradient: data-parallel training must allow it

    def __init__(
        self,
        encoder: nn.Module,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        head_layers: int = 2,
        num_prototypes: int = 100,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        n_large_crops: int = 2,
        freeze_prototypes_steps: int = 0,
        queue_length: int = 0,
        gather_distributed: bool = False,
        equipartition: bool = True,
    ):
        for name, value, least in (("num_prototypes", num_prototypes, 2), ("sinkhorn_iterations", sinkhorn_iterations, 1),
                                   ("n_large_crops", n_large_crops, 1), ("freeze_prototypes_steps", freeze_prototypes_steps, 0),
                                   ("queue_length", queue_length, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        head = ProjectionHead(encoder.out_dim, hidden_dim=hidden_dim, out_dim=projection_dim, num_layers=head_layers)
        super().__init__(encoder, head, temperature=temperature, gather_distributed=gather_distributed)
        self.epsilon = check_number("epsilon", epsilon)
        self.sinkhorn_iterations = sinkhorn_iterations
        self.n_large_crops = n_large_crops
        self.equipartition = bool(equipartition)
        self.freeze_prototypes_steps = freeze_prototypes_steps
        dim = self.projector.out_dim
        self.prototypes = nn.Linear(dim, num_prototypes, bias=False)
        self.normalize_prototypes()
        self.register_buffer("queue", torch.zeros(n_large_crops, queue_length, dim))
        self.register_buffer("queue_size", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Put every prototype back on the unit sphere (after each step, as [1] does)."""
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def embed(self, views: list[Tensor]) -> list[Tensor]:
        """Unit projections z [B, D] of every view; views of one shape go through the network together."""
        out, start = [], 0
        while start < len(views):
            end = start + 1
            while end < len(views) and views[end].shape == views[start].shape:
                end += 1
            z = F.normalize(self.project(torch.cat(views[start:end])), dim=1)
            out += list(z.chunk(end - start))
            start = end
        return out

    @torch.no_grad()
    def codes(self, z: Tensor, crop: int, prototypes: Tensor) -> Tensor:
        """Sinkhorn codes [B, K] of large crop ``crop``'s embeddings z [B, D]: with the queue in front once it
        is full; then the queue takes z (newest first)."""
        scores = z @ prototypes.t()
        queue = self.queue[crop]
        if queue.shape[0] and self.queue_size == queue.shape[0]:
            scores = torch.cat([queue @ prototypes.t(), scores])
        if self.equipartition:
            codes = sinkhorn(scores, self.epsilon, self.sinkhorn_iterations,
                             gather_distributed=bool(self.gather_distributed))[-z.shape[0]:]
        else:
            codes = torch.softmax(scores / self.epsilon, dim=1)[-z.shape[0]:]
        if queue.shape[0]:
            kept = min(z.shape[0], queue.shape[0])
            queue.copy_(torch.cat([z[:kept].to(queue.dtype), queue[: queue.shape[0] - kept]]))
        return codes

    def training_step(self, batch) -> Tensor:
        """Swapped prediction of one batch ``(views, labels)`` (see the class docstring); returns a scalar."""
        views, _ = views_and_labels(batch, "SwAV", min_views=2, same_shape=False)
        if self.n_large_crops > len(views):
            raise ValueError(f"SwAV codes the first {self.n_large_crops} views (n_large_crops), got {len(views)} views")
        if len({tuple(v.shape) for v in views[: self.n_large_crops]}) > 1:
            raise ValueError("the large crops (the first n_large_crops views) must have one shape, got "
                             f"{[list(v.shape) for v in views[: self.n_large_crops]]}")
        z = self.embed(list(views))
        prototypes = self.prototypes.weight
        frozen = bool(self.steps < self.freeze_prototypes_steps)
        scores = [v @ (prototypes.detach() if frozen else prototypes).t() for v in z]
        codes = [self.codes(z[i].detach(), i, prototypes.detach()) for i in range(self.n_large_crops)]
        if self.queue.shape[1]:
            self.queue_size.copy_(torch.clamp(self.queue_size + z[0].shape[0], max=self.queue.shape[1]))
        return swapped_prediction(scores, codes, self.temperature)

    def on_step_end(self) -> None:
        """Renormalise the prototypes after the optimiser moved them; count the step (for the freeze)."""
        self.normalize_prototypes()
        self.steps += 1
