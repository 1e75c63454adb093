"""Losses without negatives: BYOL's and SimSiam's prediction of the other view, and Barlow Twins' redundancy
reduction (the non-contrastive methods of lesson 18).

Neither family compares an image with other images. BYOL [1] and SimSiam [2] ask a predictor's output for one view
to point where the other view's projection points, and keep the latter out of the gradient (stop-gradient); a
constant encoder would satisfy the loss, and it is the asymmetry (predictor, stop-gradient, and for BYOL a momentum
target) that keeps training away from that collapse. Barlow Twins [3] asks the cross-correlation matrix of the two
views' standardised embeddings to be the identity: each dimension invariant to the augmentation (diagonal 1) and
unrelated to the others (off-diagonal 0), which a constant or a low-rank embedding cannot satisfy.

[1] Grill et al., Bootstrap Your Own Latent (BYOL), NeurIPS 2020.
[2] Chen & He, Exploring Simple Siamese Representation Learning (SimSiam), CVPR 2021.
[3] Zbontar et al., Barlow Twins: Self-Supervised Learning via Redundancy Reduction, ICML 2021.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clcourse.checks import check_number, check_tensor, shape_of

__all__ = ["barlow_twins_loss", "byol_loss", "cross_correlation", "simsiam_loss"]


def _check_pair(loss: str, names: tuple[str, str], a, b) -> None:
    check_tensor(names[0], a, "[N, D]")
    check_tensor(names[1], b, "[N, D]")
    if a.shape != b.shape:
        raise ValueError(f"{loss}: {names[0]} and {names[1]} must have the same shape [N, D] (row i of each from the "
                         f"same image), got {shape_of(a)} and {shape_of(b)}")


def _cosine_to_targets(predictions: Tensor, targets: Tensor, stop_gradient: bool = True) -> Tensor:
    """cos(p_i, sg(z_i)) per row [N], computed in at least float32; with ``stop_gradient`` no gradient reaches the
    targets."""
    dtype = torch.promote_types(predictions.dtype, torch.float32)
    targets = targets.detach() if stop_gradient else targets
    return F.cosine_similarity(predictions.to(dtype), targets.to(dtype), dim=1)


def simsiam_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor, *, stop_gradient: bool = True) -> Tensor:
    """SimSiam's symmetric loss [2]: D(p1, z2) / 2 + D(p2, z1) / 2 with D(p, z) = -cos(p, stop_gradient(z)),
    averaged over the batch.

    Shapes: p1, p2 [N, D] (the predictor's outputs of views 1 and 2), z1, z2 [N, D] (the projections). Returns a
    scalar in [-1, 1]: -1 when every prediction points along the other view's projection. The projections get no
    gradient from this loss (they are the targets); they are trained through the predictions of the other view.
    ``stop_gradient=False`` lets it through: the ablation of [2] (section 4.1) in which SimSiam collapses.
    """
    _check_pair("simsiam_loss", ("p1", "z2"), p1, z2)
    _check_pair("simsiam_loss", ("p2", "z1"), p2, z1)
    return -(_cosine_to_targets(p1, z2, stop_gradient).mean() + _cosine_to_targets(p2, z1, stop_gradient).mean()) / 2


def byol_loss(p1: Tensor, p2: Tensor, t1: Tensor, t2: Tensor) -> Tensor:
    """BYOL's symmetric loss [1]: the mean squared distance between the L2-normalised prediction of one view and
    the target network's normalised projection of the other, 2 - 2 cos(p, stop_gradient(t)), summed over the two
    directions and averaged over the batch.

    Shapes: p1, p2 [N, D] (the online predictor's outputs of views 1 and 2), t1, t2 [N, D] (the momentum target's
    projections). Returns a scalar in [0, 8]: 0 when every prediction points along the other view's target.
    """
    _check_pair("byol_loss", ("p1", "t2"), p1, t2)
    _check_pair("byol_loss", ("p2", "t1"), p2, t1)
    return (2 - 2 * _cosine_to_targets(p1, t2)).mean() + (2 - 2 * _cosine_to_targets(p2, t1)).mean()


def cross_correlation(z1: Tensor, z2: Tensor, eps: float = 1e-5) -> Tensor:
    """Barlow Twins' cross-correlation matrix [3] of two views' embeddings [N, D] -> [D, D].

    Each dimension is standardised over the batch (mean 0, variance 1, the biased variance plus ``eps`` as a
    batch norm without affine parameters computes it), then C_ij = sum_b z1_bi z2_bj / N. C_ii is the correlation
    of dimension i across the two views; a dimension that is constant over the batch standardises to 0.
    """
    _check_pair("cross_correlation", ("z1", "z2"), z1, z2)
    if z1.shape[0] < 2:
        raise ValueError(f"cross_correlation needs a batch of at least 2 (the statistics are over the batch), got "
                         f"{shape_of(z1)}")
    eps = check_number("eps", eps)
    dtype = torch.promote_types(z1.dtype, torch.float32)

    def standardised(z: Tensor) -> Tensor:
        z = z.to(dtype)
        return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)

    return standardised(z1).T @ standardised(z2) / z1.shape[0]


def barlow_twins_loss(z1: Tensor, z2: Tensor, off_diagonal_weight: float = 5e-3, eps: float = 1e-5) -> Tensor:
    """Barlow Twins' loss [3]: sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2 of the cross-correlation C
    (:func:`cross_correlation`), lambda = ``off_diagonal_weight`` (the paper's 5e-3).

    Shapes: z1, z2 [N, D] (the projections of two views, row i of each from the same image), N >= 2; returns a
    scalar >= 0: 0 when C is the identity. A collapsed embedding (every dimension constant over the batch) gives
    C = 0 and the loss D.
    """
    weight = check_number("off_diagonal_weight", off_diagonal_weight, strict=False)
    c = cross_correlation(z1, z2, eps)
    on_diagonal = (1 - c.diagonal()).pow(2).sum()
    off_diagonal = c.pow(2).sum() - c.diagonal().pow(2).sum()
    return on_diagonal + weight * off_diagonal
