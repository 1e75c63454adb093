"""Lesson 09 tasks: NNCLR's loss with nearest-neighbour positives, and a derivation of how often the support
set still holds an image's own projection from the previous epoch.

[1] Dwibedi et al., With a Little Help from My Friends: Nearest-Neighbor Contrastive Learning of Visual
    Representations (NNCLR), ICCV 2021.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from clcourse.grading.harness import (
    Case,
    Mistake,
    case_seed,
    compare_with_reference,
    keeps_gradient,
)
from clcourse.grading.registry import task
from clcourse.losses import paired_info_nce

# --- 09.nnclr_loss ---------------------------------------------------------------------------


def _neighbours(z, support, pick="max"):
    scores = F.normalize(z.detach(), dim=1) @ support.t()
    return support[scores.argmax(dim=1) if pick == "max" else scores.argmin(dim=1)]


def _cross_entropy(anchors, candidates, t, transposed=False):
    logits = F.normalize(anchors, dim=1) @ F.normalize(candidates, dim=1).t() / t
    target = torch.arange(len(anchors), device=anchors.device)
    return F.cross_entropy(logits.t() if transposed else logits, target)


def _nnclr_reference(z1, z2, p1, p2, support, temperature=0.1):
    """NNCLR's step loss [1] (Alg. 1, eq. 3), as clcourse.methods.NNCLR computes it from its support set."""
    nn1, nn2 = _neighbours(z1, support), _neighbours(z2, support)
    return (paired_info_nce(nn1, p2, temperature) + paired_info_nce(nn2, p1, temperature)) / 2


def _nnclr_variant(z1, z2, p1, p2, support, temperature=0.1, *, positives="neighbours", candidates="predictions",
                   pick="max", directions=2, transposed=False, same_view=False, scale=True):
    t = temperature if scale else 1.0
    if positives == "neighbours":
        a1, a2 = _neighbours(z1, support, pick), _neighbours(z2, support, pick)
    else:
        a1, a2 = z1, z2
    c1, c2 = (p1, p2) if candidates == "predictions" else (z1, z2)
    if same_view:
        c1, c2 = c2, c1
    first = _cross_entropy(a1, c2, t, transposed)
    if directions == 1:
        return first
    return (first + _cross_entropy(a2, c1, t, transposed)) / 2


_NNCLR_MISTAKES = [
    Mistake("The positives are the projections themselves (SimCLR with a predictor): NNCLR's positive for z1_i is "
            "its nearest neighbour in the support set, NN(z1_i) = the row q of `support` with the largest "
            "cosine z1_i . q.",
            lambda *a: _nnclr_variant(*a, positives="projections")),
    Mistake("The candidates are the projections z of the other view: in [1] (Alg. 1) the neighbour of z1_i is "
            "contrasted with the *predictions* p2_k = h(z2_k) of the other view.",
            lambda *a: _nnclr_variant(*a, candidates="projections")),
    Mistake("The farthest row was taken: the neighbour is the support row of *largest* cosine similarity "
            "(argmax of normalize(z) @ support.T), not the smallest.",
            lambda *a: _nnclr_variant(*a, pick="min")),
    Mistake("Only one direction: the loss averages NN(z1) against p2 and NN(z2) against p1.",
            lambda *a: _nnclr_variant(*a, directions=1)),
    Mistake("The softmax runs over the wrong side: eq. 3 of [1] compares one neighbour NN(z1_i) with every "
            "prediction p2_k of the batch (the rows of NN(z1) @ p2.T), not one prediction with every neighbour.",
            lambda *a: _nnclr_variant(*a, transposed=True)),
    Mistake("The neighbour of a view was compared with the prediction of the *same* view: swap them, NN(z1) "
            "against p2 and NN(z2) against p1.",
            lambda *a: _nnclr_variant(*a, same_view=True)),
    Mistake("The temperature is missing: the logits are cos(NN(z1_i), p2_k) / t.",
            lambda *a: _nnclr_variant(*a, scale=False)),
]


def _nnclr_cases() -> list[Case]:
    g = torch.Generator().manual_seed(case_seed(90))

    def batch(b, d, q, dtype=torch.float32, trainable=False):
        z1, z2, p1, p2 = (torch.randn(b, d, generator=g, dtype=dtype) for _ in range(4))
        support = F.normalize(torch.randn(q, d, generator=g, dtype=dtype), dim=1)
        if trainable:
            p1.requires_grad_()
            p2.requires_grad_()
        return z1, z2, p1, p2, support

    z1, z2, p1, p2, _ = batch(4, 6, 1)
    own = F.normalize(torch.cat([z1, z2]), dim=1)  # the support set holds exactly the batch's projections
    return [
        Case("B = 4, D = 6, a support set of 10 unit rows, temperature 0.1", (*batch(4, 6, 10), 0.1)),
        Case("B = 8, D = 5, support set of 32 rows, predictions that require gradients, temperature 0.1",
             (*batch(8, 5, 32, trainable=True), 0.1)),
        Case("B = 4, the support set holds exactly the 8 projections of the batch (normalised), temperature 0.2",
             (z1, z2, p1, p2, own, 0.2)),
        Case("B = 2 (the smallest batch), support set of 6 rows, temperature 0.5", (*batch(2, 4, 6), 0.5)),
        Case("B = 6, D = 8, float64 (keep the dtype), support set of 20 rows, temperature 0.1",
             (*batch(6, 8, 20, torch.float64), 0.1)),
    ]


@task("09.nnclr_loss", "NNCLR's loss: nearest neighbours from the support set as positives, predictions as "
      "candidates, both directions", 2, answer="nnclr_loss")
def check_nnclr_loss(answer) -> None:
    """Compare with clcourse.methods.NNCLR's lookup and clcourse.losses.paired_info_nce."""
    compare_with_reference(
        answer, _nnclr_cases(), _nnclr_reference, _NNCLR_MISTAKES,
        generic_hint="nn1 = support[(normalize(z1) @ support.T).argmax(1)] (and nn2 for z2); then "
                     "(CE(normalize(nn1) @ normalize(p2).T / t, arange(B)) + the same with nn2 and p1) / 2.",
        properties=[keeps_gradient],
    )


# --- 09.own_projection_share -----------------------------------------------------------------


def _own_share_reference(support_size: int, epoch_size: int, batch_size: int) -> float:
    """The share of lookups whose support set still holds the image's own projection from the previous epoch.

    With n = E / B batches per epoch and a support set of m = Q / B batches, updated after each lookup: an
    image in batch i of an epoch was in batch j of the previous one (i, j independent and uniform over
    0 .. n - 1: every epoch is a fresh shuffle); that projection was written n - j + i lookups ago and is still
    there when n - j + i <= m, i.e. j - i >= n - m. Counting the pairs: m (m + 1) / 2 of n^2 when m <= n;
    1 - (2n - m - 1)(2n - m) / (2 n^2) when n <= m < 2n; 1 beyond.
    """
    n, m = epoch_size // batch_size, support_size // batch_size
    if m <= n:
        return m * (m + 1) / (2 * n * n)
    return 1.0 - max(0, 2 * n - m - 1) * max(0, 2 * n - m) / (2 * n * n)


def _own_share_variant(q, e, b, *, kind):
    n, m = e // b, q // b
    return {"continuous": min(1.0, q * q / (2 * e * e)) if q <= e else 1 - (2 * e - q) ** 2 / (2 * e * e),
            "ratio": min(1.0, q / e),
            "half_ratio": min(1.0, q / (2 * e)),
            "uncapped": m * (m + 1) / (2 * n * n),
            "minus_one": m * (m - 1) / (2 * n * n) if m <= n else 1 - (2 * n - m + 1) * (2 * n - m) / (2 * n * n),
            }[kind]


_OWN_SHARE_MISTAKES = [
    Mistake("Q / E is the share of the epoch the support set holds, but the image's old projection is there only "
            "if it was written recently enough: with i its batch now and j its batch one epoch ago, it was written "
            "n - j + i lookups back. Count the pairs (i, j) with n - j + i <= m.",
            lambda q, e, b: _own_share_variant(q, e, b, kind="ratio")),
    Mistake("Q / (2E) is not the share: the pairs (i, j) of batches that keep the old projection, n - j + i <= m, "
            "number m (m + 1) / 2 of n^2 when m <= n, a square in m, not a line.",
            lambda q, e, b: _own_share_variant(q, e, b, kind="half_ratio")),
    Mistake("That is the continuous approximation Q^2 / (2E^2): the support set is written a whole batch at a "
            "time, so count batches (n = E / B, m = Q / B): the pairs with j - i >= n - m are m (m + 1) / 2, "
            "not m^2 / 2.",
            lambda q, e, b: _own_share_variant(q, e, b, kind="continuous")),
    Mistake("A share cannot exceed 1: once the support set holds more than an epoch (m > n), count the pairs "
            "that miss instead, 1 - (2n - m - 1)(2n - m) / (2n^2), and every lookup finds it from m = 2n - 1 on.",
            lambda q, e, b: _own_share_variant(q, e, b, kind="uncapped")),
    Mistake("The pairs with j - i = n - m were left out: the support set is updated after the lookup, so the "
            "projection written exactly m lookups back is still there; the pairs number m (m + 1) / 2, not "
            "m (m - 1) / 2.",
            lambda q, e, b: _own_share_variant(q, e, b, kind="minus_one")),
]


def _own_share_cases() -> list[Case]:
    rng = random.Random(case_seed(91))
    batch = rng.choice([16, 32, 64])
    n = rng.randint(5, 30)
    cases = [
        Case("support 1 batch, epoch 4 batches of 256 (Q = 256, E = 1024, B = 256)", (256, 1024, 256)),
        Case("Q = 512, E = 1024, B = 256 (the quick recipe)", (512, 1024, 256)),
        Case("Q = 1024, E = 1024, B = 256 (the support set holds an epoch)", (1024, 1024, 256)),
        Case("Q = 1536, E = 1024, B = 256", (1536, 1024, 256)),
        Case("Q = 4096, E = 1024, B = 256 (four epochs)", (4096, 1024, 256)),
        Case("Q = 512, E = 1216, B = 64 (lesson 09: 19 batches per epoch)", (512, 1216, 64)),
    ]
    for m in (rng.randint(1, n), rng.randint(n + 1, 2 * n)):
        cases.append(Case(f"Q = {m * batch}, E = {n * batch}, B = {batch}", (m * batch, n * batch, batch)))
    return cases


@task("09.own_projection_share", "derive: how often NNCLR's support set still holds a query's own projection "
      "from the previous epoch", 2, answer="own_projection_share")
def check_own_projection_share(answer) -> None:
    """Compare the learner's formula with the count of batch pairs, on settings the lesson does not print."""
    compare_with_reference(
        answer, _own_share_cases(), _own_share_reference, _OWN_SHARE_MISTAKES,
        generic_hint="Count in batches: n = E / B per epoch, m = Q / B in the support set. The image is in batch i "
                     "now and was in batch j one epoch ago (i, j uniform and independent); its old projection was "
                     "written n - j + i lookups back. Which pairs (i, j) keep it in the support set?",
        hint_needs_every_case=True,  # single numbers coincide by chance on one setting
        autograd=False,
    )
