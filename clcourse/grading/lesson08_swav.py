"""Lesson 08 tasks: SwAV's Sinkhorn-Knopp codes, and a derivation of the loss a collapsed encoder gets.

[1] Caron et al., Unsupervised Learning of Visual Features by Contrasting Cluster Assignments (SwAV),
    NeurIPS 2020.
"""

from __future__ import annotations

import math
import random

import torch

from clcourse.clustering import sinkhorn
from clcourse.grading.harness import Case, Mistake, case_seed, compare_with_reference
from clcourse.grading.registry import task
from clcourse.losses import swapped_prediction

# --- 08.sinkhorn -----------------------------------------------------------------------------


def _sinkhorn_variant(scores, epsilon=0.05, iterations=3, *, scale=lambda e: 1 / e, rows_last=True,
                      columns=True, fixed_iterations=None, rescale=True, transpose=True):
    """[1]'s Algorithm 1 with one detail changed (the mistakes below); the defaults give the right codes."""
    with torch.no_grad():
        q = torch.exp(scores * scale(epsilon)).t()
        q = q / q.sum()
        k, b = q.shape
        for _ in range(iterations if fixed_iterations is None else fixed_iterations):
            if rows_last:
                if columns:
                    q = q / q.sum(dim=1, keepdim=True) / k
                q = q / q.sum(dim=0, keepdim=True) / b
            else:
                q = q / q.sum(dim=0, keepdim=True) / b
                q = q / q.sum(dim=1, keepdim=True) / k
        q = q * b if rescale else q
        return q.t() if transpose else q


_SINKHORN_MISTAKES = [
    Mistake("The normalisations are in the wrong order: the samples (each sample's total = 1 / B) must come "
            "last in every iteration, so that each row of the codes sums to exactly 1 after the final "
            "rescaling; the prototypes' totals are only close to B / K after a few iterations.",
            lambda s, e=0.05, n=3: _sinkhorn_variant(s, e, n, rows_last=False)),
    Mistake("Epsilon is missing: the codes start from exp(scores / epsilon); without the division they are far "
            "too flat (epsilon = 0.05 multiplies the scores by 20).",
            lambda s, e=0.05, n=3: _sinkhorn_variant(s, e, n, scale=lambda e: 1.0)),
    Mistake("The scores are multiplied by epsilon: the codes start from exp(scores / epsilon), divided.",
            lambda s, e=0.05, n=3: _sinkhorn_variant(s, e, n, scale=lambda e: e)),
    Mistake("Only the samples are normalised: that is softmax(scores / epsilon) row by row, codes without "
            "the equipartition constraint. Every iteration first makes each prototype's total 1 / K of the "
            "mass, then each sample's 1 / B.",
            lambda s, e=0.05, n=3: _sinkhorn_variant(s, e, n, columns=False)),
    Mistake("The codes are transposed: return [B, K], one row per sample (the algorithm works on the [K, B] "
            "transpose; transpose back at the end).",
            lambda s, e=0.05, n=3: _sinkhorn_variant(s, e, n, transpose=False)),
    Mistake("The final rescaling is missing: after the last normalisation each sample holds 1 / B of the "
            "mass; multiply by B so that each row of the codes sums to 1.",
            lambda s, e=0.05, n=3: _sinkhorn_variant(s, e, n, rescale=False)),
    Mistake("The number of iterations is ignored (always 3): run `iterations` pairs of normalisations.",
            lambda s, e=0.05, n=3: _sinkhorn_variant(s, e, n, fixed_iterations=3)),
    Mistake("One pair of normalisations too few: `for _ in range(iterations)`, each iteration normalising the "
            "prototypes, then the samples.",
            lambda s, e=0.05, n=3: _sinkhorn_variant(s, e, n, fixed_iterations=n - 1)),
    Mistake("One pair of normalisations too many: `for _ in range(iterations)`, each iteration normalising the "
            "prototypes, then the samples.",
            lambda s, e=0.05, n=3: _sinkhorn_variant(s, e, n, fixed_iterations=n + 1)),
]


def _codes_are_targets(got, args, case: Case):
    """The codes carry no gradient: they are targets, computed under torch.no_grad()."""
    if isinstance(got, torch.Tensor) and got.requires_grad:
        return ("the codes require gradients",
                "The codes are targets, like labels: compute them under torch.no_grad() (or from "
                "scores.detach()), so that no gradient flows through the Sinkhorn iterations [1].")
    return None


def _sinkhorn_cases() -> list[Case]:
    g = torch.Generator().manual_seed(case_seed(80))

    def cosines(b, k, dtype=torch.float32):
        z = torch.nn.functional.normalize(torch.randn(b, 8, generator=g, dtype=torch.float64), dim=1)
        c = torch.nn.functional.normalize(torch.randn(k, 8, generator=g, dtype=torch.float64), dim=1)
        return (z @ c.t()).to(dtype)

    skewed = 0.3 * torch.rand(12, 4, generator=g)
    skewed[:, 0] += 0.5
    trainable = cosines(8, 5).requires_grad_()
    return [
        Case("scores [4, 3] (4 samples, 3 prototypes), epsilon=0.05, iterations=3", (cosines(4, 3), 0.05, 3)),
        Case("scores [12, 4] where every sample prefers prototype 0, epsilon=0.05, iterations=3",
             (skewed, 0.05, 3)),
        Case("scores [6, 10] (more prototypes than samples), epsilon=0.1, iterations=1", (cosines(6, 10), 0.1, 1)),
        Case("scores [16, 5], epsilon=0.5, iterations=10", (cosines(16, 5), 0.5, 10)),
        Case("scores [8, 5] that require gradients (they come from the network), epsilon=0.05, iterations=3",
             (trainable, 0.05, 3)),
        Case("scores [10, 4] in float64 (keep the dtype), epsilon=0.2, iterations=5",
             (cosines(10, 4, torch.float64), 0.2, 5)),
        Case("scores [7, 3], epsilon=0.05, iterations=2", (cosines(7, 3), 0.05, 2)),
    ]


def _sinkhorn_reference(scores, epsilon=0.05, iterations=3):
    """clcourse.clustering.sinkhorn: [1]'s Algorithm 1, computed in the log domain."""
    return sinkhorn(scores.detach(), epsilon, iterations)


@task("08.sinkhorn", "SwAV's codes by Sinkhorn-Knopp: equal shares for the prototypes, rows summing to 1", 2,
      answer="sinkhorn")
def check_sinkhorn(answer) -> None:
    """Compare with clcourse.clustering.sinkhorn on random and skewed scores."""
    compare_with_reference(
        answer, _sinkhorn_cases(), _sinkhorn_reference, _SINKHORN_MISTAKES,
        generic_hint="q = exp(scores / epsilon).t(), divided by its sum; then `iterations` times: divide each row "
                     "of q (a prototype) by its sum and by K, then each column (a sample) by its sum and by B; "
                     "return (q * B).t().",
        properties=[_codes_are_targets],
        error_hints=[(r"inf|nan", "exp(scores / epsilon) overflowed: subtract each row's maximum from scores / "
                                  "epsilon before exp (softmax does it for you), or work with logsumexp.")],
    )


# --- 08.collapsed_loss -----------------------------------------------------------------------


def _collapsed_reference(scores, temperature, epsilon, equipartition):
    """SwAV's loss [1] (two views, clcourse.losses.swapped_prediction) for a batch whose every crop has ``scores``.

    Computed the way the method computes it, on a batch of 8 identical rows: with equipartition the codes are
    Sinkhorn's (uniform, 1 / K each: identical rows can only share the prototypes equally), without it
    softmax(scores / epsilon). The closed forms the learner derives are logsumexp(s / t) - mean(s) / t and
    the cross-entropy of softmax(s / epsilon) against softmax(s / t).
    """
    row = torch.as_tensor(scores, dtype=torch.float64)
    batch = row.expand(8, -1).clone()
    codes = sinkhorn(batch, epsilon, 3) if equipartition else torch.softmax(batch / epsilon, dim=1)
    return float(swapped_prediction([batch, batch], [codes, codes], temperature))


def _collapsed_variant(scores, temperature, epsilon, equipartition, *, codes="right", temp=True, sign=1.0,
                       reduce="mean", factor=1.0):
    s = torch.as_tensor(scores, dtype=torch.float64)
    k = s.numel()
    log_p = torch.log_softmax(s / temperature if temp else s, dim=0)
    if codes == "right":
        q = torch.full_like(s, 1 / k) if equipartition else torch.softmax(s / epsilon, dim=0)
    elif codes == "softmax":
        q = torch.softmax(s / epsilon, dim=0)
    elif codes == "prediction":
        q = torch.full_like(s, 1 / k) if equipartition else log_p.exp()
    elif codes == "one_hot":
        q = torch.full_like(s, 1 / k) if equipartition else torch.nn.functional.one_hot(s.argmax(), k).double()
    elif codes == "log_k":
        return math.log(k) if equipartition else float(-(torch.softmax(s / epsilon, dim=0) * log_p).sum())
    loss = -log_p.sum() if reduce == "sum" and equipartition else -(q * log_p).sum()
    return factor * sign * float(loss)


_COLLAPSED_MISTAKES = [
    Mistake("log K is the smallest the loss with equipartition can be, reached only when every prototype scores "
            "the same: for scores s the uniform codes 1 / K meet the prediction softmax(s / t), and the loss is "
            "-mean_k log softmax(s / t)_k = logsumexp(s / t) - mean(s) / t.",
            lambda s, t, e, eq: _collapsed_variant(s, t, e, eq, codes="log_k")),
    Mistake("With equipartition the codes of a collapsed batch are not softmax(s / epsilon): every row of the "
            "batch is the same, and the prototypes' totals must be equal, so Sinkhorn gives every crop the "
            "uniform code 1 / K, whatever the scores.",
            lambda s, t, e, eq: _collapsed_variant(s, t, e, eq, codes="softmax")),
    Mistake("The temperature is missing from the prediction: p = softmax(s / t).",
            lambda s, t, e, eq: _collapsed_variant(s, t, e, eq, temp=False)),
    Mistake("Without equipartition the codes are softmax(s / epsilon), not the prediction softmax(s / t): the "
            "codes and the prediction have different sharpness (epsilon 0.05 against t 0.1 in [1]).",
            lambda s, t, e, eq: _collapsed_variant(s, t, e, eq, codes="prediction")),
    Mistake("Without equipartition the codes are soft, softmax(s / epsilon), not the one-hot argmax.",
            lambda s, t, e, eq: _collapsed_variant(s, t, e, eq, codes="one_hot")),
    Mistake("The sign is flipped: a cross-entropy is -sum_k q_k log p_k, never negative.",
            lambda s, t, e, eq: _collapsed_variant(s, t, e, eq, sign=-1.0)),
    Mistake("Summed over the prototypes where the codes weight them: with uniform codes the loss is the mean of "
            "-log p_k over the K prototypes (each weighted 1 / K), not their sum.",
            lambda s, t, e, eq: _collapsed_variant(s, t, e, eq, reduce="sum")),
    Mistake("The two directions were added: the loss averages them (view 1 predicting view 2's code and view 2 "
            "predicting view 1's), and for a collapsed batch both are the same number.",
            lambda s, t, e, eq: _collapsed_variant(s, t, e, eq, factor=2.0)),
]


def _collapsed_cases() -> list[Case]:
    rng = random.Random(case_seed(81))

    def scores(k):
        return [round(rng.uniform(-1, 1), 3) for _ in range(k)]

    peaked = [0.9] + [round(rng.uniform(-0.5, 0.0), 3) for _ in range(5)]
    cases = [
        Case("K = 3, scores [0.5, -0.2, 0.1], t = 0.1, epsilon = 0.05, with equipartition",
             ([0.5, -0.2, 0.1], 0.1, 0.05, True)),
        Case("K = 3, scores [0.5, -0.2, 0.1], t = 0.1, epsilon = 0.05, without equipartition",
             ([0.5, -0.2, 0.1], 0.1, 0.05, False)),
        Case("K = 4, all scores 0.3 (every prototype alike), t = 0.1, epsilon = 0.05, with equipartition",
             ([0.3] * 4, 0.1, 0.05, True)),
    ]
    for k, t, e, eq in [(10, 0.1, 0.05, True), (10, 0.1, 0.05, False), (5, 0.5, 0.2, True), (5, 0.2, 0.5, False)]:
        s = scores(k)
        cases.append(Case(f"K = {k}, scores {s}, t = {t}, epsilon = {e}, {'with' if eq else 'without'} "
                          "equipartition", (s, t, e, eq)))
    cases.append(Case(f"K = 6, one prototype far ahead: scores {peaked}, t = 0.1, epsilon = 0.05, without "
                      "equipartition", (peaked, 0.1, 0.05, False)))
    return cases


@task("08.collapsed_loss", "derive: SwAV's loss for an encoder that maps every image to one point", 2,
      answer="collapsed_loss")
def check_collapsed_loss(answer) -> None:
    """Compare the learner's formula with the method's loss on a collapsed batch, on scores the lesson does not print."""
    compare_with_reference(
        answer, _collapsed_cases(), _collapsed_reference, _COLLAPSED_MISTAKES,
        generic_hint="Both views have the same scores s, so both predictions are p = softmax(s / t). The codes: "
                     "with equipartition, the Sinkhorn codes of a batch of identical rows (what must each "
                     "prototype's total be?); without it, softmax(s / epsilon). The loss is -sum_k q_k log p_k.",
        hint_needs_every_case=True,  # single numbers coincide by chance on one setting
        autograd=False,
    )
