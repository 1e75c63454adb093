"""Contrastive losses and the hypersphere metrics of the course.

Every loss L2-normalises its embeddings first (cosine similarity), so the inputs are raw
projections. Half-precision inputs (float16 / bfloat16) are promoted to float32 for the
similarities, softmax and log: exp(s / t) at t = 0.1 overflows float16, and a log-sum-exp over
thousands of terms loses most of a bfloat16's 8 mantissa bits. The returned loss is therefore
float32 (float64 for float64 inputs), like autocast's cross-entropy; gradients flow back to the
inputs in their own dtype.

References
----------
[1] Chen et al., SimCLR, 2020. "A Simple Framework for Contrastive Learning of Visual
    Representations", ICML.
[2] van den Oord et al., CPC, 2018. "Representation Learning with Contrastive Predictive Coding".
[3] He et al., MoCo, 2020. "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR.
[4] Robinson et al., 2021. "Contrastive Learning with Hard Negative Samples", ICLR.
[5] Chuang et al., 2020. "Debiased Contrastive Learning", NeurIPS.
[6] Schroff et al., FaceNet, 2015. "FaceNet: A Unified Embedding for Face Recognition and
    Clustering", CVPR.
[7] Hermans et al., 2017. "In Defense of the Triplet Loss for Person Re-Identification".
[8] Khosla et al., SupCon, 2020. "Supervised Contrastive Learning", NeurIPS.
[9] Wang & Isola, 2020. "Understanding Contrastive Representation Learning through Alignment
    and Uniformity on the Hypersphere", ICML.
[10] Caron et al., SwAV, 2020. "Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments", NeurIPS.
[11] Dwibedi et al., NNCLR, 2021. "With a Little Help from My Friends: Nearest-Neighbor Contrastive
    Learning of Visual Representations", ICCV.
[12] Li et al., PCL, 2021. "Prototypical Contrastive Learning of Unsupervised Representations", ICLR.
[13] Wang et al., Pixel contrast, 2021. "Exploring Cross-Image Pixel Contrast for Semantic Segmentation",
    ICCV.
[14] Joseph et al., ORE, 2021. "Towards Open World Object Detection", CVPR.
[15] Srinivas, Laskin et al., CURL, 2020. "CURL: Contrastive Unsupervised Representations for Reinforcement
    Learning", ICML.
[16] Radford et al., CLIP, 2021. "Learning Transferable Visual Models From Natural Language Supervision", ICML.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from clcourse.checks import check_choice, check_labels, check_number, check_tensor, shape_of
from clcourse.distributed import all_gather_cat, gather_with_grad, rank, world_size

__all__ = [
    "nt_xent",
    "info_nce",
    "info_nce_from_similarities",
    "paired_info_nce",
    "clip_loss",
    "proto_nce",
    "triplet_margin",
    "mine_triplets",
    "all_triplets_loss",
    "pairwise_distance",
    "supcon",
    "supcon_anchor_losses",
    "pixel_contrast",
    "contrastive_clustering",
    "bilinear_info_nce",
    "swapped_prediction",
    "alignment",
    "uniformity",
    "NTXentLoss",
    "SupConLoss",
]

_DISTANCES = ("euclidean", "cosine")
_STRATEGIES = ("all", "hard", "semi-hard")
_SUPCON_VARIANTS = ("out", "in")
# mine_triplets(strategy="all") lists triplets as three int64 indices: 20 million of them take 480 MB.
MAX_LISTED_TRIPLETS = 20_000_000


def _rank(x) -> int | None:
    return x.dim() if isinstance(x, Tensor) else None


def _outside_autocast(loss_fn):
    """Run a loss with autocast off on its inputs' device, so its matmuls really are float32.

    Without this, autocast (the training loop's mixed precision) casts the float32 inputs of
    the similarity matmuls back to bfloat16 / float16, undoing the promotion that the module
    docstring promises.
    """

    @functools.wraps(loss_fn)
    def wrapper(*args, **kwargs):
        candidates = (x for a in args for x in (a if isinstance(a, (list, tuple)) else (a,)))
        first = next((x for x in candidates if isinstance(x, Tensor)), None)
        device_type = first.device.type if first is not None else "cpu"
        if device_type in ("cuda", "cpu", "mps", "xpu") and torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                return loss_fn(*args, **kwargs)
        return loss_fn(*args, **kwargs)

    return wrapper


def _normalized(*xs: Tensor) -> list[Tensor]:
    """L2-normalise rows (last dim) in at least float32; float64 stays float64 (for gradcheck)."""
    dtype = torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32
    return [F.normalize(x.to(dtype), dim=-1) for x in xs]


def _check_pairs(loss: str, name1: str, x1, name2: str, x2, gather_distributed: bool) -> bool:
    """Check the two [N, D] sides of N positive pairs of ``loss``; return whether it runs across processes."""
    check_tensor(name1, x1, "[N, D]")
    check_tensor(name2, x2, "[N, D]")
    if x1.shape != x2.shape:
        raise ValueError(f"{name1} and {name2} must have the same shape [N, D], got {shape_of(x1)} and {shape_of(x2)}")
    across_processes = bool(gather_distributed) and world_size() > 1
    if x1.shape[0] < (1 if across_processes else 2):
        raise ValueError(
            f"{loss} needs at least 2 pairs (N >= 2) so that every anchor has a negative "
            f"(at least 1 pair per process when gathering), got N = {x1.shape[0]}"
        )
    return across_processes


# --------------------------------------------------------------------------- NT-Xent


class _NTXentFunction(torch.autograd.Function):
    """NT-Xent on already-normalised z = [view 1; view 2] of shape [2N, D], in one 2N x 2N buffer.

    Plain autograd keeps about three 2N x 2N matrices alive (logits, masked logits,
    log-softmax). Here the forward turns the logit matrix into E = exp(S - rowmax) in place and
    keeps only E and its row sums; the backward never forms the softmax matrix either.
    """

    @staticmethod
    def forward(ctx, z: Tensor, temperature: float) -> Tensor:
        n = z.shape[0] // 2
        # S = z z^T / t; scaling the [2N, D] factor costs 2N*D multiplies instead of (2N)^2.
        logits = torch.mm(z * (1.0 / temperature), z.t())
        logits.fill_diagonal_(float("-inf"))  # an anchor is neither its own positive nor negative
        row_max = logits.amax(dim=1, keepdim=True)  # subtracted so that exp cannot overflow
        exp = logits.sub_(row_max).exp_()  # E, in place: the only 2N x 2N buffer
        row_sum = exp.sum(dim=1)
        # The positive logit z_i . z_pos(i) / t is the same for both views of a pair. Subtracting
        # it from the row max before adding log(row_sum) keeps small losses accurate: max and
        # positive are often the same number, of size 1/t.
        positive = (z[:n] * z[n:]).sum(dim=1) / temperature
        loss = (row_sum.log() + (row_max.squeeze(1) - positive.repeat(2))).mean()
        ctx.save_for_backward(z, exp, row_sum)
        ctx.temperature = temperature
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor):
        z, exp, row_sum = ctx.saved_tensors
        n = z.shape[0] // 2
        # dL/dS = (P - Y) / 2N with P = softmax rows = E / row_sum and Y the positive indicator;
        # dL/dz = (dL/dS + dL/dS^T) z / t. The row scaling of P moves onto the [2N, D] factors
        # (P z = (E z) / row_sum, P^T z = E^T (z / row_sum)), so P is never formed, and
        # mm(exp.t(), .) reads E transposed without copying it. Y z = Y^T z = z with halves swapped.
        inv_sum = row_sum.reciprocal().unsqueeze(1)
        grad = torch.addmm(torch.mm(exp, z).mul_(inv_sum), exp.t(), z * inv_sum)
        grad[:n].sub_(z[n:], alpha=2.0)
        grad[n:].sub_(z[:n], alpha=2.0)
        grad.mul_(grad_loss / (2 * n * ctx.temperature))
        return grad, None


@_outside_autocast
def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5, *, gather_distributed: bool = False) -> Tensor:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR [1].

    Shapes: z1, z2 [N, D], the projections of two views of the same N samples (row i of z1 and
    row i of z2 are a positive pair); returns a scalar.

    gather_distributed: under torch.distributed with W > 1 processes, contrast every anchor
    against the embeddings of all processes (2WN - 2 negatives, SimCLR's global batch [1],
    section 2.2); the mean over processes of the returned values is then the loss of the
    concatenated batch, and so are DDP's averaged gradients (see :mod:`clcourse.distributed`).
    Each process passes its own N pairs (the same N everywhere). Without a process group, or
    with False, the loss of this process's batch alone.

    In words: L2-normalise all 2N embeddings; every embedding is an anchor whose positive is the
    other view of its sample and whose 2N - 2 negatives are all other embeddings. Its loss is
    the cross-entropy of a (2N - 1)-way softmax over cosine similarities divided by the
    temperature t, with the positive as the target:

        l_i = -log( exp(s_i,pos(i) / t) / sum_{k != i} exp(s_ik / t) ),   L = mean over the 2N anchors.

    So identical embeddings give L = log(2N - 1), and L -> 0 when every positive is far more
    similar than every negative. Same value as lightly's and pytorch-metric-learning's NTXentLoss.

    Computed by a custom autograd Function that holds a single 2N x 2N float32 matrix (see
    benchmarks/bench_nt_xent.py); float16 / bfloat16 inputs are computed in float32. The
    gradient is not itself differentiable (no double backward).
    """
    across_processes = _check_pairs("nt_xent", "z1", z1, "z2", z2, gather_distributed)
    t = check_number("temperature", temperature)
    if across_processes:
        # NT-Xent is SupCon with one positive per anchor (both variants agree then).
        return _supcon_across_processes(torch.stack([z1, z2], dim=1), None, t, "out")
    (z,) = _normalized(torch.cat([z1, z2]))  # normalisation stays in autograd
    return _NTXentFunction.apply(z, t)


# --------------------------------------------------------------------------- InfoNCE


@_outside_autocast
def info_nce(
    query: Tensor,
    positive: Tensor,
    negatives: Tensor,
    temperature: float = 0.1,
    *,
    hard_negative_beta: float = 0.0,
    debiased_tau_plus: float = 0.0,
) -> Tensor:
    """InfoNCE [2]: pick each query's positive out of itself and K negatives.

    Shapes: query, positive [N, D]; negatives [K, D] shared by all queries (e.g. a MoCo queue
    [3]) or [N, K, D], K per query; returns a scalar. The logits are [s(q, p), s(q, n_1), ...,
    s(q, n_K)] / t with cosine similarity s, positive at index 0.

    In words, with pos = exp(s(q, p) / t) and neg_k = exp(s(q, n_k) / t):

        l = -log( pos / (pos + Ng) ),   L = mean over the N queries,

    where plain InfoNCE has Ng = sum_k neg_k, the cross-entropy with the positive as the target.

    hard_negative_beta = beta > 0 (Robinson et al. [4]) replaces the uniform average of the
    negatives by one weighted towards the hard ones, weights w_k = softmax_k(beta * s(q, n_k) / t)
    (beta multiplies the logit, as in the authors' code where t is folded into the embedding):
    Ng = K * sum_k w_k neg_k.

    debiased_tau_plus = tau+ in [0, 1) (Chuang et al. [5]) is the prior probability that a
    "negative" shares the query's class; the estimator removes their expected share:
    Ng = (Ng - tau+ * K * pos) / (1 - tau+) ([5] eq. 6; [4] combines it with beta the same way).
    Whenever either option is on, Ng is clamped from below at K * e^{-1/t}, the smallest value
    sum_k neg_k can take on the unit sphere, as in both papers: the subtraction can otherwise
    make it negative.

    With beta = 0 and tau+ = 0 this is exactly plain InfoNCE. Computed in log space (float32
    at least), so small temperatures do not overflow.
    """
    check_tensor("query", query, "[N, D]")
    check_tensor("positive", positive, "[N, D]")
    if query.shape != positive.shape:
        raise ValueError(
            f"query and positive must have the same shape [N, D], got {shape_of(query)} and {shape_of(positive)}"
        )
    if query.shape[0] < 1:
        raise ValueError(f"info_nce needs at least one query (N >= 1), got shape {shape_of(query)}")
    n, d = query.shape
    expected = f"[K, {d}] (shared) or [{n}, K, {d}] (per query)"
    check_tensor("negatives", negatives, "[N, K, D]" if _rank(negatives) == 3 else "[K, D]", expected)
    if negatives.shape[-1] != d or (negatives.dim() == 3 and negatives.shape[0] != n):
        raise ValueError(f"negatives must have shape {expected} to match query {shape_of(query)}, got {shape_of(negatives)}")
    k = negatives.shape[-2]
    if k < 1:
        raise ValueError(f"info_nce needs at least one negative (K >= 1), got negatives of shape {shape_of(negatives)}")
    t = check_number("temperature", temperature)
    beta = check_number("hard_negative_beta", hard_negative_beta, strict=False)
    tau_plus = check_number("debiased_tau_plus", debiased_tau_plus, strict=False)
    if tau_plus >= 1:
        raise ValueError(f"debiased_tau_plus is a probability in [0, 1), got {tau_plus}")

    q, p = _normalized(query, positive)
    pos_sim = (q * p).sum(dim=1)  # [N]
    if negatives.dim() == 2:
        (neg,) = _normalized(negatives)
        neg_sim = q @ neg.t()  # [N, K]
    else:
        # Per-query negatives [N, K, D]: dot products first, then divide by the norms, so the
        # N*K*D tensor is only read (twice), never written out normalised.
        neg = negatives.to(q.dtype)
        norms = torch.linalg.vector_norm(neg, dim=2).clamp_min(1e-12)  # F.normalize's eps
        neg_sim = torch.bmm(neg, q.unsqueeze(2)).squeeze(2) / norms  # [N, K]
    return _info_nce_of_similarities(pos_sim, neg_sim, t, beta, tau_plus, reduction="mean")


def _info_nce_of_similarities(
    pos_sim: Tensor, neg_sim: Tensor, t: float, beta: float, tau_plus: float, reduction: str = "none"
) -> Tensor:
    """InfoNCE [2] (with [4]'s beta and [5]'s tau+) of checked similarities [N], [N, K].

    Returns per-query losses [N] (``reduction="none"``) or their mean (``"mean"``: plain
    InfoNCE then is exactly ``F.cross_entropy``'s own mean, which differs from ``.mean()`` of
    the per-query losses in the last bits).
    """
    pos_logit, neg_logits = pos_sim / t, neg_sim / t
    if beta == 0.0 and tau_plus == 0.0:
        logits = torch.cat([pos_logit.unsqueeze(1), neg_logits], dim=1)
        target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits, target, reduction=reduction)

    # Everything below is a log of a positive quantity, so terms can be compared and shifted
    # before exponentiating: at t = 0.01 exp(s / t) reaches e^100, beyond float32.
    k = neg_sim.shape[1]
    log_k = math.log(k)
    # log(K * sum_k w_k neg_k) = log K + logsumexp((beta + 1) l) - logsumexp(beta l)
    log_ng = log_k + torch.logsumexp((beta + 1.0) * neg_logits, dim=1) - torch.logsumexp(beta * neg_logits, dim=1)
    log_floor = log_k - 1.0 / t  # log(K e^{-1/t})
    shift = torch.maximum(torch.maximum(log_ng, pos_logit), torch.full_like(pos_logit, log_floor)).detach()
    ng = torch.exp(log_ng - shift)
    if tau_plus > 0.0:
        ng = (ng - tau_plus * k * torch.exp(pos_logit - shift)) / (1.0 - tau_plus)
    ng = torch.maximum(ng, torch.exp(log_floor - shift))
    # -log(pos / (pos + Ng)) = log(pos + Ng) - log pos, with pos and Ng scaled by e^{-shift};
    # (shift - pos_logit) first, as the two are often equal and large.
    loss = torch.log(torch.exp(pos_logit - shift) + ng) + (shift - pos_logit)
    return loss.mean() if reduction == "mean" else loss


def info_nce_from_similarities(
    pos_sim: Tensor,
    neg_sim: Tensor,
    temperature: float,
    *,
    hard_negative_beta: float = 0.0,
    debiased_tau_plus: float = 0.0,
) -> Tensor:
    """Per-query InfoNCE from cosine similarities: pos_sim [N], neg_sim [N, K] -> losses [N].

    The estimator of :func:`info_nce` (whose value is the mean of these losses) written on
    similarities instead of embeddings, so that the gradient with respect to each negative's
    logit can be read off (lesson 04's negatives explorer does). With l = s / t,
    pos = exp(l_pos), Ng = K * sum_k w_k exp(l_k), w = softmax(beta * l) [4], then
    Ng <- (Ng - tau+ K pos) / (1 - tau+) [5] and Ng >= K e^{-1/t} when an option is on, the
    loss is log(pos + Ng) - l_pos.
    """
    if not isinstance(pos_sim, Tensor) or not isinstance(neg_sim, Tensor):
        raise TypeError(f"pos_sim and neg_sim must be tensors [N] and [N, K], got {type(pos_sim).__name__} "
                        f"and {type(neg_sim).__name__}")
    if pos_sim.dim() != 1 or neg_sim.dim() != 2 or neg_sim.shape[0] != pos_sim.shape[0] or neg_sim.shape[1] < 1:
        raise ValueError(
            f"pos_sim must be [N] and neg_sim [N, K] with K >= 1, got {shape_of(pos_sim)} and {shape_of(neg_sim)}"
        )
    t = check_number("temperature", temperature)
    beta = check_number("hard_negative_beta", hard_negative_beta, strict=False)
    tau_plus = check_number("debiased_tau_plus", debiased_tau_plus, strict=False)
    if tau_plus >= 1:
        raise ValueError(f"debiased_tau_plus is a probability in [0, 1), got {tau_plus}")
    return _info_nce_of_similarities(pos_sim, neg_sim, t, beta, tau_plus)


@_outside_autocast
def paired_info_nce(anchors: Tensor, candidates: Tensor, temperature: float = 0.1, *,
                    gather_distributed: bool = False) -> Tensor:
    """InfoNCE [2] in which anchor i picks its partner, candidate i, out of all N candidates.

    Shapes: anchors, candidates [N, D] (row i of each a positive pair); returns a scalar. With
    cosine similarity s, the loss is the cross-entropy of the N-way softmax of each anchor's row
    of similarities, the partner as the target:

        l_i = -log( exp(s(a_i, c_i) / t) / sum_k exp(s(a_i, c_k) / t) ),   L = mean over the N anchors.

    Unlike :func:`nt_xent`, the denominator runs over the candidates only (N - 1 negatives, none of
    them another anchor), and the anchors are not candidates of each other. NNCLR's loss [11]
    (eq. 3) is this with the anchors NN(z_i, Q), the nearest neighbours of the projections in the
    support set, and the candidates the predictions p_k of the other view. Identical rows give
    log N; L -> 0 when every partner is far more similar than every other candidate.

    gather_distributed: under torch.distributed with W > 1 processes, every anchor is contrasted
    against the candidates of all processes (W N - 1 negatives, gathered with gradients); each
    process passes its own N pairs (the same N everywhere) and the mean over processes of the
    returned values is the loss of the concatenated batch, and so are DDP's averaged gradients
    (the convention of :mod:`clcourse.distributed`). Without a process group, the loss of this batch.
    """
    across_processes = _check_pairs("paired_info_nce", "anchors", anchors, "candidates", candidates,
                                    gather_distributed)
    t = check_number("temperature", temperature)
    a, c = _normalized(anchors, candidates)
    target = torch.arange(a.shape[0], device=a.device)
    if across_processes:
        c = gather_with_grad(c)  # process r's partners are rows r * N + i of the gathered candidates
        target = target + rank() * a.shape[0]
    return F.cross_entropy(a @ c.t() / t, target)


@_outside_autocast
def clip_loss(image_embeddings: Tensor, text_embeddings: Tensor, temperature: float | Tensor = 0.07) -> Tensor:
    """CLIP's symmetric InfoNCE [16]: each image picks its caption among the batch's, and each caption its image.

    Shapes: image_embeddings, text_embeddings [N, D] (row i of each a pair); returns a scalar. With S the [N, N]
    matrix of cosine similarities (S_ij = cos(image i, text j)), the loss is the mean of the two directions'
    cross-entropies, the diagonal as the target ([16], figure 3):

        L = ( CE(S / t, rows) + CE(S^T / t, rows) ) / 2,

    each the :func:`paired_info_nce` of one direction. Swapping images and texts transposes S and leaves L
    unchanged. Identical rows give log N; L -> 0 when every pair is far more similar than every other.

    temperature: t > 0, a float or a one-element tensor; a tensor with gradient makes t learnable, as in [16]
    (initialised to 0.07 and parametrised by its log there, see :class:`clcourse.methods.clip.CLIP`).
    """
    _check_pairs("clip_loss", "image_embeddings", image_embeddings, "text_embeddings", text_embeddings, False)
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1 or not temperature.is_floating_point():
            raise ValueError(f"temperature must be a number or a one-element floating-point tensor, got "
                             f"{temperature.dtype} of shape {shape_of(temperature)}")
        check_number("temperature", temperature.detach())
        t = temperature.reshape(())
    else:
        t = check_number("temperature", temperature)
    images, texts = _normalized(image_embeddings, text_embeddings)
    logits = images @ texts.t() / t
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def proto_nce(query: Tensor, prototypes: Tensor, concentration: Tensor, assignments: Tensor,
              negatives: Tensor | None = None) -> Tensor:
    """The prototype term of ProtoNCE [12] (eq. 6, one set of prototypes): each query picks its own prototype.

    With v_i the query, s_i its cluster, c_j the prototypes and phi_j their concentrations (each prototype's
    own temperature), and N_i the negative prototypes of query i:

        l_i = -log( exp(v_i . c_{s_i} / phi_{s_i}) / sum_{j in {s_i} + N_i} exp(v_i . c_j / phi_j) ),
        L = mean over the N queries.

    ProtoNCE ([12] eq. 7) adds the mean of this term over the clusterings to InfoNCE; :class:`clcourse.methods.PCL`
    composes the two. Queries and prototypes are L2-normalised here (cosine similarity, as elsewhere).

    Args:
        query: [N, D], the queries v_i (with gradient).
        prototypes: [M, D], the prototypes c_j (PCL's normalised k-means centroids; no gradient needed).
        concentration: [M], phi_j > 0.
        assignments: [N] int, s_i in [0, M): the prototype of each query's image.
        negatives: [N, r] int, r >= 1 negative prototypes per query, none equal to its own ([12]: r sampled
            ones); None: all M - 1 others, a cross-entropy over the M prototypes.

    Returns:
        scalar loss (float32 for half-precision queries).
    """
    check_tensor("query", query, "[N, D]")
    check_tensor("prototypes", prototypes, "[M, D]")
    n, d = query.shape
    m = prototypes.shape[0]
    if prototypes.shape[1] != d or m < 2:
        raise ValueError(f"prototypes must be [M, {d}] with M >= 2 to match query {shape_of(query)}, got "
                         f"{shape_of(prototypes)}")
    if not isinstance(concentration, Tensor) or concentration.shape != (m,) or not concentration.is_floating_point():
        got = shape_of(concentration) if isinstance(concentration, Tensor) else type(concentration).__name__
        raise ValueError(f"concentration must be a floating-point tensor [{m}] (one phi per prototype), got {got}")
    if not bool((concentration > 0).all()) or not bool(torch.isfinite(concentration).all()):
        raise ValueError("concentration must be finite and > 0 (each prototype's temperature)")
    if not isinstance(assignments, Tensor) or assignments.shape != (n,) or assignments.is_floating_point():
        got = shape_of(assignments) if isinstance(assignments, Tensor) else type(assignments).__name__
        raise ValueError(f"assignments must be an integer tensor [{n}] (each query's prototype), got {got}")
    if n and (int(assignments.min()) < 0 or int(assignments.max()) >= m):
        raise ValueError(f"assignments must be prototype indices in [0, {m}), got values "
                         f"{int(assignments.min())}..{int(assignments.max())}")
    if negatives is not None:
        if not isinstance(negatives, Tensor) or negatives.dim() != 2 or negatives.shape[0] != n \
                or negatives.shape[1] < 1 or negatives.is_floating_point():
            got = shape_of(negatives) if isinstance(negatives, Tensor) else type(negatives).__name__
            raise ValueError(f"negatives must be an integer tensor [{n}, r] with r >= 1 (prototype indices per "
                             f"query), or None for all other prototypes; got {got}")
        if int(negatives.min()) < 0 or int(negatives.max()) >= m:
            raise ValueError(f"negatives must be prototype indices in [0, {m})")
        if bool((negatives == assignments.unsqueeze(1)).any()):
            raise ValueError("a query's negatives must not contain its own prototype (assignments)")
    return _proto_nce(query, prototypes, concentration, assignments, negatives)


@_outside_autocast
def _proto_nce(query: Tensor, prototypes: Tensor, concentration: Tensor, assignments: Tensor,
               negatives: Tensor | None) -> Tensor:
    """:func:`proto_nce` of checked inputs, without reading any value back from the device (a training step
    of PCL calls it on prototypes its E-step checked)."""
    q, c = _normalized(query, prototypes)
    logits = (q @ c.t()) / concentration.to(q.dtype)  # [N, M]
    if negatives is None:
        return F.cross_entropy(logits, assignments)
    own = logits.gather(1, assignments.unsqueeze(1))
    candidates = torch.cat([own, logits.gather(1, negatives)], dim=1)  # own prototype at index 0
    return F.cross_entropy(candidates, torch.zeros(len(candidates), dtype=torch.long, device=candidates.device))


# --------------------------------------------------------------------------- triplets


def _paired_distance(x: Tensor, y: Tensor, distance: str) -> Tensor:
    """Row-wise distance between unit vectors x[i] and y[i]."""
    if distance == "euclidean":
        return (x - y).norm(dim=1)
    return 1.0 - (x * y).sum(dim=1)


def pairwise_distance(z: Tensor, distance: str = "euclidean") -> Tensor:
    """Distances between the L2-normalised rows of z [M, D] -> [M, M], as in `triplet_margin`.

    "euclidean": |a - b| on the unit sphere, sqrt(2 - 2 cos), in [0, 2]; "cosine": 1 - cos(a, b),
    in [0, 2]. Computed in float32 at least (float64 stays float64). Differentiable: coincident
    points get distance 1e-6 and a zero gradient (sqrt has no derivative at 0; the clamp's
    gradient is 0 below its minimum, so the infinite slope never propagates).
    """
    check_tensor("z", z, "[M, D]")
    check_choice("distance", distance, _DISTANCES)
    (x,) = _normalized(z)
    cos = x @ x.t()
    if distance == "euclidean":
        return (2.0 - 2.0 * cos).clamp(min=1e-12).sqrt()  # |a - b|^2 = 2 - 2 cos for unit vectors
    return 1.0 - cos


@_outside_autocast
def triplet_margin(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float = 0.2,
    *,
    distance: str = "euclidean",
) -> Tensor:
    """Triplet margin loss (FaceNet [6]) on L2-normalised embeddings.

    Shapes: anchor, positive, negative [T, D], row i one triplet; returns a scalar.

    In words: the anchor should be closer to its positive than to its negative by at least the
    margin; each triplet costs max(0, d(a, p) - d(a, n) + margin), L = mean over triplets.
    distance "euclidean" is |a - p| on the unit sphere (in [0, 2]); "cosine" is 1 - cos(a, p)
    (in [0, 2]), which equals FaceNet's squared Euclidean distance divided by 2, so FaceNet's
    margin alpha on squared distances corresponds to margin alpha / 2 here.
    Select triplets with `mine_triplets`. T = 0 (mining found nothing) gives a zero loss that is
    still part of the graph, so `.backward()` works on every batch.
    """
    for name, x in (("anchor", anchor), ("positive", positive), ("negative", negative)):
        check_tensor(name, x, "[T, D]")
    if not anchor.shape == positive.shape == negative.shape:
        raise ValueError(
            "anchor, positive and negative must have the same shape [T, D], got "
            f"{shape_of(anchor)}, {shape_of(positive)} and {shape_of(negative)}"
        )
    m = check_number("margin", margin, strict=False)
    check_choice("distance", distance, _DISTANCES)
    a, p, n = _normalized(anchor, positive, negative)
    if a.shape[0] == 0:
        return a.sum() * 0.0
    violation = _paired_distance(a, p, distance) - _paired_distance(a, n, distance) + m
    return F.relu(violation).mean()


@torch.no_grad()
def mine_triplets(
    embeddings: Tensor,
    labels: Tensor,
    strategy: str = "all",
    margin: float = 0.2,
    *,
    distance: str = "euclidean",
) -> tuple[Tensor, Tensor, Tensor]:
    """Choose triplets (anchor, positive, negative) inside a labelled batch.

    Shapes: embeddings [N, D], labels [N] integer; returns three LongTensors [T] of indices
    into the batch, on the embeddings' device, for `triplet_margin(z[a], z[p], z[n])`.
    Distances are those of `triplet_margin` (on L2-normalised embeddings). A valid triplet has
    labels[a] == labels[p], a != p and labels[n] != labels[a]. Strategies:

    - "all": every valid triplet, easy ones (zero loss) included, in (a, p, n) lexicographic
      order; there are O(N^3) of them, so more than MAX_LISTED_TRIPLETS (20 million, 480 MB of
      indices) raise a ValueError: `all_triplets_loss` gives their mean loss without listing
      them. Averaging over all of them lets the many easy triplets dilute the loss (Hermans et
      al. [7] average only over the non-zero ones, "batch all").
    - "hard": batch-hard [7]: one triplet per anchor, with its farthest positive and its nearest
      negative; anchors without a positive or without a negative are skipped.
    - "semi-hard" (FaceNet [6]): for every positive pair (a, p), the nearest negative that is
      farther than the positive but inside the margin, d(a, p) < d(a, n) < d(a, p) + margin.
      Fallback when there is none: if some negatives are hard, d(a, n) <= d(a, p), take the
      least hard of them, the farthest (TensorFlow Addons' fallback when no negative is farther
      than the positive; it avoids the collapse FaceNet saw with the hardest negatives);
      otherwise every negative is beyond the margin, the pair would cost nothing and is dropped.

    Ties go to the lowest index. No gradient flows through mining.
    """
    check_tensor("embeddings", embeddings, "[N, D]")
    n = embeddings.shape[0]
    if n < 2:
        raise ValueError(f"mine_triplets needs at least 2 embeddings (N >= 2), got shape {shape_of(embeddings)}")
    check_labels(labels, n, "embedding")
    check_choice("strategy", strategy, _STRATEGIES)
    m = check_number("margin", margin, strict=False)
    check_choice("distance", distance, _DISTANCES)

    labels = labels.to(embeddings.device)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    pos_mask = same & ~eye
    neg_mask = ~same

    if strategy == "all":
        return _all_valid_triplets(pos_mask, neg_mask)

    dist = pairwise_distance(embeddings, distance)
    if strategy == "hard":
        anchors = (pos_mask.any(dim=1) & neg_mask.any(dim=1)).nonzero().squeeze(1)
        hardest_pos = dist.masked_fill(~pos_mask, float("-inf")).argmax(dim=1)
        hardest_neg = dist.masked_fill(~neg_mask, float("inf")).argmin(dim=1)
        return anchors, hardest_pos[anchors], hardest_neg[anchors]

    a, p = pos_mask.nonzero(as_tuple=True)
    d_ap = dist[a, p].unsqueeze(1)  # [P, 1]
    d_an = dist[a]  # [P, N]
    negative = neg_mask[a]
    semi_hard = negative & (d_an > d_ap) & (d_an < d_ap + m)
    hard = negative & (d_an <= d_ap)
    has_semi_hard = semi_hard.any(dim=1)
    nearest_semi_hard = d_an.masked_fill(~semi_hard, float("inf")).argmin(dim=1)
    least_hard = d_an.masked_fill(~hard, float("-inf")).argmax(dim=1)
    chosen = torch.where(has_semi_hard, nearest_semi_hard, least_hard)
    keep = has_semi_hard | hard.any(dim=1)
    return a[keep], p[keep], chosen[keep]


def _all_valid_triplets(pos_mask: Tensor, neg_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Every (a, p, n) with pos_mask[a, p] and neg_mask[a, n], lexicographic; masks [N, N] -> 3 x [T].

    Built a block of anchors at a time, so the boolean [anchors, N, N] mask stays small; the
    result itself is refused above MAX_LISTED_TRIPLETS.
    """
    n = pos_mask.shape[0]
    count = int((pos_mask.sum(dim=1) * neg_mask.sum(dim=1)).sum())
    if count > MAX_LISTED_TRIPLETS:
        raise ValueError(
            f"this batch of {n} has {count:,} valid triplets; listing them would take {24 * count / 1e9:.1f} GB "
            f"(the limit is {MAX_LISTED_TRIPLETS:,}). Use all_triplets_loss(z, labels, margin) for their mean "
            "loss without listing them, or strategy 'hard' or 'semi-hard'"
        )
    block = max(1, 2**24 // (n * n))  # anchors per block: a boolean mask of at most 16 MB
    parts = []
    for start in range(0, n, block):
        valid = pos_mask[start : start + block].unsqueeze(2) & neg_mask[start : start + block].unsqueeze(1)
        a, p, neg = valid.nonzero(as_tuple=True)
        parts.append((a + start, p, neg))
    return tuple(torch.cat(column) for column in zip(*parts))


@_outside_autocast
def all_triplets_loss(z: Tensor, labels: Tensor, margin: float = 0.2, distance: str = "euclidean") -> Tensor:
    """Mean triplet loss [6] over every valid triplet of a batch, without listing the triplets.

    Shapes: z [M, D], labels [M] integer; returns a scalar. The same value (up to rounding) as
    ``triplet_margin(z[a], z[p], z[n], margin)`` on ``mine_triplets(z, labels, "all")``, but
    from one [M, M] distance matrix and a [P, M] slice per positive pair: gathering the O(M^3)
    triplets as [T, D] rows costs hundreds of MB at M = 512. Zero (still in the graph) when
    the batch has no valid triplet.
    """
    check_tensor("z", z, "[M, D]")
    check_labels(labels, z.shape[0], "row of z")
    m = check_number("margin", margin, strict=False)
    dist = pairwise_distance(z, distance)
    labels = labels.to(z.device)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=z.device)
    a, p = (same & ~eye).nonzero(as_tuple=True)
    neg = (~same)[a]  # [P, M]: the negatives of each positive pair's anchor
    if not neg.any():
        return z.sum() * 0.0
    # index_select and gather rather than dist[a], dist[a, p]: on the CPU their backward sums
    # repeated indices in a fixed order, so training is reproducible run to run.
    rows = dist.index_select(0, a)  # [P, M]: d(a, .) for every positive pair
    d_ap = rows.gather(1, p.unsqueeze(1))  # [P, 1]
    violation = (d_ap - rows + m).masked_fill(~neg, 0.0)
    return F.relu(violation).sum() / neg.sum()


# --------------------------------------------------------------------------- SupCon


@_outside_autocast
def supcon(
    z: Tensor,
    labels: Tensor | None = None,
    temperature: float = 0.1,
    variant: str = "out",
    *,
    gather_distributed: bool = False,
) -> Tensor:
    """Supervised contrastive loss (Khosla et al. [8]).

    Shapes: z [N, V, D] (V views of N samples) or [M, D] (flat); labels [N] resp. [M], integer;
    returns a scalar. labels=None means instance discrimination (each sample its own class,
    needs z [N, V, D]); for V = 2 that is exactly `nt_xent(z[:, 0], z[:, 1])`.

    In words: every embedding i is an anchor; its positives P(i) are the other embeddings with
    its label, A(i) all embeddings but itself, s cosine similarity, and
    log p_ip = s_ip / t - log sum_{a in A(i)} exp(s_ia / t).

    - variant "out" ([8] eq. 2, the one the paper recommends): the log is outside the mean over
      positives, l_i = -1/|P(i)| * sum_{p in P(i)} log p_ip.
    - variant "in" ([8] eq. 3): the mean over positives is inside the log,
      l_i = -log( 1/|P(i)| * sum_{p in P(i)} p_ip ).

    L = mean of l_i over anchors that have at least one positive (a flat batch may hold a
    label only once). Unlike the authors' code, the loss is not rescaled by t / 0.07.

    gather_distributed: under torch.distributed with W > 1 processes, positives and negatives
    come from the embeddings and labels of every process (the same N or M on each); the mean
    over processes of the returned values is the loss of the concatenated batch, and so are
    DDP's averaged gradients (see :mod:`clcourse.distributed`).
    """
    check_tensor("z", z, "[N, V, D]" if _rank(z) == 3 else "[M, D]", "[N, V, D] or [M, D]")
    if z.dim() == 2 and labels is None:
        raise ValueError(
            f"labels=None (instance discrimination) needs z of shape [N, V, D] so that views of a "
            f"sample can be paired, got flat z of shape {shape_of(z)}"
        )
    if labels is not None:
        check_labels(labels, z.shape[0], "sample (z is [N, V, D])" if z.dim() == 3 else "row of z")
    across_processes = gather_distributed and world_size() > 1
    if z.shape[0] < 1 or (not across_processes and z.shape[0] * (z.shape[1] if z.dim() == 3 else 1) < 2):
        raise ValueError(f"supcon needs at least 2 embeddings, got z of shape {shape_of(z)}")
    t = check_number("temperature", temperature)
    check_choice("variant", variant, _SUPCON_VARIANTS)
    if across_processes:
        return _supcon_across_processes(z, labels, t, variant)

    if z.dim() == 3:
        n, v, _ = z.shape
        labels = torch.arange(n, device=z.device) if labels is None else labels
        # view-major order: row v * N + i is view v of sample i
        flat, flat_labels = z.transpose(0, 1).reshape(n * v, -1), labels.to(z.device).repeat(v)
    else:
        flat, flat_labels = z, labels.to(z.device)
    (x,) = _normalized(flat)
    m = x.shape[0]
    if not (flat_labels.unsqueeze(0) == flat_labels.unsqueeze(1)).sum() > m:
        raise ValueError(
            "supcon needs at least one anchor with a positive (two embeddings with the same label), "
            f"got {m} embeddings with {m} distinct labels"
        )
    self_index = torch.arange(m, device=x.device)
    return supcon_anchor_losses(x, flat_labels, x, flat_labels, self_index, t, variant).mean()


def _supcon_across_processes(z: Tensor, labels: Tensor | None, temperature: float, variant: str) -> Tensor:
    """SupCon [8] of this process's anchors against the batch gathered from every process.

    z: [N, V, D] or [M, D] (already checked), labels [N] / [M] or None (instance ids).
    Per-anchor losses are those of `supcon`; the global loss is their mean over the C anchors
    (of all processes) that have a positive. This process returns W * (sum of its anchors'
    losses) / C, so that the mean over processes is the global loss (the gradient convention
    of :mod:`clcourse.distributed`). Anchors are rows of the local z; only the candidates are
    gathered.
    """
    w, r = world_size(), rank()
    n = z.shape[0]
    if labels is None:
        # Instance discrimination: sample i of process r is sample r * N + i of the global batch.
        labels = torch.arange(r * n, (r + 1) * n, device=z.device)
        all_labels = torch.arange(w * n, device=z.device)
    else:
        labels = labels.to(z.device)
        all_labels = all_gather_cat(labels)

    (x,) = _normalized(z)  # rows are normalised locally, before gathering: same values, less work
    all_x = gather_with_grad(x)
    if z.dim() == 3:
        v = z.shape[1]
        # View-major rows as in `supcon`: row v * (W N) + j is view v of global sample j.
        anchors, anchor_labels = x.transpose(0, 1).reshape(v * n, -1), labels.repeat(v)
        candidates, candidate_labels = all_x.transpose(0, 1).reshape(v * w * n, -1), all_labels.repeat(v)
        offsets = torch.arange(v, device=z.device).unsqueeze(1) * (w * n)
        anchor_index = (offsets + r * n + torch.arange(n, device=z.device)).reshape(-1)
    else:
        anchors, anchor_labels = x, labels
        candidates, candidate_labels = all_x, all_labels
        anchor_index = r * n + torch.arange(n, device=z.device)

    # Global count of anchors with a positive, from the gathered labels: identical on every
    # process, so no extra collective, and every process raises (or not) alike.
    # Counted per label, not with a [C, C] match matrix, which would outgrow the logits.
    _, label_of, label_count = torch.unique(candidate_labels, return_inverse=True, return_counts=True)
    n_valid = (label_count[label_of] > 1).sum()
    if n_valid == 0:
        m = candidates.shape[0]
        raise ValueError(
            "supcon needs at least one anchor with a positive (two embeddings with the same label), "
            f"got {m} embeddings (over {w} processes) with {m} distinct labels"
        )

    # A process may be left with no anchor that has a positive; its empty sum still joins the
    # graph, so it still takes part in the backward all_reduce.
    per_anchor = supcon_anchor_losses(anchors, anchor_labels, candidates, candidate_labels, anchor_index,
                                      temperature, variant)
    return per_anchor.sum() * (w / n_valid.to(per_anchor.dtype))


def supcon_anchor_losses(
    anchors: Tensor,
    anchor_labels: Tensor,
    candidates: Tensor,
    candidate_labels: Tensor,
    self_index: Tensor,
    temperature: float,
    variant: str,
) -> Tensor:
    """Per-anchor SupCon losses [8] of anchors that have a positive, against a set of candidates.

    The shared core of :func:`supcon` on one batch (anchors = candidates) and across processes
    (local anchors, candidates gathered from every process). Inputs must already be checked and L2-normalised.

    Shapes: anchors [A, D], anchor_labels [A], candidates [C, D], candidate_labels [C],
    self_index [A] (the row of each anchor among the candidates, excluded from its
    denominator); returns [A'] for the A' anchors with at least one positive (may be empty).
    """
    is_self = torch.zeros(anchors.shape[0], candidates.shape[0], dtype=torch.bool, device=anchors.device)
    is_self[torch.arange(anchors.shape[0], device=anchors.device), self_index] = True
    pos_mask = (anchor_labels.unsqueeze(1) == candidate_labels.unsqueeze(0)) & ~is_self
    has_pos = pos_mask.any(dim=1)
    # Anchors without positives are dropped before the log-sum-exps: an all -inf row would
    # give NaN gradients even if its loss were masked out later.
    logits = (anchors[has_pos] @ candidates.t() / temperature).masked_fill(is_self[has_pos], float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos_mask = pos_mask[has_pos]
    n_pos = pos_mask.sum(dim=1).to(log_prob.dtype)
    if variant == "out":
        return -log_prob.masked_fill(~pos_mask, 0.0).sum(dim=1) / n_pos
    return n_pos.log() - torch.logsumexp(log_prob.masked_fill(~pos_mask, float("-inf")), dim=1)


# --------------------------------------------------------------------------- pixel contrast


@_outside_autocast
def pixel_contrast(
    anchors: Tensor,
    anchor_labels: Tensor,
    contrast: Tensor | None = None,
    contrast_labels: Tensor | None = None,
    temperature: float = 0.1,
    *,
    self_index: Tensor | None = None,
) -> Tensor:
    """The supervised pixel-wise contrastive loss of Wang et al. [13] (eq. 3): each positive against the negatives.

    Shapes: anchors [N, D] (pixel embeddings) with anchor_labels [N] (their classes); contrast [M, D] with
    contrast_labels [M], the pixels (and region means) they are contrasted with; returns a scalar.

    In words, with s cosine similarity, P_i the contrast rows of anchor i's class and N_i those of the
    other classes:

        l_i = 1/|P_i| sum_{p in P_i} -log( exp(s_ip / t) / (exp(s_ip / t) + sum_{n in N_i} exp(s_in / t)) ),
        L = mean of l_i over the anchors that have at least one positive.

    Each positive has its own denominator, itself plus the negatives: unlike SupCon's [8] (eq. 2), whose
    denominator holds every candidate, the positives of an anchor do not compete with each other, so
    l_i can reach 0. All embeddings equal gives l_i = log(1 + |N_i|).

    An anchor is never its own positive. ``contrast=None`` (or ``contrast`` the very tensor ``anchors``,
    without ``self_index``) contrasts the anchors with each other, anchor i's own row excluded. When ``contrast`` holds the
    anchors among other rows (pixel contrast's [anchors; memory]), ``self_index`` [N] names the row of
    each anchor in it (-1: not there), excluded likewise; None: no row of ``contrast`` is an anchor.

    Anchors without a positive (their class nowhere else in ``contrast``) are skipped; when no anchor
    has one the loss is 0, still in the graph (a batch may hold a class once and the memory none yet).
    An anchor without negatives has l_i = 0. Gradients reach ``anchors`` and ``contrast`` (pass a
    memory detached). Computed in log space (softplus of log-sum-exps), float32 at least.
    """
    check_tensor("anchors", anchors, "[N, D]")
    n, d = anchors.shape
    if n < 1:
        raise ValueError(f"pixel_contrast needs at least one anchor (N >= 1), got anchors of shape {shape_of(anchors)}")
    check_labels(anchor_labels, n, "anchor")
    t = check_number("temperature", temperature)
    if contrast is anchors and self_index is None:  # the very same tensor: the anchors with each other
        if contrast_labels is not None:
            check_labels(contrast_labels, n, "row of contrast")
            if not torch.equal(contrast_labels.to(anchor_labels.device), anchor_labels):
                raise ValueError("contrast is anchors, so contrast_labels must equal anchor_labels")
        contrast, contrast_labels = None, None
    if contrast is None:
        if contrast_labels is not None:
            raise ValueError("contrast_labels needs contrast: contrast=None contrasts the anchors with each other")
        if self_index is not None:
            raise ValueError("self_index needs a separate contrast: contrast=None already excludes each anchor itself")
        contrast, contrast_labels = anchors, anchor_labels
        self_index = torch.arange(n, device=anchors.device)
    check_tensor("contrast", contrast, f"[M, {d}]")
    m = contrast.shape[0]
    if contrast.shape[1] != d or m < 1:
        raise ValueError(f"contrast must be [M, {d}] with M >= 1 to match anchors {shape_of(anchors)}, "
                         f"got {shape_of(contrast)}")
    if contrast_labels is None:
        raise ValueError(f"contrast needs contrast_labels [{m}], the class of each row")
    check_labels(contrast_labels, m, "row of contrast")
    anchor_labels, contrast_labels = anchor_labels.to(anchors.device), contrast_labels.to(anchors.device)
    is_self = _self_pairs(self_index, anchor_labels, contrast_labels)
    a, c = _normalized(anchors, contrast)
    same = anchor_labels.unsqueeze(1) == contrast_labels.unsqueeze(0)
    positive = same & ~is_self
    has_positive = positive.any(dim=1)
    if not bool(has_positive.any()):
        return (a.sum() + c.sum()) * 0.0
    # Only anchors with a positive enter the log-sum-exps: a row without any would be all -inf.
    a, positive, negative = a[has_positive], positive[has_positive], ~same[has_positive]
    logits = (a / t) @ c.t()  # [N', M]; dividing the [N', D] factor costs less than the [N', M] product
    # log sum_n exp(s_in / t) per anchor; -inf without negatives, and then its terms below are 0
    log_negatives = torch.logsumexp(logits.masked_fill(~negative, float("-inf")), dim=1)
    # One term per (anchor, positive) pair, not per matrix entry: with K classes, ~1/K of them.
    anchor, row = positive.nonzero(as_tuple=True)
    # -log(e^l / (e^l + e^L)) = log(1 + e^(L - l)): softplus keeps small terms exact, where
    # logaddexp(l, L) - l would subtract two numbers of size 1/t.
    terms = F.softplus(log_negatives[anchor] - logits[anchor, row])
    per_positive = positive.sum(dim=1).to(terms.dtype)[anchor]  # |P_i| of each pair's anchor
    return (terms / per_positive).sum() / a.shape[0]


def _self_pairs(self_index: Tensor | None, anchor_labels: Tensor, contrast_labels: Tensor) -> Tensor:
    """Checked ``self_index`` [N] (-1: absent) as a bool matrix [N, M], True at (anchor, its own row)."""
    n, m = anchor_labels.shape[0], contrast_labels.shape[0]
    is_self = torch.zeros(n, m, dtype=torch.bool, device=anchor_labels.device)
    if self_index is None:
        return is_self
    if not isinstance(self_index, Tensor) or self_index.shape != (n,) or self_index.is_floating_point():
        got = f"{self_index.dtype} {shape_of(self_index)}" if isinstance(self_index, Tensor) else type(self_index).__name__
        raise ValueError(f"self_index must be an integer tensor [{n}] (each anchor's row in contrast, -1 for none), "
                         f"got {got}")
    self_index = self_index.to(anchor_labels.device)
    present = self_index >= 0
    if bool((self_index < -1).any()) or bool((self_index >= m).any()):
        raise ValueError(f"self_index must hold rows of contrast in [0, {m}) or -1, got values "
                         f"{int(self_index.min())}..{int(self_index.max())}")
    rows = torch.arange(n, device=anchor_labels.device)[present]
    if not torch.equal(contrast_labels[self_index[present]], anchor_labels[present]):
        raise ValueError("self_index must point at each anchor's own row of contrast, which has the anchor's "
                         "label; some rows it names have another label")
    is_self[rows, self_index[present]] = True
    return is_self


# --------------------------------------------------------------------------- hypersphere metrics


@_outside_autocast
@_outside_autocast
def contrastive_clustering(features: Tensor, labels: Tensor, prototypes: Tensor, margin: float = 10.0, *,
                           valid: Tensor | None = None) -> Tensor:
    """ORE's contrastive clustering [14] (eqs. 1-2): pull each feature to its class prototype, push it from the others.

    Shapes: features [N, D] (region features, not normalised), labels [N] int64 in [0, C), prototypes [C, D]
    ("unknown" is one of the C classes); returns a scalar. With D the Euclidean distance,

        l(f_c) = sum_i  D(p_i, f_c)                  if i = c,
                        max(0, margin - D(p_i, f_c))  otherwise,

    averaged over the N features: the loss is 0 once every feature sits on its prototype and at least
    ``margin`` from every other. ``valid`` [C] bool leaves out the prototypes not yet computed (a class
    the feature store has not seen): their terms are 0 for every feature. Gradients reach ``features``
    and ``prototypes`` (ORE's prototypes are momentum averages of stored features: pass them detached).

    This is the paper's Euclidean form; the authors' code computes ``torch.cdist(..., p=margin)`` (a
    10-norm) inside ``nn.HingeEmbeddingLoss(2)``.
    """
    check_tensor("features", features, "[N, D]")
    check_tensor("prototypes", prototypes, "[C, D]")
    n, d = features.shape
    c = prototypes.shape[0]
    if prototypes.shape[1] != d or c < 1:
        raise ValueError(f"prototypes must be [C, {d}] with C >= 1 (one per class, D as the features'), got "
                         f"{shape_of(prototypes)} for features {shape_of(features)}")
    check_labels(labels, n, "feature", num_classes=c)
    margin = check_number("margin", margin)
    if valid is None:
        valid = torch.ones(c, dtype=torch.bool, device=prototypes.device)
    elif not isinstance(valid, Tensor) or valid.dtype != torch.bool or valid.shape != (c,):
        got = f"{valid.dtype} {shape_of(valid)}" if isinstance(valid, Tensor) else type(valid).__name__
        raise ValueError(f"valid must be a bool tensor [{c}], one flag per prototype, got {got}")
    if n == 0:
        return features.sum() * 0.0
    dtype = torch.promote_types(features.dtype, torch.float32)
    distances = torch.cdist(features.to(dtype), prototypes.to(dtype))  # [N, C]
    own = F.one_hot(labels.long(), c).bool()
    terms = torch.where(own, distances, (margin - distances).clamp_min(0.0))
    return (terms * valid.to(dtype)).sum(dim=1).mean()


def bilinear_info_nce(queries: Tensor, keys: Tensor, weight: Tensor, scale: float = 1.0) -> Tensor:
    """CURL's contrastive loss [15]: InfoNCE [2] with the bilinear similarity q_i^T W k_j, the batch's other keys
    as the negatives.

    Shapes: queries, keys [N, D] (row i of each from two crops of the same observation), weight W [D, D]; returns
    a scalar, with s the ``scale`` (> 0),

        l_i = -log( exp(s q_i^T W k_i) / sum_j exp(s q_i^T W k_j) ),   L = mean over the N queries.

    Nothing is normalised and there is no temperature: W learns the scale. CURL's keys come from the momentum
    encoder: pass them detached. Each row's maximum is subtracted before the softmax, as CURL's code does (the
    loss is unchanged; exp cannot overflow). W = 0 gives log N. CURL's code for Atari (on Rainbow) multiplies
    the logits by s = 0.1, its code for the control suite does not (s = 1).
    """
    check_tensor("queries", queries, "[N, D]")
    check_tensor("keys", keys, "[N, D]")
    if queries.shape != keys.shape or queries.shape[0] < 2:
        raise ValueError(f"queries and keys must both be [N, D] with N >= 2 (the batch's other keys are the "
                         f"negatives), got {shape_of(queries)} and {shape_of(keys)}")
    d = queries.shape[1]
    if not isinstance(weight, Tensor) or weight.shape != (d, d):
        got = shape_of(weight) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a [{d}, {d}] tensor (the bilinear W), got {got}")
    scale = check_number("scale", scale)
    dtype = torch.promote_types(queries.dtype, torch.float32)
    logits = queries.to(dtype) @ weight.to(dtype) @ keys.to(dtype).t()  # [N, N]
    logits = scale * (logits - logits.amax(dim=1, keepdim=True).detach())
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def swapped_prediction(scores: list[Tensor], codes: list[Tensor], temperature: float = 0.1) -> Tensor:
    """SwAV's swapped prediction [10] (eq. 1-2): every crop predicts the codes of the other crops.

    With p_v = softmax(scores[v] / t) the prototype probabilities of crop v, the loss is the cross-entropy
    -sum_k codes[i]_k log p_v,k averaged over the samples, over the crops v != i and over the coded crops i
    (those with codes: the large crops in [10]), as [10]'s code averages them. Unlike the losses above it
    takes scores, not embeddings: the method normalises z and the prototypes before z^T C.

    Args:
        scores: V >= 2 tensors [B, K], the scores z_v^T C of every crop.
        codes: 1 <= n <= V tensors [B, K], the codes of crops 0..n-1 (rows sum to 1; no gradient needed).
        temperature: t > 0 of the prediction softmax (0.1 in [10]).

    Returns:
        scalar loss (float32 for half-precision scores).
    """
    t = check_number("temperature", temperature)
    if not isinstance(scores, (list, tuple)) or len(scores) < 2:
        raise ValueError(f"scores must be a list of at least 2 crops' [B, K] scores, got {shape_of(scores)}")
    if not isinstance(codes, (list, tuple)) or not 1 <= len(codes) <= len(scores):
        raise ValueError(f"codes must be a list of 1 to {len(scores)} [B, K] tensors (one per coded crop), "
                         f"got {shape_of(codes)}")
    shapes = {tuple(x.shape) if isinstance(x, Tensor) else None for x in [*scores, *codes]}
    if len(shapes) != 1 or None in shapes or len(next(iter(shapes))) != 2:
        raise ValueError(f"every score and code must be a tensor of one shape [B, K], got shapes "
                         f"{sorted(str(s) for s in shapes)}")
    dtype = torch.float64 if any(s.dtype == torch.float64 for s in scores) else torch.float32
    log_p = [F.log_softmax(s.to(dtype) / t, dim=1) for s in scores]
    total = scores[0].new_zeros((), dtype=dtype)
    for i, q in enumerate(codes):
        others = [v for v in range(len(scores)) if v != i]
        total = total + sum(-(q.detach().to(dtype) * log_p[v]).sum(dim=1).mean() for v in others) / len(others)
    return total / len(codes)


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> Tensor:
    """Alignment of positive pairs (Wang & Isola [9]): lower is better.

    Shapes: z1, z2 [N, D], row i of each a positive pair; returns a scalar.
    In words: the mean over pairs of |f(x) - f(y)|^alpha on L2-normalised embeddings
    (0 when both views map to the same point, 2^alpha at most).
    """
    check_tensor("z1", z1, "[N, D]")
    check_tensor("z2", z2, "[N, D]")
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape [N, D], got {shape_of(z1)} and {shape_of(z2)}")
    if z1.shape[0] < 1:
        raise ValueError(f"alignment needs at least one pair (N >= 1), got shape {shape_of(z1)}")
    a = check_number("alpha", alpha)
    x, y = _normalized(z1, z2)
    return (x - y).norm(dim=1).pow(a).mean()


@_outside_autocast
def uniformity(z: Tensor, t: float = 2.0) -> Tensor:
    """Uniformity on the hypersphere (Wang & Isola [9]): lower is more uniform.

    Shapes: z [N, D]; returns a scalar.
    In words: the log of the mean, over all pairs i < j, of the Gaussian potential
    exp(-t |f(x_i) - f(x_j)|^2) on L2-normalised embeddings. It is 0 for a collapsed batch
    (all points equal) and approaches its minimum as the points spread evenly over the sphere.
    """
    check_tensor("z", z, "[N, D]")
    if z.shape[0] < 2:
        raise ValueError(f"uniformity needs at least 2 embeddings (N >= 2), got shape {shape_of(z)}")
    scale = check_number("t", t)
    (x,) = _normalized(z)
    i, j = torch.triu_indices(x.shape[0], x.shape[0], offset=1, device=x.device)
    # |a - b|^2 = 2 - 2 cos: unlike pdist, its gradient stays finite for coincident points.
    sq_dist = (2.0 - 2.0 * (x[i] * x[j]).sum(dim=1)).clamp(min=0.0)
    return torch.logsumexp(-scale * sq_dist, dim=0) - math.log(sq_dist.numel())


# --------------------------------------------------------------------------- modules


class NTXentLoss(nn.Module):
    """`nt_xent` as a module: `NTXentLoss(temperature)(z1, z2)`, z1, z2 [N, D] -> scalar. [1] Chen et al., SimCLR, 2020."""

    def __init__(self, temperature: float = 0.5, *, gather_distributed: bool = False):
        super().__init__()
        self.temperature = check_number("temperature", temperature)
        self.gather_distributed = gather_distributed

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return nt_xent(z1, z2, self.temperature, gather_distributed=self.gather_distributed)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"


class SupConLoss(nn.Module):
    """`supcon` as a module: `SupConLoss(temperature, variant)(z, labels=None)`, z [N, V, D] or [M, D] -> scalar.

    [8] Khosla et al., SupCon, 2020.
    """

    def __init__(self, temperature: float = 0.1, variant: str = "out", *, gather_distributed: bool = False):
        super().__init__()
        self.temperature = check_number("temperature", temperature)
        check_choice("variant", variant, _SUPCON_VARIANTS)
        self.variant = variant
        self.gather_distributed = gather_distributed

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return supcon(z, labels, self.temperature, self.variant, gather_distributed=self.gather_distributed)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, variant={self.variant!r}, gather_distributed={self.gather_distributed}"
