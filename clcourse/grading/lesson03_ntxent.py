"""Lesson 03 tasks: NT-Xent from scratch, and the softmax weights an anchor gives its candidates."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clcourse import losses
from clcourse.grading.harness import Case, Mistake, compare_with_reference, keeps_gradient
from clcourse.grading.registry import task


def _logits(z1, z2, temperature, *, normalize=True, t_power=1, self_fill=float("-inf")):
    """Similarities of the 2N embeddings [view 1; view 2] / t^t_power, the diagonal replaced by self_fill."""
    z = torch.cat([z1, z2])
    if normalize:
        z = F.normalize(z, dim=1)
    sim = z @ z.t() / temperature ** t_power
    if self_fill is None:
        return sim
    eye = torch.eye(len(z), dtype=torch.bool)
    return sim.masked_fill(eye, self_fill)


def _positives(n: int) -> torch.Tensor:
    return torch.cat([torch.arange(n, 2 * n), torch.arange(n)])


def _nt_xent_variant(z1, z2, temperature=0.5, *, targets=None, anchors=None, reduction="mean", **logit_kw):
    n = len(z1)
    logits = _logits(z1, z2, temperature, **logit_kw)
    per_anchor = F.cross_entropy(logits, _positives(n) if targets is None else targets(n), reduction="none")
    if anchors == "first":
        per_anchor = per_anchor[:n]
    return {"mean": per_anchor.mean(), "sum": per_anchor.sum(), "per_pair": per_anchor.sum() / n}[reduction]


def _cross_view_only(z1, z2, temperature=0.5):
    """CLIP's symmetric loss: negatives only from the other view."""
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    logits = a @ b.t() / temperature
    target = torch.arange(len(z1))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


_NT_XENT_MISTAKES = [
    Mistake("The embeddings are not L2-normalised: similarities must be cosines, "
            "z = F.normalize(z, dim=1) before z @ z.T.",
            lambda z1, z2, t=0.5: _nt_xent_variant(z1, z2, t, normalize=False)),
    Mistake("The self-similarity is not masked: an anchor must not be its own candidate, so the diagonal "
            "of the 2N x 2N logits must be -inf before the softmax.",
            lambda z1, z2, t=0.5: _nt_xent_variant(z1, z2, t, self_fill=None)),
    Mistake("The diagonal was masked with 0, but exp(0) = 1 still counts in the denominator: "
            "fill it with -inf (or a very negative number).",
            lambda z1, z2, t=0.5: _nt_xent_variant(z1, z2, t, self_fill=0.0)),
    Mistake("Wrong positive index: the positive of anchor i is its other view, i + N for i < N and "
            "i - N for i >= N.",
            lambda z1, z2, t=0.5: _nt_xent_variant(z1, z2, t, targets=lambda n: torch.arange(2 * n))),
    Mistake("The temperature is applied twice (the logits are divided by t^2): divide the cosine "
            "similarities by t once.",
            lambda z1, z2, t=0.5: _nt_xent_variant(z1, z2, t, t_power=2)),
    Mistake("The temperature is missing: the logits are cos(z_i, z_j) / t.",
            lambda z1, z2, t=0.5: _nt_xent_variant(z1, z2, t, t_power=0)),
    Mistake("Only one direction: the anchors from z1 are there but not those from z2. NT-Xent averages "
            "over all 2N anchors (it is symmetric in the two views).",
            lambda z1, z2, t=0.5: _nt_xent_variant(z1, z2, t, anchors="first")),
    Mistake("Only cross-view negatives (the CLIP loss): in NT-Xent the other embeddings of the same view are "
            "negatives too, every anchor has 2N - 2 of them.",
            _cross_view_only),
    Mistake("The anchor losses are summed: NT-Xent takes their mean over the 2N anchors.",
            lambda z1, z2, t=0.5: _nt_xent_variant(z1, z2, t, reduction="sum")),
    Mistake("Divided by N instead of 2N: there are 2N anchors.",
            lambda z1, z2, t=0.5: _nt_xent_variant(z1, z2, t, reduction="per_pair")),
]


def _embedding_cases() -> list[Case]:
    g = torch.Generator().manual_seed(6)

    def views(n, d, noise=0.5, dtype=torch.float32, scale=1.0):
        base = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
        z1 = base + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
        z2 = base + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
        return z1.to(dtype), z2.to(dtype)

    same = torch.randn(4, 8, generator=g)
    trainable = tuple(z.requires_grad_() for z in views(8, 16))
    return [
        Case("N=8, D=16 random views that require gradients, temperature=0.5", (*trainable, 0.5)),
        Case("N=4, D=8 random views, temperature=0.1", (*views(4, 8), 0.1)),
        Case("N=2 (the smallest batch), temperature=1.0", (*views(2, 5), 1.0)),
        Case("N=6 views with norms around 10 (not unit vectors), temperature=0.2", (*views(6, 8, scale=3.0), 0.2)),
        Case("N=4 identical views z1 == z2, temperature=0.5", (same, same.clone(), 0.5)),
        Case("N=5, float64 embeddings (keep the dtype), temperature=0.3",
             (*views(5, 4, dtype=torch.float64), 0.3)),
    ]


@task("03.nt_xent", "NT-Xent (SimCLR's loss) from scratch: 2N anchors, self-similarity masked", 2)
def check_nt_xent(answer) -> None:
    """Compare with clcourse.losses.nt_xent."""
    compare_with_reference(
        answer, _embedding_cases(), losses.nt_xent, _NT_XENT_MISTAKES,
        generic_hint="z = normalize(cat[z1, z2]); logits = z z^T / t with the diagonal at -inf; "
                     "cross-entropy with target i+N (mod 2N) for row i, averaged over the 2N rows.",
        properties=[keeps_gradient],
        error_hints=[("out of bounds", "A target index is past the last column. If you removed the diagonal "
                                       "from each row, the columns right of it moved one to the left: anchor "
                                       "i < N then finds its positive at column i + N - 1.")],
    )


def _weights_reference(z1, z2, temperature=0.5):
    """Row i: anchor i's softmax over its 2N - 1 candidates (itself excluded, weight 0)."""
    return _logits(z1, z2, temperature).softmax(dim=1)


_WEIGHT_MISTAKES = [
    Mistake("The embeddings are not L2-normalised: the similarities must be cosines.",
            lambda z1, z2, t=0.5: _logits(z1, z2, t, normalize=False).softmax(dim=1)),
    Mistake("The anchor itself is not masked: the diagonal must be -inf before the softmax, so that "
            "each anchor gives weight 0 to itself.",
            lambda z1, z2, t=0.5: _logits(z1, z2, t, self_fill=None).softmax(dim=1)),
    Mistake("The diagonal was masked with 0, but exp(0) = 1 still gets weight: fill it with -inf.",
            lambda z1, z2, t=0.5: _logits(z1, z2, t, self_fill=0.0).softmax(dim=1)),
    Mistake("The softmax runs over the wrong dimension: each row (one anchor) must sum to 1, softmax(dim=1).",
            lambda z1, z2, t=0.5: _logits(z1, z2, t).softmax(dim=0)),
    Mistake("The temperature is missing: the logits are cos / t.",
            lambda z1, z2, t=0.5: _logits(z1, z2, t, t_power=0).softmax(dim=1)),
    Mistake("The similarities were multiplied by t instead of divided by it.",
            lambda z1, z2, t=0.5: _logits(z1, z2, t, t_power=-1).softmax(dim=1)),
    Mistake("The temperature is applied twice (logits divided by t^2).",
            lambda z1, z2, t=0.5: _logits(z1, z2, t, t_power=2).softmax(dim=1)),
]


@task("03.softmax_weights", "the softmax weights each anchor gives its 2N-1 candidates (masked similarity matrix)")
def check_softmax_weights(answer) -> None:
    """Compare with softmax(cos / t) over each row, diagonal excluded (the matrix inside clcourse.losses.nt_xent)."""
    compare_with_reference(
        answer, _embedding_cases(), _weights_reference, _WEIGHT_MISTAKES,
        generic_hint="P = softmax over each row of cos(z_i, z_j) / t, with the diagonal set to -inf first; "
                     "P has shape [2N, 2N], zeros on the diagonal, rows summing to 1.",
    )
