"""Assigning embeddings to clusters: SwAV's Sinkhorn-Knopp codes.

SwAV [1] turns the scores of B embeddings against K prototypes into soft *codes* Q [B, K] that solve an
entropy-regularised optimal transport problem (section 3.1): maximise Tr(Q^T S) + epsilon H(Q) over the
transportation polytope, where every sample spreads one unit of mass (rows of Q sum to 1) and every prototype
receives the same share of the batch (columns sum to B / K), the *equipartition* constraint that keeps all
samples from falling into one cluster. The solution is diag(u) exp(S / epsilon) diag(v); Sinkhorn-Knopp [2]
finds u and v by normalising rows and columns in turn, three iterations in [1].

[1] Caron et al., Unsupervised Learning of Visual Features by Contrasting Cluster Assignments (SwAV),
    NeurIPS 2020.
[2] Cuturi, Sinkhorn Distances: Lightspeed Computation of Optimal Transport, NeurIPS 2013.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from clcourse.checks import check_number
from clcourse.distributed import all_gather_cat, all_reduce_sum

__all__ = ["sinkhorn"]


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iterations: int = 3, *, gather_distributed: bool = False) -> Tensor:
    """SwAV's codes: soft assignments of B samples to K prototypes under equipartition [1] (Alg. 1).

    Normalises exp(scores / epsilon) alternately so that each prototype holds 1 / K of the batch's mass and
    each sample 1 / B, ``iterations`` times, the samples last; returns the result scaled so that every row
    sums to 1 exactly. The prototypes' totals (columns) reach B / K as the iterations grow; after a few they
    are close but not exact. Computed in the log domain, so any epsilon > 0 is safe from overflow.

    Args:
        scores: [B, K] similarities of samples to prototypes (z^T c in [1], cosines in [-1, 1]).
        epsilon: > 0, the entropy weight: smaller gives sharper (closer to one-hot) codes (0.05 in [1]).
        iterations: >= 1 pairs of normalisations (3 in [1]).
        gather_distributed: the batch is the global one, spread over the processes: the prototypes' totals
            are summed over all of them, as in [1]'s ``distributed_sinkhorn``.

    Returns:
        codes [B, K], rows summing to 1, no gradient.
    """
    if not isinstance(scores, Tensor) or scores.dim() != 2 or 0 in scores.shape:
        shape = list(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a non-empty tensor [B, K], got {shape}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got {scores.dtype}")
    check_number("epsilon", epsilon)
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    # [K, B]: prototypes in rows, as in [1]'s code; half precision computed in float32, float64 kept
    log_q = scores.to(torch.promote_types(scores.dtype, torch.float32)).t() / epsilon
    batch = float(scores.shape[0])
    if gather_distributed:
        batch = float(all_reduce_sum(torch.tensor([batch], device=scores.device)).item())
    log_k, log_b = math.log(scores.shape[1]), math.log(batch)
    for _ in range(iterations):
        per_prototype = torch.logsumexp(log_q, dim=1, keepdim=True)
        if gather_distributed:
            per_prototype = torch.logsumexp(all_gather_cat(per_prototype.t()), dim=0, keepdim=True).t()
        log_q = log_q - per_prototype - log_k
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - log_b
    return (log_q + log_b).exp().t().to(scores.dtype)
