"""Assigning embeddings to clusters: SwAV's Sinkhorn-Knopp codes, and PCL's k-means prototypes.

SwAV [1] turns the scores of B embeddings against K prototypes into soft *codes* Q [B, K] that solve an
entropy-regularised optimal transport problem (section 3.1): maximise Tr(Q^T S) + epsilon H(Q) over the
transportation polytope, where every sample spreads one unit of mass (rows of Q sum to 1) and every prototype
receives the same share of the batch (columns sum to B / K), the *equipartition* constraint that keeps all
samples from falling into one cluster. The solution is diag(u) exp(S / epsilon) diag(v); Sinkhorn-Knopp [2]
finds u and v by normalising rows and columns in turn, three iterations in [1].

PCL [3] instead clusters the features of the whole training set with k-means (:func:`kmeans`) and gives every
cluster a *concentration* phi (:func:`concentration`, [3] eq. 12), the temperature of its prototype in the
ProtoNCE loss (:func:`clcourse.losses.proto_nce`): small for tight clusters, large for loose ones.

[1] Caron et al., Unsupervised Learning of Visual Features by Contrasting Cluster Assignments (SwAV),
    NeurIPS 2020.
[2] Cuturi, Sinkhorn Distances: Lightspeed Computation of Optimal Transport, NeurIPS 2013.
[3] Li et al., Prototypical Contrastive Learning of Unsupervised Representations (PCL), ICLR 2021; the
    authors' code github.com/salesforce/PCL (main_pcl.py, run_kmeans).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from clcourse.checks import check_number
from clcourse.distributed import all_gather_cat, all_reduce_sum

__all__ = ["sinkhorn", "kmeans", "concentration"]


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


def kmeans(features: Tensor, num_clusters: int, *, seed: int = 0, n_init: int = 1,
           max_iter: int = 20) -> tuple[Tensor, Tensor]:
    """k-means of N points into M clusters: scikit-learn's ``KMeans`` (k-means++ seeds, then Lloyd's iterations).

    Args:
        features: [N, D] floating point, the points (on any device; clustered on the CPU).
        num_clusters: M, with 2 <= M < N.
        seed: seeds the k-means++ initialisation, so the same features give the same clusters.
        n_init: >= 1 runs from different seeds, the one of lowest inertia kept ([3]'s code: 5 with faiss).
        max_iter: >= 1 Lloyd iterations per run at most ([3]'s code: 20).

    Returns:
        ``(centroids, assignments)``: the cluster means [M, D] (in the features' dtype, on the CPU, not
        normalised) and the index of each point's nearest centroid [N] (int64), which scikit-learn
        computes against the final centroids.
    """
    from sklearn.cluster import KMeans

    if not isinstance(features, Tensor) or features.dim() != 2 or not features.is_floating_point():
        got = f"{features.dtype} of shape {list(features.shape)}" if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"features must be a floating-point tensor [N, D], got {got}")
    n = features.shape[0]
    for name, value, least in (("num_clusters", num_clusters, 2), ("n_init", n_init, 1), ("max_iter", max_iter, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    if num_clusters >= n:
        raise ValueError(f"k-means of {n} points into {num_clusters} clusters: give fewer clusters than points "
                         "(M < N; PCL's prototypes mean something only when most clusters hold several images)")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features must be finite to be clustered, got NaN or infinite values")
    x = features.detach().cpu()
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    fitted = KMeans(n_clusters=num_clusters, n_init=n_init, max_iter=max_iter, random_state=seed).fit(x.numpy())
    centroids = torch.from_numpy(fitted.cluster_centers_).to(features.dtype)
    return centroids, torch.from_numpy(fitted.labels_).long()


def concentration(features: Tensor, centroids: Tensor, assignments: Tensor, temperature: float,
                  alpha: float = 10.0) -> Tensor:
    """PCL's concentration phi of every cluster [3] (section 3.3, eq. 12), made stable as [3]'s code does.

    1. phi_c = sum_z ||v_z - c||_2 / (Z log(Z + alpha)) over the Z members v_z of cluster c, the distances to
       the cluster mean c ([3] eq. 12; the code: the mean distance divided by log(Z + alpha)). alpha keeps small
       clusters from getting an overly large phi.
    2. A cluster with at most one member (its phi would be 0, or undefined when empty) gets the largest phi of
       the others ([3]'s code: ``density[counts <= 1] = dmax``; the paper does not say).
    3. phi is clamped to its 10th-90th percentile (linear interpolation, as ``np.percentile``), and
    4. scaled so that its mean equals ``temperature`` ([3]: "normalize phi ... such that they have a mean of
       tau"; the clamp of step 3 is the code's, not the paper's).

    Args:
        features: [N, D], the clustered points (PCL: the L2-normalised momentum features).
        centroids: [M, D], the cluster means the distances are measured to (k-means' centroids, before PCL
            normalises them into prototypes, as in [3]'s code).
        assignments: [N] int, each point's cluster in [0, M).
        temperature: > 0, the mean of the returned phi (PCL: the InfoNCE temperature).
        alpha: > 0, the smoothing constant (10 in [3]).

    Returns:
        phi [M], float64, every entry > 0.

    Raises:
        ValueError: bad shapes, or no cluster with two members at a distance (phi would be 0 everywhere).
    """
    t = check_number("temperature", temperature)
    a = check_number("alpha", alpha)
    if not isinstance(features, Tensor) or not isinstance(centroids, Tensor) or features.dim() != 2 \
            or centroids.dim() != 2 or features.shape[1] != centroids.shape[1]:
        shapes = [list(x.shape) if isinstance(x, Tensor) else type(x).__name__ for x in (features, centroids)]
        raise ValueError(f"features [N, D] and centroids [M, D] must share D, got {shapes[0]} and {shapes[1]}")
    n, m = features.shape[0], centroids.shape[0]
    if not isinstance(assignments, Tensor) or assignments.shape != (n,) or assignments.is_floating_point():
        got = f"{assignments.dtype} of shape {list(assignments.shape)}" if isinstance(assignments, Tensor) \
            else type(assignments).__name__
        raise ValueError(f"assignments must be an integer tensor [{n}] (one cluster per point), got {got}")
    if n and (int(assignments.min()) < 0 or int(assignments.max()) >= m):
        raise ValueError(f"assignments must lie in [0, {m}) (one of the {m} clusters), got values "
                         f"{int(assignments.min())}..{int(assignments.max())}")
    x, c, s = features.detach().cpu().double(), centroids.detach().cpu().double(), assignments.cpu().long()
    distances = torch.linalg.vector_norm(x - c[s], dim=1)
    counts = torch.bincount(s, minlength=m).double()
    sums = torch.zeros(m, dtype=torch.float64).index_add_(0, s, distances)
    phi = sums / counts.clamp_min(1) / torch.log(counts + a)
    lonely = counts <= 1
    phi[lonely] = 0.0
    phi[lonely] = phi.max()  # the largest of the others
    low, high = torch.quantile(phi, torch.tensor([0.1, 0.9], dtype=torch.float64))
    phi = phi.clamp(low, high)
    if not bool(phi.mean() > 0):
        raise ValueError("every cluster has at most one member, or its members coincide: the concentration is "
                         "0 everywhere; use fewer clusters than distinct points")
    phi = t * phi / phi.mean()
    if not bool((phi > 0).all()):
        raise ValueError("over 10% of the clusters have concentration 0 (members that coincide, e.g. duplicate "
                         "images): their prototypes would get an infinite logit; use fewer clusters")
    return phi
