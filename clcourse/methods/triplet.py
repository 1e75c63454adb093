"""Triplet: learn an embedding from triplets (anchor, positive, negative) and a margin.

FaceNet [1] trains an embedding f(x) on the unit sphere so that an anchor is closer to a
positive (same identity) than to a negative (another identity) by at least a margin m:

    l(a, p, n) = max(0, d(a, p) - d(a, n) + m).

Most triplets soon satisfy the margin and cost nothing, so *which* triplets are used decides
what is learned; they are mined inside each batch with :func:`clcourse.losses.mine_triplets`:

- "all": every valid triplet (easy ones, with zero loss, included in the mean), computed from
  the distance matrix without listing the O(B^3) triplets (`all_triplets_loss`);
- "semi-hard" ([1], section 3.2): for every positive pair, the nearest negative that is
  farther than the positive but inside the margin;
- "hard": batch-hard (Hermans et al. [2]): per anchor, its farthest positive and its nearest
  negative. [1] warns that the hardest negatives from the start of training "can result in a
  collapsed model (i.e. f(x) = 0)"; [2] trains batch-hard from scratch successfully with
  larger batches of P identities x K images.

Self-supervised use (``supervised=False``, the default): the identity of a view is the image
it came from, so every view is an anchor, the other view(s) of its image are its positives and
the views of all other images in the batch are its negatives, the same pairs as SimCLR's
NT-Xent [3]. With ``supervised=True`` the class labels define the positives, as identities do
in FaceNet.

Like SimCLR [3], the loss is computed on the output of a projection head g on top of the
encoder f, and f is kept for downstream use.

[1] Schroff, Kalenichenko, Philbin. FaceNet: A Unified Embedding for Face Recognition and
    Clustering. CVPR 2015.
[2] Hermans, Beyer, Leibe. In Defense of the Triplet Loss for Person Re-Identification.
    arXiv:1703.07737, 2017.
[3] Chen et al., A Simple Framework for Contrastive Learning of Visual Representations
    (SimCLR), ICML 2020.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clcourse.encoders import ProjectionHead
from clcourse.losses import all_triplets_loss, mine_triplets, pairwise_distance, triplet_margin
from clcourse.methods.base import Method, views_and_labels

STRATEGIES = ("all", "semi-hard", "hard")
DISTANCES = ("euclidean", "cosine")


@dataclass
class TripletStats:
    """What one training step's triplets looked like.

    Attributes:
        loss: the step's triplet loss.
        mined: number of triplets the strategy selected.
        zero_loss_fraction: fraction of *all* valid triplets of the batch that already satisfy
            the margin, d(a, n) >= d(a, p) + m (a measure of how much of the batch is "easy";
            0 when the embedding has collapsed to a point, where every triplet costs m).
        mean_distance: `spread` of the batch's embeddings, their mean Euclidean distance on the
            unit sphere (0 at collapse).
    """

    loss: float
    mined: int
    zero_loss_fraction: float
    mean_distance: float


@torch.no_grad()
def spread(z: torch.Tensor) -> float:
    """Mean Euclidean distance between the L2-normalised rows of z [M, D], over all pairs i < j.

    About sqrt(2) = 1.41 for random directions in many dimensions, 0 when every row points the
    same way (a collapsed embedding). Computed from the differences themselves (`F.pdist`), so it
    stays accurate for nearly coincident points, where sqrt(2 - 2 cos) loses all its digits.
    """
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"z must be [M, D] with M >= 2, got {list(z.shape)}")
    return float(F.pdist(F.normalize(z.float(), dim=1)).mean())


@torch.no_grad()
def zero_loss_fraction(z: torch.Tensor, ids: torch.Tensor, margin: float, distance: str = "euclidean") -> float:
    """Fraction of all valid triplets of a batch whose triplet loss is zero (FaceNet's "easy" ones [1]).

    Shapes: z [M, D] embeddings, ids [M] integer labels (a positive shares the anchor's id, a
    negative does not). A triplet (a, p, n) has zero loss when d(a, n) >= d(a, p) + margin.
    Counted without enumerating the O(M^3) triplets: each anchor's negative distances are
    sorted once and every positive pair is located in them by binary search.
    Returns nan when the batch has no valid triplet.
    """
    if z.ndim != 2 or ids.shape != (z.shape[0],):
        raise ValueError(f"z must be [M, D] and ids [M], got {list(z.shape)} and {list(ids.shape)}")
    dist = pairwise_distance(z, distance)
    same = ids.unsqueeze(0) == ids.unsqueeze(1)
    eye = torch.eye(len(ids), dtype=torch.bool, device=z.device)
    pos_mask, neg_mask = same & ~eye, ~same
    # Non-negatives sort to the front as -inf, so each row ends with its negatives in order.
    neg_sorted = dist.masked_fill(~neg_mask, float("-inf")).sort(dim=1).values
    a, p = pos_mask.nonzero(as_tuple=True)
    thresholds = (dist[a, p] + margin).unsqueeze(1)
    # negatives strictly closer than d(a, p) + m are the ones with a positive loss
    n_neg = neg_mask.sum(dim=1)[a]
    below = torch.searchsorted(neg_sorted[a].contiguous(), thresholds.contiguous(), side="left").squeeze(1)
    n_active = below - (len(ids) - n_neg)  # drop the -inf entries counted as "below"
    total = n_neg.sum()
    if total == 0:
        return float("nan")
    return float(1.0 - n_active.sum() / total)


def _count_valid(ids: torch.Tensor) -> int:
    """Number of valid triplets (a, p, n) among labels ids [M]."""
    same = ids.unsqueeze(0) == ids.unsqueeze(1)
    n_pos = same.sum(dim=1) - 1
    return int((n_pos * (~same).sum(dim=1)).sum())


class Triplet(Method):
    """Encoder + projection head + triplet margin loss on mined triplets [1, 2].

    Args:
        encoder: maps [B, C, H, W] to [B, encoder.out_dim].
        projection_dim: size of the embedding the loss sees (L2-normalised inside the loss).
        hidden_dim: hidden width of the head (default: the encoder's out_dim).
        head_layers: Linear layers in the head (2 = SimCLR's nonlinear head, 1 = linear,
            0 = none: the loss on the encoder's output, as in FaceNet).
        margin: m >= 0, in units of `distance` (FaceNet's 0.2 is on squared Euclidean
            distances, i.e. 0.1 in "cosine" units; see `clcourse.losses.triplet_margin`).
        strategy: "all", "semi-hard" or "hard" (batch-hard), see the module docstring.
        distance: "euclidean" (|a - b| on the unit sphere) or "cosine" (1 - cos).
        supervised: False: positives are the other views of the same image; True: every view
            of every image with the same label.

    A batch is ``(views, labels)``: ``views`` a list of V tensors [B, C, H, W] (V >= 2 when
    self-supervised), ``labels`` int [B] (needed when supervised, ignored otherwise).

    After every training step, :class:`TripletStats` of the batch are appended to ``self.stats``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        head_layers: int = 2,
        margin: float = 0.2,
        strategy: str = "semi-hard",
        distance: str = "euclidean",
        supervised: bool = False,
    ):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        head = ProjectionHead(encoder.out_dim, hidden_dim=hidden_dim, out_dim=projection_dim, num_layers=head_layers)
        # Mining happens inside each process's batch: there is nothing to gather (None).
        super().__init__(encoder, head, gather_distributed=None)
        self.margin = float(margin)
        self.strategy = strategy
        self.distance = distance
        self.supervised = supervised
        self.stats: list[TripletStats] = []

    def view_ids(self, labels: torch.Tensor | None, n: int, v: int, device: torch.device) -> torch.Tensor:
        """Identity of each of the V*B views (view-major): its image index, or its class when supervised."""
        if self.supervised:
            if not isinstance(labels, torch.Tensor) or labels.shape != (n,):
                got = list(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
                raise ValueError(f"supervised Triplet needs labels of shape [{n}], got {got}")
            ids = labels.to(device)
        else:
            ids = torch.arange(n, device=device)
        return ids.repeat(v)

    def training_step(self, batch) -> torch.Tensor:
        """Triplet loss of one batch ``(views, labels)`` on the triplets the strategy mines."""
        views, labels = views_and_labels(batch, "Triplet", min_views=1)
        n, v = views[0].shape[0], len(views)
        if not self.supervised and v < 2:
            raise ValueError("self-supervised Triplet needs at least 2 views per image (the positives), got 1")
        # One forward pass over all views keeps batch-norm statistics shared, as SimCLR does.
        z = self.project(torch.cat(views))  # [V*B, D], view-major
        ids = self.view_ids(labels, n, v, z.device)
        if self.strategy == "all":
            loss, mined = all_triplets_loss(z, ids, self.margin, self.distance), None
        else:
            a, p, neg = mine_triplets(z.detach(), ids, self.strategy, self.margin, distance=self.distance)
            # index_select, not z[a]: the backward of advanced indexing accumulates repeated indices
            # in a thread-dependent order on the CPU, which made runs differ in the last bits.
            anchor, positive, negative = (z.index_select(0, i) for i in (a, p, neg))
            loss = triplet_margin(anchor, positive, negative, self.margin, distance=self.distance)
            mined = len(a)
        if self.training:
            with torch.no_grad():
                self.stats.append(
                    TripletStats(
                        loss=float(loss),
                        mined=mined if mined is not None else _count_valid(ids),
                        zero_loss_fraction=zero_loss_fraction(z.detach(), ids, self.margin, self.distance),
                        mean_distance=spread(z.detach()),
                    )
                )
        return loss
