"""Lesson 11 tasks: the supervised contrastive loss L_out, and its mask of positives with unlabelled images.

[1] Khosla et al., Supervised Contrastive Learning (SupCon), NeurIPS 2020.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clcourse import losses
from clcourse.grading.harness import Case, Mistake, compare_with_reference, keeps_gradient
from clcourse.grading.registry import task
from clcourse.methods.supcon import unlabelled_as_own_class

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
    g = torch.Generator().manual_seed(110)

    def batch(labels, d=6, dtype=torch.float32):
        labels = torch.tensor(labels)
        centres = torch.randn(int(labels.max()) + 1, d, generator=g, dtype=torch.float64)
        z = centres[labels] + 0.8 * torch.randn(len(labels), d, generator=g, dtype=torch.float64)
        # random lengths in [0.4, 2]: only directions may matter, yet exp(|z|^2 / t) stays finite in float32
        z = F.normalize(z, dim=1) * torch.empty(len(labels), 1, dtype=torch.float64).uniform_(0.4, 2.0, generator=g)
        return z.to(dtype), labels

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


@task("11.supcon_out", "the supervised contrastive loss L_out on a flat batch with labels", 2)
def check_supcon_out(answer) -> None:
    """Compare with clcourse.losses.supcon(z, labels, temperature, variant="out") on flat z [M, D]."""
    compare_with_reference(
        answer, _supcon_cases(), _supcon_out_reference, _SUPCON_MISTAKES,
        generic_hint="x = F.normalize(z, dim=1); logits = x @ x.T / t with the diagonal masked to -inf; "
                     "log_prob = logits - logsumexp(logits, dim=1); positives = same label, not self; "
                     "l_i = -(log_prob * positives).sum(1) / |P(i)|; mean over anchors with |P(i)| > 0.",
        properties=[keeps_gradient],
    )


# --- 11.positive_mask ------------------------------------------------------------------------


def _positive_mask_reference(labels: torch.Tensor, n_views: int = 2) -> torch.Tensor:
    """The positives of clcourse.methods.SupCon's loss [1]: labels [N] (-1 = unlabelled) -> bool [V*N, V*N].

    Rows and columns are the V*N embeddings in view-major order, row v * N + i being view v of
    image i (as clcourse.losses.supcon flattens z [N, V, D]). Entry (a, b) is True when a != b
    and the images share a class, where every unlabelled image is a class of its own
    (clcourse.methods.supcon.unlabelled_as_own_class): its positives are its other views.
    """
    flat = unlabelled_as_own_class(labels).repeat(n_views)
    return (flat[:, None] == flat[None, :]) & ~torch.eye(len(flat), dtype=torch.bool)


def _mask_variant(labels, n_views=2, *, diagonal=False, unlabelled="own", order="view", views=True,
                  use_labels=True):
    n = len(labels)
    if not use_labels:
        classes = torch.arange(n)
    elif unlabelled == "own":
        classes = unlabelled_as_own_class(labels)
    else:
        classes = labels
    flat = (classes.repeat(n_views) if order == "view" else classes.repeat_interleave(n_views)) if views else classes
    mask = flat[:, None] == flat[None, :]
    if unlabelled == "none":
        lab = (labels >= 0).repeat(n_views) if views else labels >= 0
        mask = mask & lab[:, None] & lab[None, :]
    return mask if diagonal else mask & ~torch.eye(len(flat), dtype=torch.bool)


_MASK_MISTAKES = [
    Mistake("The diagonal is kept: an embedding is not its own positive, remove it with & ~torch.eye(M, "
            "dtype=torch.bool).",
            lambda *a: _mask_variant(*a, diagonal=True)),
    Mistake("-1 was treated as a class, so all unlabelled images are positives of each other: an unlabelled "
            "image is a class of its own (clcourse.methods.supcon.unlabelled_as_own_class), its only "
            "positives are its other views.",
            lambda *a: _mask_variant(*a, unlabelled="class")),
    Mistake("The unlabelled images got no positives at all: each is a class of its own, so its other views "
            "are still its positives (the SimCLR term of semi-supervised SupCon).",
            lambda *a: _mask_variant(*a, unlabelled="none")),
    Mistake("The rows are in image-major order (labels.repeat_interleave(V)): the embeddings are view-major, "
            "row v * N + i is view v of image i, so repeat the labels with labels.repeat(V).",
            lambda *a: _mask_variant(*a, order="image")),
    Mistake("The labels were ignored: only the other views of the same image are positives here (that is "
            "SimCLR's mask); SupCon adds every embedding with the same label.",
            lambda *a: _mask_variant(*a, use_labels=False)),
    Mistake("That mask has one row per image: there is one row per embedding, M = n_views * N (each image "
            "appears once per view).",
            lambda *a: _mask_variant(*a, views=False)),
    Mistake("The mask must be boolean (dtype torch.bool), not numbers: compare labels with == and combine "
            "with & and ~, without .float() or .long().",
            lambda *a: _positive_mask_reference(*a).float()),
    Mistake("The mask must be boolean (dtype torch.bool), not numbers: compare labels with == and combine "
            "with & and ~, without .float() or .long().",
            lambda *a: _positive_mask_reference(*a).long()),
]


def _mask_cases() -> list[Case]:
    def y(*values):
        return torch.tensor(values)

    return [
        Case("N=4 labelled images [0, 1, 0, 2], n_views=2", (y(0, 1, 0, 2), 2)),
        Case("N=6 images [0, -1, 1, -1, 0, 1] (two unlabelled), n_views=2", (y(0, -1, 1, -1, 0, 1), 2)),
        Case("N=5 images [2, -1, 2, 7, -1], n_views=3", (y(2, -1, 2, 7, -1), 3)),
        Case("N=4 images [-1, 0, 0, -1], n_views=1 (one view: an unlabelled image has no positive)",
             (y(-1, 0, 0, -1), 1)),
        Case("N=3 images, all unlabelled [-1, -1, -1], n_views=2 (SimCLR's positives)", (y(-1, -1, -1), 2)),
        Case("N=5 images [3, 3, 3, 3, 3], n_views=2", (y(3, 3, 3, 3, 3), 2)),
    ]


@task("11.positive_mask", "SupCon's boolean mask of positives over V views, -1 = unlabelled (own class)")
def check_positive_mask(answer) -> None:
    """Compare with the positives clcourse.methods.SupCon's loss uses (view-major, unlabelled_as_own_class)."""
    compare_with_reference(
        answer, _mask_cases(), _positive_mask_reference, _MASK_MISTAKES,
        generic_hint="Give each -1 a fresh class id (e.g. max(labels) + 1 + arange), flat = classes.repeat(V); "
                     "mask = (flat[:, None] == flat[None, :]) & ~torch.eye(V * N, dtype=torch.bool).",
    )
