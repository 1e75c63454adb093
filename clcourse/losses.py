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
"""

from __future__ import annotations

import functools
import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = [
    "nt_xent",
    "info_nce",
    "triplet_margin",
    "mine_triplets",
    "supcon",
    "supcon_anchor_losses",
    "alignment",
    "uniformity",
    "NTXentLoss",
    "SupConLoss",
]

_DISTANCES = ("euclidean", "cosine")
_STRATEGIES = ("all", "hard", "semi-hard")
_SUPCON_VARIANTS = ("out", "in")


# --------------------------------------------------------------------------- input checks


def _shape(x: Tensor) -> str:
    return str(list(x.shape))


def _rank(x) -> int | None:
    return x.dim() if isinstance(x, Tensor) else None


def _check_tensor(name: str, x, layout: str, accepted: str | None = None) -> None:
    """Check that `x` is a floating tensor with features whose rank matches `layout`, e.g. "[N, D]".

    `accepted` describes every layout the caller takes, for the message when the rank is wrong.
    """
    ndim = layout.count(",") + 1
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {accepted or layout}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got {x.dtype}; embeddings are real vectors, cast with .float()"
        )
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {accepted or f'{ndim}-D {layout}'}, got shape {_shape(x)}")
    if x.shape[-1] == 0:
        raise ValueError(f"{name} must have at least one feature (D >= 1), got shape {_shape(x)}")


def _check_labels(labels, n: int, what: str) -> None:
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of shape [{n}], got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor (class ids), got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape [{n}] (one per {what}), got {_shape(labels)}")


def _check_number(name: str, value, *, minimum: float = 0.0, strict: bool = True) -> float:
    """Return `value` as a float after checking it is finite and > minimum (>= if not strict)."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    ok = value > minimum if strict else value >= minimum
    if not (ok and math.isfinite(value)):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {relation} {minimum:g}, got {value}")
    return value


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _outside_autocast(loss_fn):
    """Run a loss with autocast off on its inputs' device, so its matmuls really are float32.

    Without this, autocast (the training loop's mixed precision) casts the float32 inputs of
    the similarity matmuls back to bfloat16 / float16, undoing the promotion that the module
    docstring promises.
    """

    @functools.wraps(loss_fn)
    def wrapper(*args, **kwargs):
        first = next((a for a in args if isinstance(a, Tensor)), None)
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
def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR [1].

    Shapes: z1, z2 [N, D], the projections of two views of the same N samples (row i of z1 and
    row i of z2 are a positive pair); returns a scalar.

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
    _check_tensor("z1", z1, "[N, D]")
    _check_tensor("z2", z2, "[N, D]")
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape [N, D], got {_shape(z1)} and {_shape(z2)}")
    if z1.shape[0] < 2:
        raise ValueError(
            f"nt_xent needs at least 2 pairs (N >= 2) so that every anchor has a negative, got N = {z1.shape[0]}"
        )
    t = _check_number("temperature", temperature)
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
    _check_tensor("query", query, "[N, D]")
    _check_tensor("positive", positive, "[N, D]")
    if query.shape != positive.shape:
        raise ValueError(
            f"query and positive must have the same shape [N, D], got {_shape(query)} and {_shape(positive)}"
        )
    if query.shape[0] < 1:
        raise ValueError(f"info_nce needs at least one query (N >= 1), got shape {_shape(query)}")
    n, d = query.shape
    expected = f"[K, {d}] (shared) or [{n}, K, {d}] (per query)"
    _check_tensor("negatives", negatives, "[N, K, D]" if _rank(negatives) == 3 else "[K, D]", expected)
    if negatives.shape[-1] != d or (negatives.dim() == 3 and negatives.shape[0] != n):
        raise ValueError(f"negatives must have shape {expected} to match query {_shape(query)}, got {_shape(negatives)}")
    k = negatives.shape[-2]
    if k < 1:
        raise ValueError(f"info_nce needs at least one negative (K >= 1), got negatives of shape {_shape(negatives)}")
    t = _check_number("temperature", temperature)
    beta = _check_number("hard_negative_beta", hard_negative_beta, strict=False)
    tau_plus = _check_number("debiased_tau_plus", debiased_tau_plus, strict=False)
    if tau_plus >= 1:
        raise ValueError(f"debiased_tau_plus is a probability in [0, 1), got {tau_plus}")

    q, p, neg = _normalized(query, positive, negatives)
    pos_logit = (q * p).sum(dim=1) / t  # [N]
    if neg.dim() == 2:
        neg_logits = q @ neg.t() / t  # [N, K]
    else:
        neg_logits = torch.bmm(neg, q.unsqueeze(2)).squeeze(2) / t  # [N, K]

    if beta == 0.0 and tau_plus == 0.0:
        logits = torch.cat([pos_logit.unsqueeze(1), neg_logits], dim=1)
        return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=logits.device))

    # Everything below is a log of a positive quantity, so terms can be compared and shifted
    # before exponentiating: at t = 0.01 exp(s / t) reaches e^100, beyond float32.
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
    return loss.mean()


# --------------------------------------------------------------------------- triplets


def _paired_distance(x: Tensor, y: Tensor, distance: str) -> Tensor:
    """Row-wise distance between unit vectors x[i] and y[i]."""
    if distance == "euclidean":
        return (x - y).norm(dim=1)
    return 1.0 - (x * y).sum(dim=1)


def _distance_matrix(x: Tensor, distance: str) -> Tensor:
    """All pairwise distances between the unit rows of x, [N, N]."""
    cos = x @ x.t()
    if distance == "euclidean":
        return (2.0 - 2.0 * cos).clamp_(min=0.0).sqrt_()  # |a - b|^2 = 2 - 2 cos for unit vectors
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
        _check_tensor(name, x, "[T, D]")
    if not anchor.shape == positive.shape == negative.shape:
        raise ValueError(
            "anchor, positive and negative must have the same shape [T, D], got "
            f"{_shape(anchor)}, {_shape(positive)} and {_shape(negative)}"
        )
    m = _check_number("margin", margin, strict=False)
    _check_choice("distance", distance, _DISTANCES)
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
      order; there are O(N^3) of them, so keep N in the hundreds. Averaging over all of them
      lets the many easy triplets dilute the loss (Hermans et al. [7] average only over the
      non-zero ones, "batch all").
    - "hard": batch-hard [7]: one triplet per anchor, with its farthest positive and its nearest
      negative; anchors without a positive or without a negative are skipped.
    - "semi-hard" (FaceNet [6]): for every positive pair (a, p), the nearest negative that is
      farther than the positive but inside the margin, d(a, p) < d(a, n) < d(a, p) + margin.
      Fallback when there is none: if some negatives are hard, d(a, n) <= d(a, p), take the
      least hard of them, the farthest (TensorFlow Addons' fallback when no negative is farther
      than the positive; it avoids the collapse FaceNet saw with the hardest negatives);
      otherwise every negative is beyond the margin, the pair would cost nothing and is dropped.

    Ties go to the lowest index. No gradient flows through mining.
    Cites: [6] Schroff et al., FaceNet, 2015; [7] Hermans et al., 2017.
    """
    _check_tensor("embeddings", embeddings, "[N, D]")
    n = embeddings.shape[0]
    if n < 2:
        raise ValueError(f"mine_triplets needs at least 2 embeddings (N >= 2), got shape {_shape(embeddings)}")
    _check_labels(labels, n, "embedding")
    _check_choice("strategy", strategy, _STRATEGIES)
    m = _check_number("margin", margin, strict=False)
    _check_choice("distance", distance, _DISTANCES)

    labels = labels.to(embeddings.device)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    pos_mask = same & ~eye
    neg_mask = ~same

    if strategy == "all":
        valid = pos_mask.unsqueeze(2) & neg_mask.unsqueeze(1)  # [a, p, n]
        return valid.nonzero(as_tuple=True)

    (x,) = _normalized(embeddings)
    dist = _distance_matrix(x, distance)
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


# --------------------------------------------------------------------------- SupCon


@_outside_autocast
def supcon(z: Tensor, labels: Tensor | None = None, temperature: float = 0.1, variant: str = "out") -> Tensor:
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
    """
    _check_tensor("z", z, "[N, V, D]" if _rank(z) == 3 else "[M, D]", "[N, V, D] or [M, D]")
    if z.dim() == 3:
        n, v, _ = z.shape
        if labels is None:
            labels = torch.arange(n, device=z.device)
        else:
            _check_labels(labels, n, "sample (z is [N, V, D])")
        # view-major order: row v * N + i is view v of sample i
        flat, flat_labels = z.transpose(0, 1).reshape(n * v, -1), labels.to(z.device).repeat(v)
    else:
        if labels is None:
            raise ValueError(
                f"labels=None (instance discrimination) needs z of shape [N, V, D] so that views of a "
                f"sample can be paired, got flat z of shape {_shape(z)}"
            )
        _check_labels(labels, z.shape[0], "row of z")
        flat, flat_labels = z, labels.to(z.device)
    if flat.shape[0] < 2:
        raise ValueError(f"supcon needs at least 2 embeddings, got z of shape {_shape(z)}")
    t = _check_number("temperature", temperature)
    _check_choice("variant", variant, _SUPCON_VARIANTS)

    (x,) = _normalized(flat)
    m = x.shape[0]
    if not (flat_labels.unsqueeze(0) == flat_labels.unsqueeze(1)).sum() > m:
        raise ValueError(
            "supcon needs at least one anchor with a positive (two embeddings with the same label), "
            f"got {m} embeddings with {m} distinct labels"
        )
    self_index = torch.arange(m, device=x.device)
    return supcon_anchor_losses(x, flat_labels, x, flat_labels, self_index, t, variant).mean()


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

    The shared core of :func:`supcon` (anchors = candidates) and of
    :func:`clcourse.distributed.distributed_supcon` (local anchors, candidates gathered from
    every process). Inputs must already be checked and L2-normalised.

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


# --------------------------------------------------------------------------- hypersphere metrics


@_outside_autocast
def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> Tensor:
    """Alignment of positive pairs (Wang & Isola [9]): lower is better.

    Shapes: z1, z2 [N, D], row i of each a positive pair; returns a scalar.
    In words: the mean over pairs of |f(x) - f(y)|^alpha on L2-normalised embeddings
    (0 when both views map to the same point, 2^alpha at most).
    """
    _check_tensor("z1", z1, "[N, D]")
    _check_tensor("z2", z2, "[N, D]")
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape [N, D], got {_shape(z1)} and {_shape(z2)}")
    if z1.shape[0] < 1:
        raise ValueError(f"alignment needs at least one pair (N >= 1), got shape {_shape(z1)}")
    a = _check_number("alpha", alpha)
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
    _check_tensor("z", z, "[N, D]")
    if z.shape[0] < 2:
        raise ValueError(f"uniformity needs at least 2 embeddings (N >= 2), got shape {_shape(z)}")
    scale = _check_number("t", t)
    (x,) = _normalized(z)
    i, j = torch.triu_indices(x.shape[0], x.shape[0], offset=1, device=x.device)
    # |a - b|^2 = 2 - 2 cos: unlike pdist, its gradient stays finite for coincident points.
    sq_dist = (2.0 - 2.0 * (x[i] * x[j]).sum(dim=1)).clamp(min=0.0)
    return torch.logsumexp(-scale * sq_dist, dim=0) - math.log(sq_dist.numel())


# --------------------------------------------------------------------------- modules


class NTXentLoss(nn.Module):
    """`nt_xent` as a module: `NTXentLoss(temperature)(z1, z2)`, z1, z2 [N, D] -> scalar. [1] Chen et al., SimCLR, 2020."""

    def __init__(self, temperature: float = 0.5):
        super().__init__()
        self.temperature = _check_number("temperature", temperature)

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return nt_xent(z1, z2, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class SupConLoss(nn.Module):
    """`supcon` as a module: `SupConLoss(temperature, variant)(z, labels=None)`, z [N, V, D] or [M, D] -> scalar.

    [8] Khosla et al., SupCon, 2020.
    """

    def __init__(self, temperature: float = 0.1, variant: str = "out"):
        super().__init__()
        self.temperature = _check_number("temperature", temperature)
        _check_choice("variant", variant, _SUPCON_VARIANTS)
        self.variant = variant

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return supcon(z, labels, self.temperature, self.variant)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, variant={self.variant!r}"
