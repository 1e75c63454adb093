"""Lesson 12 tasks: the pixel-wise contrastive loss of a batch, and a derivation of its floor next to SupCon's.

[1] Wang et al., Exploring Cross-Image Pixel Contrast for Semantic Segmentation, ICCV 2021 (eq. 3).
[2] Khosla et al., Supervised Contrastive Learning (SupCon), NeurIPS 2020 (L_out, eq. 2).
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from clcourse import losses
from clcourse.grading.harness import (
    Case,
    Mistake,
    call_answer,
    case_seed,
    compare_with_reference,
    keeps_gradient,
    labelled_embeddings,
    probe,
    require_same_gradient,
    run_case_probe,
)
from clcourse.grading.registry import task

# --- 12.pixel_contrast -----------------------------------------------------------------------


def _pixel_contrast_reference(anchors: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Eq. 3 of [1] on the anchors alone: clcourse.losses.pixel_contrast(anchors, labels, temperature=t).

    Shapes: anchors [N, D] (normalised inside), labels [N] int64; returns a scalar, the mean of l_i over the
    anchors that have at least one positive, each anchor's own row excluded.
    """
    return losses.pixel_contrast(anchors, labels, temperature=temperature)


def _pixel_contrast_variant(anchors, labels, temperature=0.1, *, normalize=True, t_power=1, self_positive=False,
                            denominator="own", per_anchor="mean", reduce="mean", lonely="drop"):
    """Eq. 3 with one rule changed (the defaults compute the reference), in float64, returned in its dtype.

    denominator: "own" (eq. 3: the positive plus the negatives), "all" (SupCon's L_out: every other row),
    "negatives" (the negatives only). per_anchor: "mean" or "sum" over an anchor's positives. reduce: "mean"
    or "sum" over the anchors, or "pooled" (one mean over all (anchor, positive) pairs). lonely: anchors
    without a positive are dropped, kept with loss 0 ("zero") or give 0 / 0 ("nan").
    """
    dtype = torch.float64 if anchors.dtype == torch.float64 else torch.float32
    x = anchors.detach().double()
    x = F.normalize(x, dim=1) if normalize else x
    n = x.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    logits = x @ x.T / temperature**t_power
    same = labels[:, None] == labels[None, :]
    positive = same if self_positive else same & ~eye
    log_negatives = torch.logsumexp(logits.masked_fill(same, float("-inf")), dim=1, keepdim=True)
    if denominator == "own":
        terms = F.softplus(log_negatives - logits)
    elif denominator == "negatives":
        terms = log_negatives - logits
    else:
        terms = torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=1, keepdim=True) - logits
    terms = terms.masked_fill(~positive, 0.0)
    n_pos = positive.sum(1).double()
    if reduce == "pooled":
        return (terms.sum() / n_pos.sum()).to(dtype)
    per = terms.sum(1)
    if per_anchor == "mean":
        per = per / (n_pos if lonely == "nan" else n_pos.clamp(min=1))
    if lonely == "drop":
        per = per[n_pos > 0]
    return (per.sum() if reduce == "sum" else per.mean()).to(dtype)


_PIXEL_MISTAKES = [
    Mistake("That is SupCon's L_out ([2] eq. 2): its denominator holds every other row, so an anchor's positives "
            "compete with each other. Eq. 3 gives each positive its own denominator, that positive plus the "
            "negatives only: exp(s_ip / t) + sum_{n in N_i} exp(s_in / t).",
            lambda *a: _pixel_contrast_variant(*a, denominator="all")),
    Mistake("The anchor is its own positive: P_i is the *other* rows of i's class, so remove the diagonal from "
            "the positive mask, (labels[:, None] == labels[None, :]) & ~eye. (Its own term, at similarity 1, "
            "lowers the loss.)",
            lambda *a: _pixel_contrast_variant(*a, self_positive=True)),
    Mistake("The embeddings are not L2-normalised: F.normalize(anchors, dim=1) first, so that the similarities "
            "are cosines.",
            lambda *a: _pixel_contrast_variant(*a, normalize=False)),
    Mistake("The temperature is missing: the logits are s / t.",
            lambda *a: _pixel_contrast_variant(*a, t_power=0)),
    Mistake("The temperature multiplies the similarities: divide by t.",
            lambda *a: _pixel_contrast_variant(*a, t_power=-1)),
    Mistake("The positive is missing from its own denominator: eq. 3's term is -log(exp(s_ip / t) / (exp(s_ip / t) "
            "+ sum_n exp(s_in / t))) = softplus(logsumexp_n(s_in / t) - s_ip / t), not logsumexp_n - s_ip / t "
            "(which goes below 0, and to -inf without negatives).",
            lambda *a: _pixel_contrast_variant(*a, denominator="negatives")),
    Mistake("All (anchor, positive) terms were pooled into one mean, so anchors of large classes weigh more: "
            "average over each anchor's positives first (1/|P_i|), then over the anchors.",
            lambda *a: _pixel_contrast_variant(*a, reduce="pooled")),
    Mistake("The terms of an anchor's positives were summed: l_i is their mean, 1/|P_i| sum_{p in P_i}.",
            lambda *a: _pixel_contrast_variant(*a, per_anchor="sum")),
    Mistake("The anchor losses are summed: take their mean over the anchors that have a positive.",
            lambda *a: _pixel_contrast_variant(*a, reduce="sum")),
    Mistake("Anchors without a positive (a class that appears once in the batch) were counted with loss 0: "
            "skip them, the loss is the mean over the anchors that have at least one positive.",
            lambda *a: _pixel_contrast_variant(*a, lonely="zero")),
    Mistake("An anchor without a positive (its class appears once in the batch) has |P_i| = 0 and gives 0 / 0: "
            "skip such anchors, the loss is the mean over the anchors that have at least one positive.",
            lambda *a: _pixel_contrast_variant(*a, lonely="nan")),
]


def _pixel_cases() -> list[Case]:
    g = torch.Generator().manual_seed(case_seed(120))

    def batch(labels, d=6, dtype=torch.float32):
        return labelled_embeddings(labels, g, d, dtype)

    def shuffled(counts):
        labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        return labels[torch.randperm(len(labels), generator=g)].tolist()

    z, y = batch([0, 1, 0, 2, 1, 0, 2, 2])
    lonely, lonely_labels = batch([0, 0, 0, 1, 1, 2, 3])
    return [
        Case("N=8 pixel embeddings in 6-d that require gradients, labels [0, 1, 0, 2, 1, 0, 2, 2], temperature=0.1",
             (z.requires_grad_(), y, 0.1)),
        Case("N=24, D=16, 4 classes, temperature=0.07", (*batch(shuffled([6, 6, 6, 6]), d=16), 0.07)),
        Case("N=7 that require gradients, labels [0, 0, 0, 1, 1, 2, 3]: classes 2 and 3 appear once (those anchors "
             "have no positive), temperature=0.5", (lonely.requires_grad_(), lonely_labels, 0.5)),
        Case("N=40, D=8, unbalanced classes as in a segmentation mask (25, 10 and 5 pixels), temperature=0.2",
             (*batch(shuffled([25, 10, 5]), d=8), 0.2)),
        Case("N=6, labels [3, 3, 5, 5, 9, 9] (one positive each), embeddings of lengths 0.4 to 2 (the loss "
             "normalises), temperature=1.0", (*batch([3, 3, 5, 5, 9, 9]), 1.0)),
        Case("N=10, D=4 in float64 (keep the dtype), temperature=0.3",
             (*batch([2, 0, 1, 1, 0, 2, 2, 1, 0, 0], d=4, dtype=torch.float64), 0.3)),
        Case("N=5, all of class 7 (no negatives: every term is -log(e^l / e^l) = 0), temperature=0.1",
             (*batch([7, 7, 7, 7, 7]), 0.1)),
    ]


@probe
def _pixel_contrast_gradient(answer, anchors: torch.Tensor, labels: torch.Tensor, temperature: float):
    """The gradient of ``answer(anchors, labels, temperature)`` with respect to the anchors, or ``None`` when the
    loss is not a tensor in their graph."""
    x = anchors.detach().clone().requires_grad_()
    loss = call_answer(answer, (x, labels, temperature), {}, "")
    if not (isinstance(loss, torch.Tensor) and loss.requires_grad and loss.numel() == 1):
        return None
    (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad


def _reference_gradient(anchors, labels, temperature):
    x = anchors.detach().clone().requires_grad_()
    return torch.autograd.grad(_pixel_contrast_reference(x, labels, temperature), x)[0]


_GRADIENT_HINT = ("The loss has the right value but not the right gradient: part of it is cut from the graph "
                  "(.detach(), .item(), torch.no_grad(), .data) or a value was written into a tensor in place. "
                  "Build every step from the anchors with torch operations.")


def _check_gradients(answer, cases: list[Case]) -> None:
    """On the cases whose anchors require gradients, the answer's gradient must be the reference's."""
    for case in cases:
        anchors, labels, temperature = case.args
        if not anchors.requires_grad:
            continue
        got = run_case_probe(answer, case, _pixel_contrast_gradient, anchors, labels, temperature)
        require_same_gradient(case, got, _reference_gradient(anchors, labels, temperature), "the anchors",
                              _GRADIENT_HINT, rtol=1e-3, atol=1e-5)


@task("12.pixel_contrast", "the pixel-wise contrastive loss (eq. 3) of a batch of labelled pixel embeddings", 2,
      answer="pixel_contrast")
def check_pixel_contrast(answer) -> None:
    """Compare with clcourse.losses.pixel_contrast(anchors, labels, temperature=t), then the gradients."""
    cases = _pixel_cases()
    compare_with_reference(
        answer, cases, _pixel_contrast_reference, _PIXEL_MISTAKES,
        generic_hint="x = F.normalize(anchors, dim=1); logits = x @ x.T / t; positives: same label, not the "
                     "diagonal; negatives: another label. For each (anchor i, positive p): "
                     "softplus(logsumexp over i's negatives - logits[i, p]); mean over p, then over the anchors "
                     "that have a positive.",
        properties=[keeps_gradient],
    )
    _check_gradients(answer, cases)


# --- 12.loss_floor ---------------------------------------------------------------------------


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


def _loss_floor_closed_form(positives: int, negatives: int, temperature: float) -> tuple[float, float]:
    """One anchor's loss at perfect separation: its |P| positives at cosine +1, its |N| negatives at -1.

    Relative to a positive, each negative's term is e^{(-1 - 1) / t} = e^{-2/t}. Eq. 3 of [1] gives every positive
    its own denominator, e^{1/t} + |N| e^{-1/t}, so l = log(1 + |N| e^{-2/t}), which tends to 0. SupCon's L_out
    ([2] eq. 2) puts all of them in one, |P| e^{1/t} + |N| e^{-1/t}, so l = log(|P| + |N| e^{-2/t}) >= log |P|.
    """
    p, n, t = positives, negatives, temperature
    tail = n * math.exp(-2 / t)
    return math.log1p(tail), math.log(p + tail)


def _separated_batch(positives: int, negatives: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One anchor (row 0), its positives equal to it and its negatives its opposite, in float64; with labels."""
    direction = torch.tensor([0.6, -0.8, 0.0], dtype=torch.float64)
    rows = torch.cat([direction.expand(1 + positives, 3), -direction.expand(negatives, 3)])
    labels = torch.cat([torch.zeros(1 + positives, dtype=torch.long), torch.ones(negatives, dtype=torch.long)])
    return rows, labels


def _loss_floor_measured(positives: int, negatives: int, temperature: float) -> tuple[float, float]:
    """The same anchor's losses as the package computes them: clcourse.losses.pixel_contrast and SupCon's L_out
    (clcourse.losses.supcon_anchor_losses, the core of clcourse.losses.supcon), the anchor in row 0 of the batch."""
    rows, labels = _separated_batch(positives, negatives)
    own = torch.tensor([0])
    pixel = losses.pixel_contrast(rows[:1], labels[:1], rows, labels, temperature, self_index=own)
    supcon = losses.supcon_anchor_losses(rows[:1], labels[:1], rows, labels, own, temperature, "out")
    return pixel.item(), supcon.item()


def _loss_floor_reference(positives: int, negatives: int, temperature: float) -> tuple[float, float]:
    """The closed forms, after checking that the package's losses give them on a separated batch."""
    closed = _loss_floor_closed_form(positives, negatives, temperature)
    measured = _loss_floor_measured(positives, negatives, temperature)
    if not all(math.isclose(c, m, rel_tol=1e-9, abs_tol=1e-12) for c, m in zip(closed, measured)):
        raise RuntimeError(f"clcourse's losses give {measured} for |P| = {positives}, |N| = {negatives}, "
                           f"t = {temperature}, not the closed forms {closed}")
    return closed


def _floor_variant(p, n, t, *, gap=2.0, t_power=1, supcon_p=True, self_positive=False, swap=False,
                   own_term=True, positives_summed=False, zero=False):
    """The two floors with one slip (the defaults compute the closed forms)."""
    tail = n * math.exp(-gap * t ** -t_power)
    if zero:
        pixel, supcon = 0.0, _log(p)
    elif not own_term:  # -log(e^{1/t} / (|N| e^{-1/t})), the positive left out of its denominator
        pixel = supcon = _log(n) - gap * t ** -t_power
    else:
        pixel = math.log1p(tail)
        supcon = math.log((p + self_positive if supcon_p else 1) + tail)
    if positives_summed:
        pixel, supcon = p * pixel, p * supcon
    return (supcon, pixel) if swap else (pixel, supcon)


_FLOOR_MISTAKES = [
    Mistake("The negatives sit at similarity -1 and the positives at +1: relative to a positive, a negative's term "
            "is e^{(-1 - 1) / t} = e^{-2/t}, not e^{-1/t} (the similarity gap is 2, not 1).",
            lambda p, n, t: _floor_variant(p, n, t, gap=1.0)),
    Mistake("SupCon's positives share one denominator: log p_ip = s_ip / t - log(sum over every other candidate), "
            "and that sum holds all |P| positives, each e^{1/t}. Its floor is log(|P| + |N| e^{-2/t}), never below "
            "log |P|: only eq. 3, which gives each positive its own denominator, reaches log(1 + |N| e^{-2/t}).",
            lambda p, n, t: _floor_variant(p, n, t, supcon_p=False)),
    Mistake("The two floors are swapped: return (pixel contrast's, SupCon's), in that order. Eq. 3's is the one "
            "without |P|: each positive has its own denominator.",
            lambda p, n, t: _floor_variant(p, n, t, swap=True)),
    Mistake("The temperature divides the similarities: the negatives' terms are e^{-2/t}, not e^{-2t}.",
            lambda p, n, t: _floor_variant(p, n, t, t_power=-1)),
    Mistake("The temperature is missing: the logits are s / t, so a negative's term is e^{-2/t}, not e^{-2}.",
            lambda p, n, t: _floor_variant(p, n, t, t_power=0)),
    Mistake("The anchor was counted among the candidates: it is neither its own positive nor in its own "
            "denominator (A(i) is every embedding but i), so SupCon's denominator holds |P| positives, not "
            "|P| + 1: log(|P| + |N| e^{-2/t}).",
            lambda p, n, t: _floor_variant(p, n, t, self_positive=True)),
    Mistake("The positive is missing from its own denominator: -log(e^{1/t} / (|N| e^{-1/t})) = log |N| - 2/t goes "
            "below 0 (and to -inf without negatives). The denominator is e^{s_ip / t} plus the negatives' terms "
            "(plus, for SupCon, the other positives').",
            lambda p, n, t: _floor_variant(p, n, t, own_term=False)),
    Mistake("Perfect separation does not make the loss 0 at a finite temperature: each negative still adds "
            "e^{-2/t} next to the positive's 1, so eq. 3's floor is log(1 + |N| e^{-2/t}); 0 is its limit as "
            "t -> 0 (and SupCon's then tends to log |P|).",
            lambda p, n, t: _floor_variant(p, n, t, zero=True)),
    Mistake("The terms of the |P| positives were summed: both losses average them (1/|P| sum_{p in P}), and at "
            "perfect separation all the terms are equal, so the floor is one term.",
            lambda p, n, t: _floor_variant(p, n, t, positives_summed=True)),
]


def _loss_floor_cases() -> list[Case]:
    rng = random.Random(case_seed(121))
    drawn = (rng.randint(2, 60), rng.randint(1, 600), rng.choice([0.2, 0.3, 0.5, 0.7, 1.0, 2.0]))
    return [
        Case("|P| = 1 positive, |N| = 1 negative, t = 1.0", (1, 1, 1.0)),
        Case("|P| = 4, |N| = 12, t = 0.5", (4, 12, 0.5)),
        Case("|P| = 1, |N| = 1000, t = 0.3 (one positive: the two losses are the same)", (1, 1000, 0.3)),
        Case("|P| = 31, |N| = 64, t = 0.1 (32 anchors of each of 3 classes, the batch alone)", (31, 64, 0.1)),
        Case("|P| = 100, |N| = 10, t = 2.0", (100, 10, 2.0)),
        Case("|P| = 5000, |N| = 90000, t = 0.1 (memories of 5,000 pixels per class, 19 classes, as in [1]'s "
             "Cityscapes setting)", (5000, 90000, 0.1)),
        Case(f"|P| = {drawn[0]}, |N| = {drawn[1]}, t = {drawn[2]}", drawn),
        Case("|P| = 7, |N| = 0 (a single class: no negatives), t = 0.5", (7, 0, 0.5)),
    ]


@task("12.loss_floor", "derive: the loss of one perfectly separated anchor, for pixel contrast (eq. 3) and for "
      "SupCon", 2, answer="loss_floor")
def check_loss_floor(answer) -> None:
    """Compare with the closed forms, which the reference first checks against the package's losses on a batch
    built that way (positives equal to the anchor, negatives its opposite)."""
    compare_with_reference(
        answer, _loss_floor_cases(), _loss_floor_reference, _FLOOR_MISTAKES,
        generic_hint="Put s = +1 for the positives and -1 for the negatives into each loss and simplify; divide "
                     "numerator and denominator by e^{1/t}. In eq. 3 a positive's denominator is itself plus the "
                     "negatives; in SupCon's L_out it is every candidate but the anchor.",
        hint_needs_every_case=True,  # single numbers coincide by chance on one setting
        autograd=False,
    )
