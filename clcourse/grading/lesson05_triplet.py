"""Lesson 05 tasks: the chord margin that matches a cosine margin (a derivation), and FaceNet's semi-hard mining."""

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
    describe,
)
from clcourse.grading.registry import task

# --- 05.chord_margin -------------------------------------------------------------------------


def _chord_margin_reference(d_ap, cosine_margin):
    """The margin in chord units that asks exactly as much of a triplet as ``cosine_margin`` in cosine units.

    On the unit sphere the cosine distance is half the squared chord, c = d^2 / 2. A triplet with chord
    distances d_ap, d_an is satisfied in cosine units when (d_an^2 - d_ap^2) / 2 >= m_cos, i.e. when
    d_an >= sqrt(d_ap^2 + 2 m_cos), and in chord units when d_an >= d_ap + m. The margins agree when
    m = sqrt(d_ap^2 + 2 m_cos) - d_ap, which depends on d_ap: no single chord margin matches a cosine margin.
    d_ap: float or tensor [T] in [0, 2]; cosine_margin >= 0. Returns the same shape as d_ap (float64).
    """
    d = torch.as_tensor(d_ap, dtype=torch.float64)
    return torch.sqrt(d**2 + 2 * cosine_margin) - d


def _chord_variant(d_ap, m, *, kind):
    d = torch.as_tensor(d_ap, dtype=torch.float64)
    return {
        "twice": 2 * m + 0 * d,
        "root": torch.sqrt(torch.as_tensor(2 * m, dtype=torch.float64)) + 0 * d,
        "same": m + 0 * d,
        "no_two": torch.sqrt(d**2 + m) - d,
        "half": torch.sqrt(d**2 + m / 2) - d,
        "inverse": d - torch.sqrt(torch.clamp(d**2 - 2 * m, min=0)),
    }[kind]


_CHORD_MISTAKES = [
    Mistake("2 m_cos is the margin on the *squared* chords (c = d^2 / 2); the chord margin is a difference of "
            "chords: solve (d_an^2 - d_ap^2) / 2 = m_cos for d_an, then subtract d_ap.",
            lambda d, m: _chord_variant(d, m, kind="twice")),
    Mistake("sqrt(2 m_cos) is the chord margin only for d(a, p) = 0: the equivalent margin depends on d(a, p), "
            "because the square root is not linear: sqrt(d_ap^2 + 2 m_cos) - d_ap.",
            lambda d, m: _chord_variant(d, m, kind="root")),
    Mistake("The same number in both units: a margin must be read together with its distance. In cosine units "
            "the gap is measured on half the squared chords.",
            lambda d, m: _chord_variant(d, m, kind="same")),
    Mistake("The factor 2 is missing: c = d^2 / 2, so (d_an^2 - d_ap^2) / 2 >= m_cos means "
            "d_an^2 >= d_ap^2 + 2 m_cos.",
            lambda d, m: _chord_variant(d, m, kind="no_two")),
    Mistake("The factor is upside down: c = d^2 / 2 turns a cosine gap m_cos into a gap of 2 m_cos in squared "
            "chords, not m_cos / 2.",
            lambda d, m: _chord_variant(d, m, kind="half")),
    Mistake("The margin was measured below d(a, p) instead of above it: the negative must be farther, "
            "d_an = sqrt(d_ap^2 + 2 m_cos) > d_ap.",
            lambda d, m: _chord_variant(d, m, kind="inverse")),
]


def _chord_cases() -> list[Case]:
    return [
        Case("d(a, p) = 0.5, cosine margin 0.1 (FaceNet's alpha = 0.2, halved)", (0.5, 0.1)),
        Case("d(a, p) = 0 (anchor and positive coincide), cosine margin 0.1", (0.0, 0.1)),
        Case("d(a, p) = 1.2, cosine margin 0.3", (1.2, 0.3)),
        Case("d(a, p) = tensor([0.2, 0.8, 1.4]) (one margin per triplet), cosine margin 0.05",
             (torch.tensor([0.2, 0.8, 1.4], dtype=torch.float64), 0.05)),
        Case("d(a, p) = 0.9, cosine margin 0 (no margin in either unit)", (0.9, 0.0)),
        _random_chord_case(random.Random(case_seed(50))),
    ]


def _random_chord_case(rng: random.Random) -> Case:
    distance, margin = round(rng.uniform(0.05, 1.9), 4), round(rng.uniform(0.01, 0.5), 4)
    return Case(f"d(a, p) = {distance}, cosine margin {margin}", (distance, margin))


@task("05.chord_margin", "derive: the chord (Euclidean) margin that matches a cosine margin, per triplet", 2, answer="chord_margin")
def check_chord_margin(answer) -> None:
    """Compare with sqrt(d_ap^2 + 2 m_cos) - d_ap on settings the lesson does not print."""
    compare_with_reference(
        answer, _chord_cases(), _chord_margin_reference, _CHORD_MISTAKES,
        generic_hint="Write both conditions on d_an: cosine units, (d_an^2 - d_ap^2) / 2 >= m_cos; chord units, "
                     "d_an >= d_ap + m. Make them the same condition and solve for m.",
        compare=_same_number,
        hint_needs_every_case=True,
    )


def _same_number(got, expected) -> str | None:
    """Numbers and one-element or [T] tensors compare alike (a learner may return a float for a float d_ap)."""
    try:
        got = torch.as_tensor(got, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return f"expected a number or a tensor, got {type(got).__name__}"
    if got.shape != expected.shape:
        return f"expected shape {list(expected.shape)}, got {list(got.shape)}"
    if not torch.allclose(got, expected, rtol=1e-5, atol=1e-7):  # float32 answers are welcome
        return f"expected {expected.tolist()}, got {got.tolist()}"
    return None


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
    g = torch.Generator().manual_seed(case_seed(10))

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


@task("05.semi_hard", "FaceNet's semi-hard negative for every positive pair (with the least-hard fallback)", 2, answer="semi_hard")
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
