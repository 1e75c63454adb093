"""Lesson 03: what the contrastive loss becomes when the number of negatives grows (Wang & Isola [1], Theorem 1).

[1] writes the contrastive loss of an encoder f with M negatives as

    L(f; t, M) = E[ -log( e^{f(x).f(y)/t} / (e^{f(x).f(y)/t} + sum_{i=1..M} e^{f(x_i^-).f(y)/t}) ) ],

over positive pairs (x, y) ~ p_pos and negatives x_1^-..x_M^- drawn i.i.d. from p_data, all features on the
unit sphere, and proves (Theorem 1) that for a fixed t > 0

    lim_{M -> inf} L(f; t, M) - log M = -E[f(x).f(y)] / t  +  E_x[ log E_{x^-}[ e^{f(x^-).f(x)/t} ] ]:

an **alignment** term (lowest when the two views of an image coincide) plus a **uniformity** term (lowest,
when it exists, for a perfectly uniform distribution of features), with a deviation that vanishes as
O(M^{-1/2}). Since ``|u - v|^2 = 2 - 2 u.v`` on the sphere, the same limit reads
``E|f(x) - f(y)|^2 / (2t) + E_x log E_{x^-} exp(-|f(x) - f(x^-)|^2 / (2t))``.

This module checks the theorem on the sphere S^2, where the limit has a closed form. An "image" is a unit
vector c; its views are independent draws from the von Mises-Fisher distribution vMF(c, kappa) around it (the
augmentation). With images uniform on S^2 the views are uniform too, and

    E[x.y] = A(kappa)^2,  A(kappa) = coth(kappa) - 1/kappa  (two independent views of one image),
    E_{x^-} e^{x^-.u/t} = t sinh(1/t)  for every unit u  (x^-.u is uniform on [-1, 1] in 3-D),

so the limit is ``-A(kappa)^2 / t + log(t sinh(1/t))``. With images drawn from K fixed centres (tight
"classes") the inner expectation is still exact (:func:`vmf_log_mean_exp`) and only the outer one is a
Monte-Carlo average.

[1] Wang & Isola, Understanding Contrastive Representation Learning through Alignment and Uniformity on the
    Hypersphere, ICML 2020.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Limit",
    "Sampled",
    "centres_limit",
    "contrastive_loss",
    "loss_minus_log_m",
    "mean_resultant_length",
    "sample_sphere",
    "sample_vmf",
    "uniform_limit",
    "vmf_log_mean_exp",
]

ImageSampler = Callable[[int, torch.Generator], Tensor]


@dataclass(frozen=True)
class Limit:
    """The two terms of Theorem 1's limit of L(f; t, M) - log M [1]; ``total`` is their sum."""

    alignment_term: float  # -E[f(x).f(y)] / t
    uniformity_term: float  # E_x log E_{x^-} e^{f(x^-).f(x)/t}

    @property
    def total(self) -> float:
        return self.alignment_term + self.uniformity_term


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    return t


def _check_kappa(kappa: float) -> float:
    k = float(kappa)
    if not (math.isfinite(k) and k > 0):
        raise ValueError(f"kappa (the vMF concentration) must be a number > 0, got {kappa!r}")
    return k


def _log_sinh(x: Tensor) -> Tensor:
    """log(sinh x) for x > 0 without overflow: x + log(1 - e^{-2x}) - log 2."""
    return x + torch.log(-torch.expm1(-2 * x)) - math.log(2)


def sample_sphere(n: int, dim: int = 3, *, generator: torch.Generator | None = None) -> Tensor:
    """``n`` points uniform on the unit sphere in ``dim`` dimensions: [n, dim] float64 (normalised Gaussians)."""
    if n < 1 or dim < 2:
        raise ValueError(f"need n >= 1 points in dim >= 2 dimensions, got n = {n}, dim = {dim}")
    g = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    return g / g.norm(dim=1, keepdim=True)


def sample_vmf(mean: Tensor, kappa: float, *, generator: torch.Generator | None = None) -> Tensor:
    """One draw from the von Mises-Fisher distribution vMF(mean[i], kappa) on S^2 for every row i.

    Args:
        mean: [n, 3] unit vectors, the modes.
        kappa: concentration > 0 (large: draws close to the mode; the mean cosine to it is
            :func:`mean_resultant_length`).

    Returns:
        [n, 3] float64 unit vectors. In 3-D the cosine w to the mode has the closed-form inverse CDF
        w = 1 + log(u + (1 - u) e^{-2 kappa}) / kappa; the direction around the mode is uniform.
    """
    if mean.ndim != 2 or mean.shape[1] != 3:
        raise ValueError(f"mean must be [n, 3] unit vectors (S^2), got shape {list(mean.shape)}")
    k = _check_kappa(kappa)
    mu = mean.to(torch.float64)
    u = torch.rand(len(mu), generator=generator, dtype=torch.float64)
    w = 1 + torch.log(u + (1 - u) * math.exp(-2 * k)) / k
    v = torch.randn(len(mu), 3, generator=generator, dtype=torch.float64)
    v = v - (v * mu).sum(1, keepdim=True) * mu  # a direction orthogonal to the mode
    v = v / v.norm(dim=1, keepdim=True)
    return w[:, None] * mu + (1 - w * w).clamp(min=0).sqrt()[:, None] * v


def mean_resultant_length(kappa: float) -> float:
    """E[mean . x] for x ~ vMF(mean, kappa) on S^2: A(kappa) = coth(kappa) - 1/kappa."""
    k = _check_kappa(kappa)
    return 1 / math.tanh(k) - 1 / k


def vmf_log_mean_exp(centres: Tensor, kappa: float, anchors: Tensor, temperature: float) -> Tensor:
    """log E_x e^{x.a/t} for x drawn from an equal mixture of vMF(centres[k], kappa) on S^2, exactly.

    Args:
        centres: [K, 3] unit vectors; anchors: [B, 3] unit vectors a.

    Returns:
        [B] float64. For one component, E e^{x.a/t} = (kappa / sinh kappa) (sinh r / r) with
        r = |kappa centre + a / t| (the ratio of vMF normalising constants on S^2).
    """
    if centres.ndim != 2 or centres.shape[1] != 3 or anchors.ndim != 2 or anchors.shape[1] != 3:
        raise ValueError(f"centres must be [K, 3] and anchors [B, 3], got {list(centres.shape)} and {list(anchors.shape)}")
    k, t = _check_kappa(kappa), _check_temperature(temperature)
    r = (k * centres.to(torch.float64)[None] + anchors.to(torch.float64)[:, None] / t).norm(dim=2)  # [B, K]
    small = r < 1e-6
    safe = torch.where(small, torch.ones_like(r), r)
    log_sinhc = torch.where(small, r * r / 6, _log_sinh(safe) - safe.log())  # log(sinh r / r)
    per_centre = math.log(k) - float(_log_sinh(torch.tensor(k, dtype=torch.float64))) + log_sinhc
    return torch.logsumexp(per_centre, dim=1) - math.log(len(centres))


def contrastive_loss(anchors: Tensor, positives: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """Wang & Isola's contrastive loss with M negatives [1, eq. 1], averaged over B anchors.

    Args:
        anchors: [B, D] features f(y); positives: [B, D] features f(x) of their positive pairs.
        negatives: [M, D] features f(x_i^-) shared by every anchor, or [B, M, D], M negatives per anchor.
        temperature: t > 0.

    All features are L2-normalised inside. Returns the scalar mean over anchors of
    ``-log( e^{s_+/t} / (e^{s_+/t} + sum_i e^{s_i/t}) )`` with s_+ = f(x).f(y), s_i = f(x_i^-).f(y).
    NT-Xent is this loss where each of the 2N anchors takes the other 2N - 2 embeddings of the batch
    as its M negatives.
    """
    if anchors.ndim != 2 or positives.shape != anchors.shape:
        raise ValueError(f"anchors and positives must both be [B, D], got {list(anchors.shape)} and {list(positives.shape)}")
    b, d = anchors.shape
    if not (negatives.ndim == 2 and negatives.shape[1] == d) and not (
        negatives.ndim == 3 and negatives.shape[0] == b and negatives.shape[2] == d
    ):
        raise ValueError(f"negatives must be [M, {d}] or [{b}, M, {d}], got {list(negatives.shape)}")
    t = _check_temperature(temperature)
    a = torch.nn.functional.normalize(anchors, dim=-1)
    p = torch.nn.functional.normalize(positives, dim=-1)
    n = torch.nn.functional.normalize(negatives, dim=-1)
    positive = (a * p).sum(-1) / t  # [B]
    negative = (a @ n.T if n.ndim == 2 else torch.einsum("bd,bmd->bm", a, n)) / t  # [B, M]
    logits = torch.cat([positive[:, None], negative], dim=1)
    return (torch.logsumexp(logits, dim=1) - positive).mean()


def uniform_limit(temperature: float, kappa: float) -> Limit:
    """Theorem 1's limit [1] in closed form: images uniform on S^2, two independent vMF(image, kappa) views.

    alignment term -A(kappa)^2 / t (:func:`mean_resultant_length`); uniformity term log(t sinh(1/t)),
    the smallest value the uniformity term can take on S^2 at this t.
    """
    t = _check_temperature(temperature)
    a = mean_resultant_length(kappa)
    uniformity_term = float(_log_sinh(torch.tensor(1 / t, dtype=torch.float64))) + math.log(t)
    return Limit(alignment_term=-a * a / t, uniformity_term=uniformity_term)


def centres_limit(centres: Tensor, temperature: float, kappa: float, *, samples: int = 200_000, seed: int = 0) -> Limit:
    """Theorem 1's limit [1] when every image is one of K fixed ``centres`` [K, 3] (tight classes).

    The views of an image are independent vMF(centre, kappa) draws, so the alignment term is exactly
    -A(kappa)^2 / t, as for :func:`uniform_limit`; the uniformity term's inner expectation is exact
    (:func:`vmf_log_mean_exp`) and its outer one a Monte-Carlo mean over ``samples`` views (its standard
    error is well under 0.001 with the default for K >= 2 at t >= 0.1).
    """
    t = _check_temperature(temperature)
    if centres.ndim != 2 or centres.shape[1] != 3:
        raise ValueError(f"centres must be [K, 3] unit vectors, got shape {list(centres.shape)}")
    generator = torch.Generator().manual_seed(seed)
    c = centres.to(torch.float64)
    views = sample_vmf(c[torch.randint(len(c), (samples,), generator=generator)], kappa, generator=generator)
    uniformity_term = float(torch.cat([vmf_log_mean_exp(c, kappa, chunk, t) for chunk in views.split(50_000)]).mean())
    a = mean_resultant_length(kappa)
    return Limit(alignment_term=-a * a / t, uniformity_term=uniformity_term)


@dataclass(frozen=True)
class Sampled:
    """Monte-Carlo values of L(f; t, M) - log M [1], one per number of negatives, from one set of pairs.

    Attributes:
        ms: the numbers of negatives M.
        values: L - log M for each M.
        alignment_term: -mean f(x).f(y) / t over the sampled positive pairs: the sample's value of the
            limit's alignment term, which does not depend on M (it differs from its expectation
            :attr:`Limit.alignment_term` only by the sampling noise of the pairs).
        anchors: [anchors, 3] the sampled anchors f(y), float64: the limit's uniformity term averaged over
            exactly these anchors takes away the sampling noise of the outer expectation too.
    """

    ms: list[int]
    values: list[float]
    alignment_term: float
    anchors: Tensor


@torch.no_grad()
def loss_minus_log_m(
    sample_images: ImageSampler,
    kappa: float,
    temperature: float,
    ms: Sequence[int],
    *,
    anchors: int = 2048,
    chunk: int = 128,
    seed: int = 0,
) -> Sampled:
    """Monte-Carlo L(f; t, M) - log M [1] for each M of ``ms``, with views vMF(image, kappa) on S^2.

    Args:
        sample_images: ``sample_images(n, generator)`` -> [n, 3] unit vectors, n i.i.d. images.
        kappa: concentration of the views around their image (the augmentation's strength: larger, milder).
        ms: numbers of negatives, each >= 1.
        anchors: positive pairs (x, y) averaged over; the same pairs serve every M (common random numbers).
        chunk: anchors that share one draw of negatives (the expectation is unchanged: each anchor's
            negatives are still i.i.d. views of fresh images, independent of its pair); the negatives for
            M are the first M of one draw of max(ms).
        seed: seeds the images, views and negatives.

    Returns:
        a :class:`Sampled` with L - log M for each M (computed in float32, averaged in float64).
    """
    t = _check_temperature(temperature)
    ms = [int(m) for m in ms]
    if not ms or min(ms) < 1:
        raise ValueError(f"ms must be numbers of negatives >= 1, got {ms}")
    generator = torch.Generator().manual_seed(seed)
    totals = torch.zeros(len(ms), dtype=torch.float64)
    similarity, sampled_anchors = 0.0, []
    for start in range(0, anchors, chunk):
        n = min(chunk, anchors - start)
        images = sample_images(n, generator)
        x, y = sample_vmf(images, kappa, generator=generator), sample_vmf(images, kappa, generator=generator)
        pool = sample_vmf(sample_images(max(ms), generator), kappa, generator=generator).float()
        similarity += float((x * y).sum())
        sampled_anchors.append(y)
        for i, m in enumerate(ms):
            totals[i] += n * float(contrastive_loss(y.float(), x.float(), pool[:m], t))
    values = [float(total / anchors) - math.log(m) for total, m in zip(totals, ms)]
    return Sampled(ms=ms, values=values, alignment_term=-similarity / anchors / t, anchors=torch.cat(sampled_anchors))
