"""Lesson 03 tasks: NT-Xent from scratch, and the temperature that gives the top k candidates a share of the weight."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clcourse import losses
from clcourse.grading.harness import (
    Case,
    Mistake,
    case_seed,
    compare_with_reference,
    keeps_gradient,
)
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
    g = torch.Generator().manual_seed(case_seed(6))

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


@task("03.nt_xent", "NT-Xent (SimCLR's loss) from scratch: 2N anchors, self-similarity masked", 2, answer="nt_xent")
def check_nt_xent(answer) -> None:
    """Compare with clcourse.losses.nt_xent."""
    compare_with_reference(
        answer, _embedding_cases(), losses.nt_xent, _NT_XENT_MISTAKES,
        generic_hint="z = normalize(cat[z1, z2]); logits = z z^T / t with the diagonal at -inf; "
                     "cross-entropy with target i+N (mod 2N) for row i, averaged over the 2N rows.",
        properties=[keeps_gradient],
        error_hints=[(r"Target \d+ is out of bounds", "A target index is past the last column. If you removed the diagonal "
                                       "from each row, the columns right of it moved one to the left: anchor "
                                       "i < N then finds its positive at column i + N - 1.")],
    )


def _share_of_top(similarities: torch.Tensor, k: int, temperature: float) -> float:
    """Softmax weight (over all M candidates) carried by the k most similar ones."""
    weights = (similarities.double() / temperature).softmax(dim=0)
    return float(weights.sort(descending=True).values[:k].sum())


def _temperature_for_share_reference(similarities, k: int, share: float = 0.5) -> float:
    """The temperature t at which the k most similar of M candidates carry ``share`` of softmax(s / t).

    similarities: [M] cosines of one anchor to its candidates; needs k / M < share < 1 and distinct values.
    The share falls monotonically from 1 (t -> 0) to k / M (t -> infinity), so bisection on log t finds t.
    """
    s = torch.as_tensor(similarities, dtype=torch.float64)
    low, high = -12.0, 12.0  # log t
    for _ in range(200):
        middle = (low + high) / 2
        if _share_of_top(s, k, float(torch.tensor(middle).exp())) > share:
            low = middle  # too concentrated: warmer
        else:
            high = middle
    return float(torch.tensor((low + high) / 2).exp())


_SHARE_MISTAKES = [
    Mistake("k was ignored: that temperature gives the single most similar candidate the share. The share of the "
            "k most similar is the sum of their k softmax weights.",
            lambda s, k, share=0.5: _temperature_for_share_reference(s, 1, share)),
    Mistake("The temperature is applied twice (the weights are softmax(s / t^2)): your t is the square root of "
            "the right one. Divide the similarities by t once.",
            lambda s, k, share=0.5: _temperature_for_share_reference(s, k, share) ** 0.5),
    Mistake("The similarities were multiplied by t instead of divided by it: the weights are softmax(s / t), so "
            "a small t sharpens them. Your t is the reciprocal of the right one.",
            lambda s, k, share=0.5: 1 / _temperature_for_share_reference(s, k, share)),
    Mistake("That temperature gives the k most similar candidates 1 - share of the weight: a share that is too "
            "large means the distribution is too sharp, so the temperature must go *up*.",
            lambda s, k, share=0.5: _temperature_for_share_reference(s, k, 1 - share)),
    Mistake("The anchor itself (similarity 1) was counted as a candidate: in NT-Xent an anchor is never its own "
            "candidate, the softmax runs over the M given similarities only.",
            lambda s, k, share=0.5: _temperature_for_share_reference(
                torch.cat([torch.ones(1, dtype=torch.float64), torch.as_tensor(s, dtype=torch.float64)]), k, share)),
]


def _share_cases() -> list[Case]:
    g = torch.Generator().manual_seed(case_seed(33))

    def cosines(m, spread=0.3):
        return (torch.rand(m, generator=g, dtype=torch.float64) * 2 - 1) * spread + 0.2

    return [
        Case("M = 8 candidates, k = 2, share 0.5", (cosines(8), 2, 0.5)),
        Case("M = 254 candidates (a batch of 128 pairs), k = 5, share 0.5", (cosines(254), 5, 0.5)),
        Case("M = 62, k = 1, share 0.9 (one candidate must carry 90%)", (cosines(62, 0.6), 1, 0.9)),
        Case("M = 1000, k = 50, share 0.25", (cosines(1000, 0.8), 50, 0.25)),
        Case("M = 4 similarities given as a list, k = 3, share 0.8", ([0.9, 0.5, 0.1, -0.3], 3, 0.8)),
    ]


@task("03.temperature_for_share", "derive: the temperature at which the k most similar candidates carry a given "
                                  "share of the softmax weight", 2, answer="temperature_for_share")
def check_temperature_for_share(answer) -> None:
    """Compare with a bisection on log t, on similarities the lesson does not print (relative tolerance 1e-4)."""
    compare_with_reference(
        answer, _share_cases(), _temperature_for_share_reference, _SHARE_MISTAKES,
        generic_hint="The share of the k most similar candidates falls steadily from 1 (t -> 0) to k / M (t -> "
                     "infinity): search t, e.g. bisection on log t between 1e-5 and 1e5, until the share equals "
                     "the target.",
        error_hints=[("overflow", "exp(s / t) overflows for small t: use torch.softmax, or subtract the largest "
                                  "logit before exp.")],
        hint_needs_every_case=True,
    )
