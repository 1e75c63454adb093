"""Lesson 04 tasks: InfoNCE against a queue of negatives, and a derivation of the false negatives of a batch."""

from __future__ import annotations

import random

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

# --- 04.info_nce -----------------------------------------------------------------------------


def _info_nce_variant(query, positive, queue, temperature=0.1, *, normalize=True, t_power=1,
                      target="zero", neg_from="query", reduction="mean", positive_in_denominator=True):
    q, p, k = (F.normalize(x, dim=1) for x in (query, positive, queue)) if normalize else (query, positive, queue)
    t = temperature ** t_power
    pos = (q * p).sum(dim=1, keepdim=True) / t
    neg = (p if neg_from == "positive" else q) @ k.t() / t
    if not positive_in_denominator:
        return (torch.logsumexp(neg, dim=1) - pos.squeeze(1)).mean()
    logits = torch.cat([pos, neg], dim=1)
    labels = torch.zeros(len(q), dtype=torch.long) if target == "zero" else torch.arange(len(q))
    return F.cross_entropy(logits, labels, reduction=reduction)


def _in_batch_only(query, positive, queue, temperature=0.1):
    """The queue ignored: the other positives of the batch serve as negatives."""
    q, p = F.normalize(query, dim=1), F.normalize(positive, dim=1)
    return F.cross_entropy(q @ p.t() / temperature, torch.arange(len(q)))


_INFO_NCE_MISTAKES = [
    Mistake("The embeddings are not L2-normalised: normalise query, positive and queue "
            "(F.normalize(x, dim=1)) so that the logits are cosines / t.",
            lambda *a: _info_nce_variant(*a, normalize=False)),
    Mistake("Wrong target: the positive logit sits in column 0 of [N, 1 + K], so the targets are "
            "torch.zeros(N, dtype=torch.long), not arange(N).",
            lambda *a: _info_nce_variant(*a, target="arange")),
    Mistake("The temperature is applied twice (logits divided by t^2).",
            lambda *a: _info_nce_variant(*a, t_power=2)),
    Mistake("The temperature is missing: the logits are cos / t.",
            lambda *a: _info_nce_variant(*a, t_power=0)),
    Mistake("The negatives were compared with the positive (key) instead of the query: every logit is "
            "a similarity to the query q.",
            lambda *a: _info_nce_variant(*a, neg_from="positive")),
    Mistake("The queue is ignored: this uses the other positives of the batch as negatives. With a "
            "queue, the negatives are its K rows (logits q @ queue.T).",
            _in_batch_only),
    Mistake("The positive is missing from the denominator: InfoNCE is a (1 + K)-way softmax, "
            "-log(exp(s_pos / t) / (exp(s_pos / t) + sum_k exp(s_k / t))).",
            lambda *a: _info_nce_variant(*a, positive_in_denominator=False)),
    Mistake("The query losses are summed: InfoNCE takes their mean.",
            lambda *a: _info_nce_variant(*a, reduction="sum")),
]


def _info_nce_cases() -> list[Case]:
    g = torch.Generator().manual_seed(case_seed(7))

    def batch(n, k, d, noise=0.5, dtype=torch.float32):
        q = torch.randn(n, d, generator=g, dtype=torch.float64)
        p = q + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
        return q.to(dtype), p.to(dtype), torch.randn(k, d, generator=g, dtype=torch.float64).to(dtype) * 2

    q, p, k = batch(4, 16, 8)
    same_q = torch.randn(3, 6, generator=g)
    return [
        Case("N=4 queries that require gradients, a queue of K=16, D=8, temperature=0.1",
             (q.requires_grad_(), p, k, 0.1)),
        Case("N=8, K=64, D=16, temperature=0.07", (*batch(8, 64, 16), 0.07)),
        Case("N=1 query and K=1 negative, temperature=0.5", (*batch(1, 1, 4), 0.5)),
        Case("N=3, query == positive, K=5, temperature=0.2", (same_q, same_q.clone(), torch.randn(5, 6, generator=g), 0.2)),
        Case("N=5, K=7, D=4 in float64 (keep the dtype), temperature=0.3", (*batch(5, 7, 4, dtype=torch.float64), 0.3)),
    ]


@task("04.info_nce", "InfoNCE with a shared queue of K negatives (MoCo), positive at logit 0", 2, answer="info_nce")
def check_info_nce(answer) -> None:
    """Compare with clcourse.losses.info_nce(query, positive, negatives=queue [K, D], temperature)."""
    compare_with_reference(
        answer, _info_nce_cases(), losses.info_nce, _INFO_NCE_MISTAKES,
        generic_hint="logits = [q.p, q @ queue.T] / t on normalised vectors ([N, 1 + K]); "
                     "cross-entropy with target 0 for every query; mean over queries.",
        properties=[keeps_gradient],
    )


# --- 04.false_negatives ----------------------------------------------------------------------


def _class_probs(probs) -> torch.Tensor:
    return torch.as_tensor(probs, dtype=torch.float64)


def _false_negatives_reference(batch_size: int, class_probs) -> tuple[float, float]:
    """False negatives of one anchor in a SimCLR batch of B images (2B views), classes drawn i.i.d. from p.

    The anchor's 2B - 2 negatives are both views of the B - 1 other images; an image shares the anchor's class c
    with probability p_c. Returns (expected number of same-class negatives, 2 (B - 1) sum_c p_c^2; probability
    of at least one, 1 - sum_c p_c (1 - p_c)^(B - 1)) [Chuang et al., Debiased Contrastive Learning, 2020].
    """
    p = _class_probs(class_probs)
    expected = 2 * (batch_size - 1) * float((p**2).sum())
    at_least_one = 1 - float((p * (1 - p) ** (batch_size - 1)).sum())
    return expected, at_least_one


def _false_negatives_variant(b, probs, *, others=lambda b: b - 1, views=2, probability="conditional"):
    p = _class_probs(probs)
    same = float((p**2).sum())
    expected = views * others(b) * same
    at_least_one = {
        "conditional": 1 - float((p * (1 - p) ** (b - 1)).sum()),
        "unconditional": 1 - (1 - same) ** (b - 1),
        "per_view": 1 - float((p * (1 - p) ** (2 * b - 2)).sum()),
        "none": float((p * (1 - p) ** (b - 1)).sum()),
        "balanced": 1 - (1 - 1 / len(p)) ** (b - 1),
    }[probability]
    return expected, at_least_one


_FALSE_NEGATIVE_MISTAKES = [
    Mistake("One view per image: every other image of the batch brings both of its views as negatives, so the "
            "expected count is 2 (B - 1) sum_c p_c^2.",
            lambda b, p: _false_negatives_variant(b, p, views=1)),
    Mistake("The anchor's own image was counted: its other view is the positive, not a negative. The negatives "
            "are the 2 (B - 1) views of the other B - 1 images.",
            lambda b, p: _false_negatives_variant(b, p, others=lambda b: b)),
    Mistake("The positive was counted as a false negative: of the 2B - 1 other views, one is the positive; the "
            "2B - 2 negatives are the views of the B - 1 other images.",
            lambda b, p: (float((2 * b - 1) * (_class_probs(p) ** 2).sum()), _false_negatives_reference(b, p)[1])),
    Mistake("The same-class events of the B - 1 other images were treated as independent of each other. They are "
            "independent only given the anchor's class c: P(no false negative) = sum_c p_c (1 - p_c)^(B - 1), not "
            "(1 - sum_c p_c^2)^(B - 1) (the two agree only for balanced classes).",
            lambda b, p: _false_negatives_variant(b, p, probability="unconditional")),
    Mistake("The two views of one image were treated as independent draws: they always share their class, so "
            "there are B - 1 independent images behind the 2B - 2 negatives, not 2B - 2.",
            lambda b, p: _false_negatives_variant(b, p, probability="per_view")),
    Mistake("That is the probability of *no* false negative; the task asks for at least one: 1 - sum_c p_c "
            "(1 - p_c)^(B - 1).",
            lambda b, p: _false_negatives_variant(b, p, probability="none")),
    Mistake("The class probabilities were assumed equal (1/C each): use the given p, whose classes can be "
            "imbalanced; a frequent class gets more false negatives, sum_c p_c^2 >= 1/C.",
            lambda b, p: (2 * (b - 1) / len(p), _false_negatives_variant(b, p, probability="balanced")[1])),
]


def _false_negative_cases() -> list[Case]:
    return [
        Case("B = 8 images, 3 classes with p = (0.5, 0.3, 0.2)", (8, [0.5, 0.3, 0.2])),
        Case("B = 128, 10 balanced classes (lesson 04's batches of digits)", (128, [0.1] * 10)),
        Case("B = 2, 2 balanced classes", (2, [0.5, 0.5])),
        Case("B = 1 (no other image: no negative at all)", (1, [0.25] * 4)),
        Case("B = 4, a single class (every negative is a false negative)", (4, [1.0])),
        Case("B = 256, 1,000 classes, one of them holding 10% of the images", (256, [0.1] + [0.9 / 999] * 999)),
        _random_false_negative_case(random.Random(case_seed(40))),
    ]


def _random_false_negative_case(rng: random.Random) -> Case:
    batch, classes = rng.randint(3, 300), rng.randint(2, 20)
    weights = [rng.random() + 0.05 for _ in range(classes)]
    shares = [w / sum(weights) for w in weights]
    return Case(f"B = {batch}, {classes} classes with p = ({', '.join(f'{p:.3f}' for p in shares)})",
                (batch, shares))


@task("04.false_negatives", "derive: how many false negatives a SimCLR anchor has, and how often at least one", 2, answer="false_negatives")
def check_false_negatives(answer) -> None:
    """Compare (expected count, probability of at least one) with the derivation, on unprinted settings."""
    compare_with_reference(
        answer, _false_negative_cases(), _false_negatives_reference, _FALSE_NEGATIVE_MISTAKES,
        generic_hint="Condition on the anchor's class c (probability p_c): each of the B - 1 other images then has "
                     "class c with probability p_c, independently, and brings 2 negatives.",
        hint_needs_every_case=True,  # pairs of numbers can coincide on one setting
    )
