"""Lesson 05 tasks: the triplet margin loss, and FaceNet's semi-hard negative mining."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clcourse import losses
from clcourse.grading.harness import Case, Mistake, compare_with_reference, describe, keeps_gradient
from clcourse.grading.registry import task

# --- 05.triplet_loss -------------------------------------------------------------------------


def _triplet_variant(anchor, positive, negative, margin=0.2, *, normalize=True, squared=False,
                     hinge=True, sign=1.0, reduction="mean"):
    a, p, n = (F.normalize(x, dim=1) for x in (anchor, positive, negative)) if normalize else (
        anchor, positive, negative)
    d_ap, d_an = (a - p).norm(dim=1), (a - n).norm(dim=1)
    if squared:
        d_ap, d_an = d_ap ** 2, d_an ** 2
    violation = sign * (d_ap - d_an) + margin
    per_triplet = F.relu(violation) if hinge else violation
    return per_triplet.sum() if reduction == "sum" else per_triplet.mean()


_TRIPLET_MISTAKES = [
    Mistake("The embeddings are not L2-normalised: distances are measured on the unit sphere "
            "(F.normalize(x, dim=1) first).",
            lambda *a: _triplet_variant(*a, normalize=False)),
    Mistake("The hinge is missing: a triplet that already satisfies the margin costs 0, "
            "max(0, d(a, p) - d(a, n) + margin) (F.relu).",
            lambda *a: _triplet_variant(*a, hinge=False)),
    Mistake("Those are squared distances: use the Euclidean distance |a - p| (its square root).",
            lambda *a: _triplet_variant(*a, squared=True)),
    Mistake("The distances are swapped: the loss pushes d(a, p) below d(a, n), so the term is "
            "d(a, p) - d(a, n) + margin.",
            lambda *a: _triplet_variant(*a, sign=-1.0)),
    Mistake("The triplet losses are summed: take their mean.",
            lambda *a: _triplet_variant(*a, reduction="sum")),
]


def _triplet_cases() -> list[Case]:
    g = torch.Generator().manual_seed(9)

    def triplets(t, d, dtype=torch.float32, scale=1.0):
        a = torch.randn(t, d, generator=g, dtype=torch.float64) * scale
        return (a.to(dtype), (a + 0.7 * torch.randn(t, d, generator=g, dtype=torch.float64)).to(dtype),
                (torch.randn(t, d, generator=g, dtype=torch.float64) * scale).to(dtype))

    a, p, n = triplets(10, 8)
    return [
        Case("T=10 random triplets that require gradients, D=8, margin=0.2",
             (a.requires_grad_(), p, n, 0.2)),
        Case("T=6 triplets with norms around 5 (not unit vectors), margin=0.5", (*triplets(6, 4, scale=5.0), 0.5)),
        Case("T=8 triplets, margin=1.0 (most triplets violate it)", (*triplets(8, 6), 1.0)),
        Case("T=1 triplet, margin=0.0", (*triplets(1, 3), 0.0)),
        Case("T=5, float64 (keep the dtype), margin=0.3", (*triplets(5, 4, dtype=torch.float64), 0.3)),
        Case("T=0 triplets (mining found none): the loss is 0, not NaN",
             (torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0, 4), 0.2)),
    ]


@task("05.triplet_loss", "the triplet margin loss on L2-normalised embeddings (FaceNet)")
def check_triplet_loss(answer) -> None:
    """Compare with clcourse.losses.triplet_margin (Euclidean distance)."""
    compare_with_reference(
        answer, _triplet_cases(), losses.triplet_margin, _TRIPLET_MISTAKES,
        generic_hint="Normalise a, p, n; loss = mean over triplets of max(0, |a - p| - |a - n| + margin); "
                     "with no triplets return a zero that stays in the graph (e.g. a.sum() * 0).",
        properties=[keeps_gradient],
    )


# --- 05.semi_hard ----------------------------------------------------------------------------


def _semi_hard_variant(embeddings, labels, margin=0.2, *, normalize=True, squared=False, allow_self=False,
                       upper_bound=True, pick="nearest", fallback=True, negatives_by_label=True):
    x = F.normalize(embeddings, dim=1) if normalize else embeddings
    dist = torch.cdist(x, x) ** (2 if squared else 1)
    same = labels[:, None] == labels[None, :]
    pos_mask = same if allow_self else same & ~torch.eye(len(labels), dtype=torch.bool)
    neg_mask = ~same if negatives_by_label else ~torch.eye(len(labels), dtype=torch.bool)
    a, p = pos_mask.nonzero(as_tuple=True)
    d_ap, d_an, negative = dist[a, p][:, None], dist[a], neg_mask[a]
    inside = negative & (d_an > d_ap) & ((d_an < d_ap + margin) if upper_bound else True)
    if pick == "hardest":
        inside = negative
    hard = negative & (d_an <= d_ap)
    has = inside.any(dim=1)
    chosen_in = (d_an.masked_fill(~inside, float("-inf")).argmax(dim=1) if pick == "farthest"
                 else d_an.masked_fill(~inside, float("inf")).argmin(dim=1))
    chosen = torch.where(has, chosen_in, d_an.masked_fill(~hard, float("-inf")).argmax(dim=1))
    keep = has | (hard.any(dim=1) if fallback else False)
    return a[keep], p[keep], chosen[keep]


def _as_triplet_table(fn):
    """Wrap a miner so that its output is one int64 [T, 3] table in (a, p, n) order, whatever its order."""
    def table(*args):
        out = fn(*args)
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            return out
        rows = sorted(zip(*(torch.as_tensor(t).flatten().tolist() for t in out)))
        return [tuple(int(i) for i in row) for row in rows]
    return table


def _triplet_difference(got, expected) -> str | None:
    if not isinstance(got, list):
        return f"expected a tuple of three index tensors (anchors, positives, negatives), got {describe(got)}"
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if not missing and not extra and len(got) == len(expected):
        return None
    parts = [f"{len(got)} triplets instead of {len(expected)}"]
    if missing:
        parts.append(f"missing {_few(missing)}")
    if extra:
        parts.append(f"not expected {_few(extra)}")
    return "; ".join(parts)


def _few(rows, k: int = 4) -> str:
    return ", ".join(map(str, rows[:k])) + (f" and {len(rows) - k} more" if len(rows) > k else "")


def _describe_triplets(rows) -> str:
    if not isinstance(rows, list):
        return describe(rows)
    return f"{len(rows)} triplets (a, p, n): {_few(rows, 6)}"


_SEMI_HARD_MISTAKES = [
    Mistake(hint, _as_triplet_table(lambda e, l, m=0.2, kw=kw: _semi_hard_variant(e, l, m, **kw)))
    for hint, kw in [
        ("Those are the hardest negatives (the nearest of all). Semi-hard negatives are farther than the "
         "positive: d(a, p) < d(a, n).", {"pick": "hardest"}),
        ("The margin bound is missing: semi-hard negatives lie inside the margin, "
         "d(a, n) < d(a, p) + margin (farther ones would give a zero loss).", {"upper_bound": False}),
        ("Take the *nearest* semi-hard negative, not the farthest.", {"pick": "farthest"}),
        ("The fallback is missing: when a pair has no semi-hard negative but has hard ones "
         "(d(a, n) <= d(a, p)), use the least hard of them (the farthest).", {"fallback": False}),
        ("An anchor was paired with itself as the positive: a positive is *another* sample with the same label.",
         {"allow_self": True}),
        ("Samples with the anchor's label were used as negatives: a negative has a different label.",
         {"negatives_by_label": False}),
        ("The embeddings are not L2-normalised: distances are measured on the unit sphere.",
         {"normalize": False}),
        ("Those are squared distances: use the Euclidean distance (torch.cdist), as the triplet loss does.",
         {"squared": True}),
    ]
]


def _semi_hard_cases() -> list[Case]:
    g = torch.Generator().manual_seed(10)

    def batch(n, d, classes):
        labels = torch.arange(n) % classes
        centres = torch.randn(classes, d, generator=g)
        return centres[labels] + 0.9 * torch.randn(n, d, generator=g), labels

    three = batch(12, 3, 3)
    singles = (torch.randn(7, 2, generator=g), torch.tensor([0, 0, 1, 1, 1, 2, 3]))
    return [
        Case("N=12 embeddings in D=3, 3 classes, margin=0.2", (*three, 0.2)),
        Case("N=10, D=2, 2 classes, margin=0.5", (*batch(10, 2, 2), 0.5)),
        Case("the same 12 embeddings, margin=0.0 (no negative can be semi-hard)", (*three, 0.0)),
        Case("the same 12 embeddings, margin=3.0 (larger than any distance on the unit sphere)", (*three, 3.0)),
        Case("N=7, classes 2 and 3 have a single sample (no positive for them), margin=0.3", (*singles, 0.3)),
    ]


@task("05.semi_hard", "FaceNet's semi-hard negative for every positive pair (with the least-hard fallback)", 2)
def check_semi_hard(answer) -> None:
    """Compare the set of triplets with clcourse.losses.mine_triplets(..., "semi-hard")."""
    reference = _as_triplet_table(lambda e, l, m: losses.mine_triplets(e, l, "semi-hard", m))
    compare_with_reference(
        _as_triplet_table(answer), _semi_hard_cases(), reference, _SEMI_HARD_MISTAKES,
        generic_hint="For each pair a != p with the same label: among negatives (other label) with "
                     "d(a, p) < d(a, n) < d(a, p) + margin take the nearest; if none, the farthest with "
                     "d(a, n) <= d(a, p); if none either, skip the pair. Return (a, p, n) index tensors.",
        compare=_triplet_difference, show=_describe_triplets,
    )
