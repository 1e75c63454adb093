"""Supervised contrastive learning: every image with the same label is a positive.

SimCLR's positives are the other views of the same image; SupCon [1] adds
every view of every other image of the same class, and keeps the rest of the
batch as negatives.  The encoder and a projection head are trained with the
SupCon loss; the head is dropped and a linear classifier is trained on the
frozen encoder afterwards ([1], section 3).  Without labels the loss is
SimCLR's NT-Xent.

Few labels plus unlabelled data (lesson 11): a label of -1 marks an
unlabelled image.  It becomes a class of its own, so its only positives are
its other views (the SimCLR term), while labelled images also pull together
their classmates.

[1] Khosla et al., Supervised Contrastive Learning (SupCon), NeurIPS 2020.
"""

from __future__ import annotations

import torch
from torch import nn

from clcourse.distributed import all_gather_cat, rank, world_size
from clcourse.encoders import ProjectionHead
from clcourse.losses import supcon
from clcourse.methods.base import Method, views_and_labels

UNLABELLED = -1


def unlabelled_as_own_class(labels: torch.Tensor, first_free: int | None = None) -> torch.Tensor:
    """Give every label -1 (unlabelled) a class id of its own, unused by the other labels.

    Shapes: labels [N] integer, values >= 0 or -1 -> [N] int64, the labelled
    entries unchanged and the unlabelled ones numbered from ``first_free`` on
    (default max(labels) + 1; on several processes the caller picks ranges that
    no other process uses). Under SupCon [1] an unlabelled image's only positives
    are then its other views.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of shape [N], got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of class ids, got {labels.dtype}")
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape [N], got {list(labels.shape)}")
    if (labels < UNLABELLED).any():
        raise ValueError(f"labels must be class ids >= 0, or -1 for unlabelled, got a minimum of {labels.min().item()}")
    labels = labels.long()
    unlabelled = labels == UNLABELLED
    if first_free is None:
        first_free = labels.max() + 1 if labels.numel() else 0
    fresh = first_free + torch.arange(int(unlabelled.sum()), device=labels.device)
    return labels.masked_scatter(unlabelled, fresh)


class SupCon(Method):
    """Encoder + projection head + the supervised contrastive loss [1].

    Args:
        encoder: maps [B, C, H, W] to [B, encoder.out_dim].
        projection_dim: output size of the head (128 in [1]).
        hidden_dim: hidden width of the head (default: the encoder's out_dim).
        head_layers: Linear layers in the head (2 = [1]'s MLP, Linear-ReLU-Linear
            without batch norm as in the authors' code; 1 = linear).
        temperature: t > 0 (0.1 in [1]).
        variant: "out" (L_out, [1] eq. 2, the one [1] recommends) or "in" (L_in, eq. 3);
            they coincide when every anchor has exactly one positive.
        supervised: False ignores the labels: instance discrimination, SimCLR's loss.
        gather_distributed: on several processes, positives and negatives from all of them.

    A batch is ``(views, labels)``: ``views`` a list of V >= 1 tensors
    [B, C, H, W] (V >= 2 without labels), ``labels`` int [B] with -1 for
    unlabelled images (see :func:`unlabelled_as_own_class`), or None for
    no labels at all.
    """

    def __init__(
        self,
        encoder: nn.Module,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        head_layers: int = 2,
        temperature: float = 0.1,
        variant: str = "out",
        supervised: bool = True,
        gather_distributed: bool = False,
    ):
        if variant not in ("out", "in"):
            raise ValueError(f"variant must be 'out' or 'in', got {variant!r}")
        head = ProjectionHead(encoder.out_dim, hidden_dim=hidden_dim, out_dim=projection_dim,
                              num_layers=head_layers, batch_norm=False)
        super().__init__(encoder, head, temperature=temperature, gather_distributed=gather_distributed)
        self.variant = variant
        self.supervised = supervised

    def training_step(self, batch) -> torch.Tensor:
        """SupCon loss of one batch ``(views, labels)``, views V tensors [B, C, H, W], labels [B] or None."""
        views, labels = views_and_labels(batch, "SupCon", min_views=1)
        n, v = views[0].shape[0], len(views)
        if not self.supervised:
            labels = None
        if labels is None and v < 2:
            raise ValueError("SupCon without labels needs at least 2 views per image, got 1")
        if labels is not None:
            if isinstance(labels, torch.Tensor) and labels.shape != (n,):
                raise ValueError(f"labels must have shape [{n}] (one per image), got {list(labels.shape)}")
            labels = unlabelled_as_own_class(labels, self._first_free_class(labels))
        # One forward pass over all views keeps batch-norm statistics shared, as SimCLR does.
        z = self.project(torch.cat(views))  # [V*B, D], view-major
        z = z.view(v, n, -1).transpose(0, 1)  # [B, V, D]
        return supcon(z, labels, self.temperature, self.variant, gather_distributed=self.gather_distributed)

    def _first_free_class(self, labels) -> int | None:
        """Where this process numbers its unlabelled images: None (after its own labels) unless gathering.

        Gathered across W processes, rank r numbers them from max(all labels) + 1 + r * B on,
        so an unlabelled image never shares a class with another process's images.
        """
        if not (self.gather_distributed and world_size() > 1 and isinstance(labels, torch.Tensor)):
            return None
        everyone = all_gather_cat(labels.long())
        return int(everyone.max()) + 1 + rank() * len(labels)
