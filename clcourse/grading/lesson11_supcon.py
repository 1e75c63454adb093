"""Lesson 11 tasks: the supervised contrastive loss L_out, and a derivation of how L_out and L_in pull on positives.

[1] Khosla et al., Supervised Contrastive Learning (SupCon), NeurIPS 2020.
"""

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
    labelled_embeddings,
)
from clcourse.grading.registry import task

# --- 11.supcon_out ---------------------------------------------------------------------------


def _supcon_out_reference(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """L_out of [1] (eq. 2) on a flat batch: clcourse.losses.supcon(z, labels, temperature, variant="out").

    Shapes: z [M, D] raw projections (normalised inside), labels [M] int64; returns a scalar, the
    mean of l_i over the anchors that have at least one positive.
    """
    return losses.supcon(z, labels, temperature, variant="out")


def _supcon_variant(z, labels, temperature=0.1, *, normalize=True, t_power=1, self_in_denominator=False,
                    self_positive=False, positives_in_denominator=True, variant="out", reduce="mean",
                    lonely="drop"):
    x = F.normalize(z, dim=1) if normalize else z
    m = x.shape[0]
    eye = torch.eye(m, dtype=torch.bool)
    logits = x @ x.T / temperature ** t_power
    pos = labels[:, None] == labels[None, :]
    if not self_positive:
        pos = pos & ~eye
    excluded = torch.zeros_like(eye) if self_in_denominator else eye
    if not positives_in_denominator:
        excluded = excluded | (pos & ~eye)
    denominator = torch.logsumexp(logits.masked_fill(excluded, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - denominator
    if self_positive and not self_in_denominator:
        log_prob = log_prob.masked_fill(eye, float("-inf"))  # the anchor's own term, left out of the softmax
    n_pos = pos.sum(1).to(x.dtype)
    summed = log_prob.masked_fill(~pos, 0.0).sum(1)
    if reduce == "pooled":
        return -summed.sum() / n_pos.sum()
    if variant == "in":
        per = n_pos.log() - torch.logsumexp(log_prob.masked_fill(~pos, float("-inf")), dim=1)
    else:
        per = -summed / (n_pos if lonely == "nan" else n_pos.clamp(min=1))
    if lonely == "drop":
        per = per[n_pos > 0]
    return per.sum() if reduce == "sum" else per.mean()


_SUPCON_MISTAKES = [
    Mistake("The anchor itself is in the denominator: A(i) is every embedding but i, so mask the diagonal of "
            "the similarity matrix (to -inf) before the log-sum-exp (its exp(1 / t) would dominate).",
            lambda *a: _supcon_variant(*a, self_in_denominator=True)),
    Mistake("The anchor counts as its own positive: P(i) is the other embeddings with i's label, so remove the "
            "diagonal from the positive mask (labels[:, None] == labels[None, :]) & ~eye.",
            lambda *a: _supcon_variant(*a, self_positive=True, self_in_denominator=True)),
    Mistake("The anchor counts as its own positive (and its log-probability is -inf, because the diagonal was "
            "masked out of the softmax): remove the diagonal from the positive mask too.",
            lambda *a: _supcon_variant(*a, self_positive=True)),
    Mistake("That is L_in ([1] eq. 3, the mean over positives inside the log): L_out averages the "
            "log-probabilities, l_i = -1/|P(i)| sum_p log p_ip, with the log outside the mean.",
            lambda *a: _supcon_variant(*a, variant="in")),
    Mistake("The embeddings are not L2-normalised: F.normalize(z, dim=1) first, so that the similarities "
            "are cosines.",
            lambda *a: _supcon_variant(*a, normalize=False)),
    Mistake("The temperature is missing: the logits are z_i . z_a / t.",
            lambda *a: _supcon_variant(*a, t_power=0)),
    Mistake("The temperature multiplies the similarities: divide by t.",
            lambda *a: _supcon_variant(*a, t_power=-1)),
    Mistake("The positives were left out of the denominator: A(i) holds every embedding but the anchor, "
            "positives included (the softmax is over all of them).",
            lambda *a: _supcon_variant(*a, positives_in_denominator=False)),
    Mistake("All log-probabilities were pooled into one mean: average over each anchor's positives first "
            "(divide by |P(i)|), then over the anchors.",
            lambda *a: _supcon_variant(*a, reduce="pooled")),
    Mistake("The anchor losses are summed: take their mean.",
            lambda *a: _supcon_variant(*a, reduce="sum")),
    Mistake("An anchor without a positive (its label appears once in the batch) has |P(i)| = 0 and gives 0 / 0: "
            "leave such anchors out, the loss is the mean over the anchors that have a positive.",
            lambda *a: _supcon_variant(*a, lonely="nan")),
    Mistake("Anchors without a positive (a label that appears once in the batch) were counted with loss 0: "
            "leave them out, the loss is the mean over the anchors that have a positive.",
            lambda *a: _supcon_variant(*a, lonely="keep")),
]


def _supcon_cases() -> list[Case]:
    g = torch.Generator().manual_seed(case_seed(110))

    def batch(labels, d=6, dtype=torch.float32):
        return labelled_embeddings(labels, g, d, dtype)

    z, y = batch([0, 1, 0, 2, 1, 0, 2, 2])
    return [
        Case("M=8 embeddings in 6-d that require gradients, labels [0, 1, 0, 2, 1, 0, 2, 2], temperature=0.1",
             (z.requires_grad_(), y, 0.1)),
        Case("M=16, D=8, 4 classes, temperature=0.07",
             (*batch([0, 1, 2, 3, 1, 2, 0, 3, 3, 1, 2, 0, 0, 1, 3, 2], d=8), 0.07)),
        Case("M=7, labels [0, 0, 0, 1, 1, 2, 3]: labels 2 and 3 appear once (those anchors have no positive), "
             "temperature=0.5", (*batch([0, 0, 0, 1, 1, 2, 3]), 0.5)),
        Case("M=6, all with the same label 4, temperature=1.0", (*batch([4, 4, 4, 4, 4, 4]), 1.0)),
        Case("M=6, labels [3, 3, 5, 5, 9, 9] (exactly one positive each), temperature=0.2",
             (*batch([3, 3, 5, 5, 9, 9]), 0.2)),
        Case("M=10, D=4 in float64 (keep the dtype), temperature=0.3",
             (*batch([2, 0, 1, 1, 0, 2, 2, 1, 0, 0], d=4, dtype=torch.float64), 0.3)),
    ]


@task("11.supcon_out", "the supervised contrastive loss L_out on a flat batch with labels", 2, answer="supcon_out")
def check_supcon_out(answer) -> None:
    """Compare with clcourse.losses.supcon(z, labels, temperature, variant="out") on flat z [M, D]."""
    compare_with_reference(
        answer, _supcon_cases(), _supcon_out_reference, _SUPCON_MISTAKES,
        generic_hint="x = F.normalize(z, dim=1); logits = x @ x.T / t with the diagonal masked to -inf; "
                     "log_prob = logits - logsumexp(logits, dim=1); positives = same label, not self; "
                     "l_i = -(log_prob * positives).sum(1) / |P(i)|; mean over anchors with |P(i)| > 0.",
        properties=[keeps_gradient],
    )


# --- 11.supcon_gradients ---------------------------------------------------------------------


def _supcon_gradients_reference(similarities, positives, temperature: float = 0.1):
    """d loss / d s for one anchor, for L_out and for L_in [1, section 3.2]: similarities [M], positives bool [M].

    With p = softmax(s / t) over the anchor's M candidates and P its positives,
    L_out = -(1/|P|) sum_{p in P} log p_p  has gradient  (p_a - 1[a in P] / |P|) / t;
    L_in  = -log((1/|P|) sum_{p in P} p_p)  has gradient  (p_a - 1[a in P] p_a / sum_{p in P} p_p) / t.
    Returns (gradient of L_out, gradient of L_in), each [M] float64.
    """
    s = torch.as_tensor(similarities, dtype=torch.float64)
    mask = torch.as_tensor(positives, dtype=torch.bool)
    p = (s / temperature).softmax(dim=0)
    out = (p - mask.double() / mask.sum()) / temperature
    in_ = (p - mask.double() * p / p[mask].sum()) / temperature
    return out, in_


def _gradient_variant(s, positives, t=0.1, *, t_power=1, sign=1, out_weights="mean", in_weights="share",
                      swap=False):
    s = torch.as_tensor(s, dtype=torch.float64)
    mask = torch.as_tensor(positives, dtype=torch.bool).double()
    p = (s / t).softmax(dim=0)
    pull_out = {"mean": mask / mask.sum(), "sum": mask}[out_weights]
    pull_in = {"share": mask * p / (mask * p).sum(), "mean": mask / mask.sum()}[in_weights]
    out, in_ = (sign * (p - pull_out) / t**t_power, sign * (p - pull_in) / t**t_power)
    return (in_, out) if swap else (out, in_)


_GRADIENT_MISTAKES = [
    Mistake("The two gradients were given as equal: in L_in the 1/|P| sits inside the log, so each positive is "
            "pulled by its share of the positives' softmax mass, p_a / sum_{p in P} p_p, not by 1/|P|.",
            lambda s, m, t=0.1: _gradient_variant(s, m, t, in_weights="mean")),
    Mistake("L_out's positives were summed, not averaged: L_out divides by |P|, so each positive's pull is "
            "1/|P| (the pulls add up to 1, as the push p does).",
            lambda s, m, t=0.1: _gradient_variant(s, m, t, out_weights="sum")),
    Mistake("The factor 1/t is missing: the logits are s / t, so the chain rule brings d(s/t)/ds = 1/t.",
            lambda s, m, t=0.1: _gradient_variant(s, m, t, t_power=0)),
    Mistake("The temperature appears twice (1/t^2): the softmax already uses s / t, and the chain rule adds one "
            "more 1/t, not two.",
            lambda s, m, t=0.1: _gradient_variant(s, m, t, t_power=2)),
    Mistake("The sign is flipped: gradient descent moves s against the gradient, and it must raise the "
            "positives' similarities, so their entries are negative (p_a minus the pull).",
            lambda s, m, t=0.1: _gradient_variant(s, m, t, sign=-1)),
    Mistake("The two gradients are swapped: return (gradient of L_out, gradient of L_in), in that order.",
            lambda s, m, t=0.1: _gradient_variant(s, m, t, swap=True)),
]


def _gradient_cases() -> list[Case]:
    g = torch.Generator().manual_seed(case_seed(111))

    def anchor(m, n_pos, spread=0.5):
        s = (torch.rand(m, generator=g, dtype=torch.float64) * 2 - 1) * spread
        mask = torch.zeros(m, dtype=torch.bool)
        mask[torch.randperm(m, generator=g)[:n_pos]] = True
        return s, mask

    one_positive = anchor(6, 1)
    return [
        Case("M = 8 candidates, 3 positives, t = 0.1", (*anchor(8, 3), 0.1)),
        Case("M = 6, a single positive (both losses are NT-Xent's), t = 0.5", (*one_positive, 0.5)),
        Case("M = 50, 12 positives, t = 0.07", (*anchor(50, 12, 0.9), 0.07)),
        Case("M = 5, every candidate a positive, t = 1.0", (*anchor(5, 5), 1.0)),
        Case("M = 511, 50 positives (a batch of 256, 10 classes), t = 0.1", (*anchor(511, 50), 0.1)),
    ]


@task("11.supcon_gradients", "derive: the gradient of L_out and of L_in with respect to one anchor's similarities",
      2, answer="supcon_gradients")
def check_supcon_gradients(answer) -> None:
    """Compare with the derived gradients (equal to autograd's), on anchors the lesson does not print.

    The answer runs in inference mode, where autograd records nothing: the task is the derivation.
    """
    compare_with_reference(
        answer, _gradient_cases(), _supcon_gradients_reference, _GRADIENT_MISTAKES,
        generic_hint="Write each loss with log-softmax over s / t and differentiate: d log p_j / d s_a = "
                     "(1[a = j] - p_a) / t. Check your formula against torch.autograd.grad on a small anchor.",
        hint_needs_every_case=True,
        autograd=False,
    )
