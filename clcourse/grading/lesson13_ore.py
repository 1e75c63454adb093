"""Lesson 13 tasks: ORE's contrastive clustering loss, and a derivation of the open-set figures (A-OSE and the
wilderness impact) of a small scene.

[1] Joseph et al., Towards Open World Object Detection (ORE), CVPR 2021.
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from clcourse import detection_metrics, losses
from clcourse.grading.harness import (
    Case,
    Failure,
    Mistake,
    NotAttempted,
    _learner_line,
    call_answer,
    case_seed,
    compare_with_reference,
    keeps_gradient,
    probe,
    require_same_gradient,
    run_case_probe,
    run_probe,
)
from clcourse.grading.registry import task

# --- 13.clustering ---------------------------------------------------------------------------


def _clustering_reference(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor,
                          margin: float = 10.0, *, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Eqs. 1-2 of [1] in their Euclidean form: clcourse.losses.contrastive_clustering.

    Shapes: features [N, D], labels [N] int64 in [0, C) ("unknown" is one of the C classes, the last in [1]),
    prototypes [C, D], valid [C] bool or None (every prototype valid); returns a scalar: the mean over the N
    features of D(f, p_c) + sum_{i != c, valid} max(0, margin - D(f, p_i)), the own term left out too when
    p_c is not valid.
    """
    return losses.contrastive_clustering(features, labels, prototypes, margin, valid=valid)


def _clustering_variant(features, labels, prototypes, margin=10.0, *, valid=None, distance="euclidean", own="pull",
                        others="hinge", mask="all", none_means="all", reduce="mean"):
    """The loss with one slip (the defaults compute the reference), in float64, returned in the reference's dtype.

    Shapes as :func:`_clustering_reference`. distance: "euclidean", "squared" (D^2 everywhere), "normalised"
    (Euclidean between L2-normalised rows) or "p_norm" (torch.cdist with p = margin, as [1]'s code writes it).
    own: the term of the own prototype, "pull" (D), "hinge" (max(0, margin - D), as for the others) or "none".
    others: "hinge" (summed), "reversed" (max(0, D - margin)), "squared_hinge" (max(0, margin - D)^2), "max"
    (only the largest hinge) or "mean" (hinges averaged over the other valid prototypes). mask: "all" (both
    terms of an invalid prototype left out), "ignored" or "push_only" (the own term always kept). none_means:
    what valid=None stands for, "all" or "none" (no prototype valid). reduce: "mean" over the features, "sum",
    or "pairs" (the mean over the N x C terms).
    """
    dtype = torch.promote_types(features.dtype, torch.float32)
    f, p = features.double(), prototypes.double()
    n, c = f.shape[0], p.shape[0]
    if distance == "normalised":
        f, p = F.normalize(f, dim=1), F.normalize(p, dim=1)
    d = torch.cdist(f, p, p=margin if distance == "p_norm" else 2.0)
    if distance == "squared":
        d = d**2
    if valid is None:
        valid = torch.full((c,), none_means == "all")
    if mask == "ignored":
        valid = torch.ones(c, dtype=torch.bool)
    is_own = F.one_hot(labels.long(), c).bool()
    keep = valid[None, :].expand(n, c)
    own_term = {"pull": d, "hinge": (margin - d).clamp_min(0.0), "none": torch.zeros_like(d)}[own]
    hinge = (d - margin if others == "reversed" else margin - d).clamp_min(0.0)
    if others == "squared_hinge":
        hinge = hinge**2
    push = (hinge * (keep & ~is_own)).sum(dim=1)
    if others == "max":
        push = (hinge * (keep & ~is_own)).amax(dim=1) if c > 1 else push
    elif others == "mean":
        push = push / (keep & ~is_own).sum(dim=1).clamp_min(1)
    pull_keep = is_own if mask == "push_only" else is_own & keep
    per_feature = (own_term * pull_keep).sum(dim=1) + push
    if reduce == "sum":
        loss = per_feature.sum()
    elif reduce == "pairs":
        loss = per_feature.sum() / (n * c)
    else:
        loss = per_feature.mean()
    return loss.to(dtype)


_EQUATION = ("l(f_c) = D(f_c, p_c) + sum over the other valid prototypes i of max(0, margin - D(f_c, p_i)), D the "
             "Euclidean distance, averaged over the N features.")

_CLUSTERING_MISTAKES = [
    Mistake("The distance is squared: D in [1]'s eqs. 1-2 is the Euclidean distance |f - p|, not |f - p|^2 (use "
            "torch.cdist(features, prototypes), or (f - p).norm(dim=-1), not ((f - p) ** 2).sum(-1)). " + _EQUATION,
            lambda *a, **k: _clustering_variant(*a, **k, distance="squared")),
    Mistake("The features (and prototypes) were L2-normalised, or a cosine distance used: ORE clusters the raw RoI "
            "features, with the Euclidean distance between them. On unit vectors every distance is at most 2, so "
            "with a margin of 10 no prototype could ever be pushed far enough.",
            lambda *a, **k: _clustering_variant(*a, **k, distance="normalised")),
    Mistake("That is torch.cdist(..., p=margin), a margin-norm: [1]'s code writes it so, but its eqs. 1-2 (and this "
            "task) use the Euclidean distance, p=2.",
            lambda *a, **k: _clustering_variant(*a, **k, distance="p_norm")),
    Mistake("The own prototype got the hinge too, max(0, margin - D(f_c, p_c)), as if it were one of the others: "
            "the pull term is missing. A feature's own class's prototype attracts it with D(f_c, p_c) itself; only "
            "the other prototypes get max(0, margin - D).",
            lambda *a, **k: _clustering_variant(*a, **k, own="hinge")),
    Mistake("The pull term is missing: each feature must also add its distance to its own class's prototype, "
            "D(f_c, p_c). With only the push term, a feature far from every prototype would cost nothing.",
            lambda *a, **k: _clustering_variant(*a, **k, own="none")),
    Mistake("The margin is applied the wrong way round: max(0, D - margin) penalises the other prototypes for "
            "being *far*. The push term is max(0, margin - D): a cost while another prototype is closer than the "
            "margin, 0 beyond it.",
            lambda *a, **k: _clustering_variant(*a, **k, others="reversed")),
    Mistake("The hinge is squared, max(0, margin - D)^2 (Hadsell et al.'s contrastive loss): ORE's eq. 1 uses "
            "max(0, margin - D) itself.",
            lambda *a, **k: _clustering_variant(*a, **k, others="squared_hinge")),
    Mistake("Only the largest hinge was kept (max over the other prototypes): eq. 2 sums the terms of all C "
            "prototypes, so every other prototype closer than the margin adds its max(0, margin - D).",
            lambda *a, **k: _clustering_variant(*a, **k, others="max")),
    Mistake("The hinges were averaged over the other prototypes: eq. 2 sums them (l(f_c) = sum_i l_i), so a "
            "feature with two close impostors costs twice as much as one with one.",
            lambda *a, **k: _clustering_variant(*a, **k, others="mean")),
    Mistake("The valid mask is not applied: a prototype that is not valid has not been computed yet (its class "
            "has no stored features: a zero vector or a stale value), so both its terms, the pull of its own "
            "features and the push of the others, must be 0. Multiply the [N, C] terms by valid.",
            lambda *a, **k: _clustering_variant(*a, **k, mask="ignored")),
    Mistake("The valid mask was applied to the push terms only: a feature whose own class's prototype is not "
            "valid must not be pulled towards it either (there is nothing yet to pull towards). Mask the whole "
            "[N, C] matrix of terms, the own term included.",
            lambda *a, **k: _clustering_variant(*a, **k, mask="push_only")),
    Mistake("valid=None (the default) was taken as 'no prototype valid': None means every prototype is valid, "
            "as in valid = torch.ones(C, dtype=torch.bool).",
            lambda *a, **k: _clustering_variant(*a, **k, none_means="none")),
    Mistake("The terms are summed over the features: the loss is their mean over the N features (sum over the "
            "prototypes, then mean over the features).",
            lambda *a, **k: _clustering_variant(*a, **k, reduce="sum")),
    Mistake("The terms were averaged over all N x C (feature, prototype) pairs: sum each feature's terms over "
            "the C prototypes (eq. 2), then average over the N features only.",
            lambda *a, **k: _clustering_variant(*a, **k, reduce="pairs")),
]


def _clustering_cases() -> list[Case]:
    g = torch.Generator().manual_seed(case_seed(130))
    rng = random.Random(case_seed(131))

    def batch(labels, c, d, margin=10.0, *, dtype=torch.float32, grad=False):
        """Prototypes [c, d] about ``margin`` apart and features about margin / 3 from their class's prototype, so
        that about half of the other prototypes lie within the margin."""
        labels = torch.tensor(labels)
        prototypes = torch.randn(c, d, generator=g, dtype=torch.float64) * margin / math.sqrt(2 * d)
        noise = torch.randn(len(labels), d, generator=g, dtype=torch.float64) * margin / (3 * math.sqrt(d))
        return (prototypes[labels] + noise).to(dtype).requires_grad_(grad), labels, prototypes.to(dtype)

    def shuffled(c, n):
        labels = [i % c for i in range(n)]
        rng.shuffle(labels)
        return labels

    def valid(*flags):
        return {"valid": torch.tensor(flags)}

    turn = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))[0]
    corners = (20.0 * turn).float()  # 4 prototypes, each 20 * sqrt(2) from the others
    on_labels = torch.tensor([0, 1, 2, 3, 3, 1])
    far = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0][:3] * 40.0
    far_labels = torch.tensor([0, 1, 2, 2, 1, 0, 2, 1, 0, 2])
    near_far = far[far_labels] + torch.randn(10, 6, generator=g, dtype=torch.float64)
    voc = batch(shuffled(21, 20), 21, 16, grad=True)
    n, c, d = rng.randint(2, 16), rng.randint(2, 8), rng.randint(2, 10)
    drawn_margin = rng.choice([1.0, 3.0, 5.0, 10.0, 20.0])
    drawn_labels = [rng.randrange(c) for _ in range(n - 1)] + [c - 1]
    drawn = batch(drawn_labels, c, d, drawn_margin)
    return [
        Case("N=8 features in 4-d that require gradients, C=3 prototypes (classes 0, 1 and 'unknown' = 2, the last), "
             "margin=10, valid not given", (*batch([0, 1, 2, 0, 2, 1, 2, 0], 3, 4, grad=True), 10.0)),
        Case("N=12, D=8, C=5 (4 known classes and 'unknown' = 4) that require gradients, margin=10, "
             "valid=[True, False, True, False, True]: prototypes 1 and 3 not computed yet, though features of their "
             "classes are in the batch", (*batch(shuffled(5, 12), 5, 8, grad=True), 10.0),
             valid(True, False, True, False, True)),
        Case("N=6 features (requiring gradients) exactly on their prototypes, every other prototype 28 away (C=4, "
             "D=4), margin=10: the loss is 0",
             (corners[on_labels].clone().requires_grad_(), on_labels, corners.clone(), 10.0)),
        Case("N=10, D=6, C=3, features about 2.5 from their prototype, every other prototype about 57 away, "
             "margin=10: only the pull term is left", (near_far.float().requires_grad_(), far_labels, far.float(),
                                                       10.0)),
        Case("N=1 feature, labelled 'unknown' = 3 (the last of C=4), D=5, margin=5",
             (*batch([3], 4, 5, 5.0), 5.0)),
        Case("N=9, D=4, C=3 in float64 (keep the dtype), margin=2.0, valid=[True, True, True] given",
             (*batch(shuffled(3, 9), 3, 4, 2.0, dtype=torch.float64), 2.0),
             valid(True, True, True)),
        Case("N=7, D=3, C=4, margin=10, valid=None passed explicitly (every prototype valid)",
             (*batch(shuffled(4, 7), 4, 3), 10.0), {"valid": None}),
        Case("N=6, D=4, C=3, margin=10, valid=[False, False, False] (before the first prototypes: the loss is 0)",
             (*batch(shuffled(3, 6), 3, 4), 10.0), valid(False, False, False)),
        Case("N=20 features in 16-d that require gradients, C=21 (20 known classes, as in [1]'s first task, and "
             "'unknown' = 20), margin=10, prototypes 7 and 20 not valid yet",
             (*voc, 10.0), valid(*[i not in (7, 20) for i in range(21)])),
        Case(f"N={n}, D={d}, C={c} (the last feature labelled {c - 1}, the last class), margin={drawn_margin}",
             (*drawn, drawn_margin)),
    ]


@probe
def _clustering_gradient(answer, features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor,
                         margin: float, valid):
    """The gradient of ``answer(features, labels, prototypes, margin, valid=...)`` with respect to the features
    [N, D], or ``None`` when the loss is not a scalar tensor in their graph. ``valid`` is "default" when the case
    leaves it out."""
    x = features.detach().clone().requires_grad_()
    kwargs = {} if isinstance(valid, str) else {"valid": valid}
    loss = call_answer(answer, (x, labels, prototypes, margin), kwargs, "")
    if not (isinstance(loss, torch.Tensor) and loss.requires_grad and loss.numel() == 1):
        return None
    (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad


def _reference_gradient(features, labels, prototypes, margin, valid):
    x = features.detach().clone().requires_grad_()
    kwargs = {} if isinstance(valid, str) else {"valid": valid}
    return torch.autograd.grad(_clustering_reference(x, labels, prototypes, margin, **kwargs), x)[0]


_GRADIENT_HINT = ("The loss has the right value but not the right gradient with respect to the features: part of "
                  "it is cut from the graph (.detach(), .item(), .data, torch.no_grad()) or a value was written "
                  "into a tensor in place. Build every step from the features with torch operations.")
_SQRT_HINT = ("The gradient is NaN where a feature sits exactly on a prototype: torch.sqrt(((f - p) ** 2).sum()) "
              "has an infinite derivative at 0 (and 0 * inf = NaN). Use torch.cdist(features, prototypes) or "
              "(f - p).norm(dim=-1), whose gradient at 0 is 0, or add a tiny epsilon inside the square root.")


def _check_gradients(answer, cases: list[Case]) -> None:
    """On the cases whose features require gradients, the answer's gradient must be the reference's."""
    for case in cases:
        features, labels, prototypes, margin = case.args
        if not features.requires_grad:
            continue
        valid = case.kwargs.get("valid", "default")
        got = run_case_probe(answer, case, _clustering_gradient, features, labels, prototypes, margin, valid)
        expected = _reference_gradient(features, labels, prototypes, margin, valid)
        if got is None:
            raise Failure(case.name, "the loss is cut off from the features' gradients", hint=_GRADIENT_HINT)
        if isinstance(got, torch.Tensor) and bool(torch.isnan(got).any()) and not bool(torch.isnan(expected).any()):
            raise Failure(case.name, "the gradient with respect to the features contains NaN", hint=_SQRT_HINT)
        require_same_gradient(case, got, expected, "the features", _GRADIENT_HINT, rtol=1e-4, atol=1e-5)


_BOOL_SUBTRACTION = "Subtraction, the `-` operator, with a bool tensor"


def _bool_subtraction_is_a_bug(answer):
    """``answer``, except that torch's NotImplementedError for ``1 - valid`` (a bool tensor) becomes a TypeError:
    it is the learner's bug, not a stub that was never filled in."""
    if not callable(answer):
        return answer

    def call(*args, **kwargs):
        try:
            return answer(*args, **kwargs)
        except NotImplementedError as exc:
            if _BOOL_SUBTRACTION not in str(exc):
                raise
            error = TypeError(str(exc))
            error.learner_line = _learner_line(exc)
            raise error from None

    return call


@task("13.clustering", "ORE's contrastive clustering loss (eqs. 1-2): pull to the own prototype, hinge-push from "
      "the others, invalid prototypes left out", 2, answer="contrastive_clustering")
def check_clustering(answer) -> None:
    """Compare with clcourse.losses.contrastive_clustering (values), then the gradients w.r.t. the features."""
    cases = _clustering_cases()
    compare_with_reference(
        _bool_subtraction_is_a_bug(answer), cases, _clustering_reference, _CLUSTERING_MISTAKES,
        generic_hint="distances = torch.cdist(features, prototypes) [N, C]; own = one-hot of the labels [N, C] "
                     "(bool); terms = distances where own, else (margin - distances).clamp(min=0); multiply by "
                     "valid (all True when None), sum over the C prototypes, mean over the N features.",
        error_hints=[
            (r"NoneType", "valid=None (the default) means every prototype is valid: start with `if valid is None: "
                          "valid = torch.ones(C, dtype=torch.bool)`."),
            (_BOOL_SUBTRACTION, "valid is a bool tensor: invert it with ~valid, or turn it into 0 / 1 with "
                                "valid.float()."),
            (r"leaf Variable that requires grad.*in-place",
             "Use out-of-place operations (d = d * m, not d *= m or features.sub_(...)): the caller still needs its "
             "features, and autograd needs them unchanged."),
        ],
        properties=[keeps_gradient],
    )
    _check_gradients(answer, cases)


# --- 13.wilderness ---------------------------------------------------------------------------

KNOWN = (0, 1)  # car, person
UNKNOWN_LABEL = 2  # a detection that calls its object "unknown"
CLASS_NAMES = {0: "car", 1: "person", 2: "unknown", 3: "horse", 4: "dog"}

# The scene's ground truth: (name, box (x0, y0, x1, y1), true class); horse and dog are not known classes.
OBJECTS = [
    ("A", (0, 0, 20, 10), 0),
    ("B", (30, 0, 50, 10), 0),
    ("C", (0, 20, 10, 40), 1),
    ("D", (20, 20, 30, 40), 1),
    ("E", (40, 20, 60, 40), 3),
    ("F", (70, 0, 80, 20), 4),
]
# The detector's output, best score first: (number, box, score, label).
DETECTIONS = [
    (1, (40, 20, 60, 40), 0.95, 0),
    (2, (60, 40, 80, 50), 0.93, 1),
    (3, (0, 20, 10, 40), 0.90, 1),
    (4, (70, 0, 80, 20), 0.88, 0),
    (5, (0, 0, 20, 10), 0.85, 0),
    (6, (40, 20, 60, 40), 0.80, 1),
    (7, (70, 0, 80, 20), 0.75, 2),
    (8, (30, 0, 50, 10), 0.70, 0),
    (9, (20, 20, 30, 40), 0.60, 1),
    (10, (40, 20, 60, 40), 0.55, 2),
    (11, (70, 0, 80, 10), 0.50, 0),
    (12, (0, 20, 10, 40), 0.45, 1),
]


def scene_markdown(objects=OBJECTS, detections=DETECTIONS) -> str:
    """The scene as the exercise notebook prints it: a map of the ground truth and two tables."""
    width = max(box[2] for _, box, _ in objects) // 10
    height = max(max(box[3] for _, box, _ in objects), max(box[3] for _, box, _, _ in detections)) // 10
    rows = ["y \\ x  " + "".join(f"{10 * i:<4}" for i in range(width + 1)).rstrip()]
    for y in range(height):
        cells = ""
        for x in range(width):
            inside = [name for name, (x0, y0, x1, y1), _ in objects if x0 <= 10 * x < x1 and y0 <= 10 * y < y1]
            cells += (inside[0] * 4) if inside else " .  "
        rows.append(f"{10 * y:>5}  {cells}".rstrip())
    known = ", ".join(CLASS_NAMES[k] for k in KNOWN)
    lines = ["```", *rows, "```", "", f"Ground truth (known classes: {known}):", "",
             "| object | box (x0, y0, x1, y1) | class |", "| --- | --- | --- |"]
    for name, box, label in objects:
        kind = "known" if label in KNOWN else "**unknown object**: not a known class"
        lines.append(f"| {name} | {box} | {CLASS_NAMES[label]} ({kind}) |")
    lines += ["", "Detections, best score first:", "", "| # | score | label | box (x0, y0, x1, y1) |",
              "| --- | --- | --- | --- |"]
    for number, box, score, label in detections:
        lines.append(f"| {number} | {score:.2f} | {CLASS_NAMES[label]} | {box} |")
    return "\n".join(lines)


def scene_tensors(objects=OBJECTS, detections=DETECTIONS) -> tuple[list, list]:
    """The scene as one image for clcourse.detection_metrics: ([(boxes [D, 4], scores [D], labels [D])],
    [(boxes [G, 4], labels [G])])."""
    det_boxes = torch.tensor([box for _, box, _, _ in detections], dtype=torch.float32).reshape(-1, 4)
    scores = torch.tensor([score for _, _, score, _ in detections], dtype=torch.float32)
    det_labels = torch.tensor([label for _, _, _, label in detections], dtype=torch.long)
    gt_boxes = torch.tensor([box for _, box, _ in objects], dtype=torch.float32).reshape(-1, 4)
    gt_labels = torch.tensor([label for _, _, label in objects], dtype=torch.long)
    return [(det_boxes, scores, det_labels)], [(gt_boxes, gt_labels)]


def _figures_reference(recall_level: float) -> tuple[int, float]:
    """(A-OSE, WI at ``recall_level``) of the scene, as clcourse.detection_metrics.open_world_metrics gives them."""
    detections, ground_truth = scene_tensors()
    metrics = detection_metrics.open_world_metrics(detections, ground_truth, KNOWN, UNKNOWN_LABEL,
                                                   recall_level=recall_level)
    return int(metrics["a_ose"]), float(metrics["wilderness_impact"])


def _open_set_variant(objects, detections, recall_level, *, known=KNOWN, unknown_label=UNKNOWN_LABEL,
                      threshold=0.5, at_threshold=False, unknown_labelled=False, background=False,
                      per_object=False, aose_at_level=False, read="closest", combine="ratio_of_means",
                      ratio="errors_over_detections"):
    """(A-OSE, WI) of one image, computed detection by detection with one slip (the defaults: the reference).

    objects: (name, box, class) rows; detections: (number, box, score, label) rows. at_threshold: an IoU equal to
    the threshold counts as an overlap. unknown_labelled: A-OSE also counts detections labelled unknown on unknown
    objects. background: a known-labelled detection that overlaps no object at all counts as an open-set error
    too (A-OSE and WI). per_object: A-OSE counts the unknown objects taken for a known class, not the detections.
    aose_at_level: A-OSE sums the classes' open-set errors up to the rank WI reads. read: the rank of each class
    read for WI, "closest" (the first whose recall is closest to the level), "last_closest", "end" (the whole
    list) or "at_least" (the first whose recall reaches the level). combine: "ratio_of_means" or
    "mean_of_ratios" over the classes. ratio, with E and N the means of the open-set errors and of the detections
    read: "errors_over_detections" (E / N), "paper" (E / (N - E)), "no_minus_one" (N / (N - E)) or "inverted"
    ((N - E) / N).
    """
    def above(iou: float) -> bool:
        return iou >= threshold if at_threshold else iou > threshold

    boxes = torch.tensor([box for _, box, _ in objects], dtype=torch.float64).reshape(-1, 4)
    classes = [label for _, _, label in objects]
    unknown = [j for j, label in enumerate(classes) if label not in known]
    order = sorted(range(len(detections)), key=lambda i: -detections[i][2])  # stable: ties keep their order
    overlaps = {i: box_iou(torch.tensor([detections[i][1]], dtype=torch.float64), boxes)[0].tolist()
                for i in order}

    errors_on = {}  # detection -> the unknown objects it lies on, for the known-labelled errors
    curves = {}  # class -> [(recall, detections so far, open-set errors so far)]
    for c in known:
        targets = [j for j, label in enumerate(classes) if label == c]
        if not targets:
            continue
        matched, hits, errors, rows = set(), 0, 0, []
        for i in order:
            if detections[i][3] != c:
                continue
            iou = overlaps[i]
            best = max(targets, key=lambda j: iou[j])  # the first of equal overlaps, as argmax
            if above(iou[best]) and best not in matched:
                matched.add(best)
                hits += 1
            on = [j for j in unknown if above(iou[j])]
            nothing = not any(above(v) for v in iou)
            if on or (background and nothing):
                errors += 1
                errors_on[i] = on
            rows.append((hits / len(targets), len(rows) + 1, errors))
        curves[c] = rows
    for i in order:  # the known classes without objects still count in A-OSE
        label = detections[i][3]
        if label in known and label not in curves:
            on = [j for j in unknown if above(overlaps[i][j])]
            if on:
                errors_on[i] = on
    a_ose = len({j for on in errors_on.values() for j in on}) if per_object else len(errors_on)
    if unknown_labelled:
        a_ose += sum(1 for i in order if detections[i][3] == unknown_label
                     and any(above(overlaps[i][j]) for j in unknown))

    read_rows = []
    for rows in curves.values():
        if not rows:
            continue
        gaps = [abs(recall - recall_level) for recall, _, _ in rows]
        if read == "closest":
            k = gaps.index(min(gaps))
        elif read == "last_closest":
            k = len(gaps) - 1 - gaps[::-1].index(min(gaps))
        elif read == "at_least":
            k = next((k for k, (recall, _, _) in enumerate(rows) if recall >= recall_level), len(rows) - 1)
        else:
            k = len(rows) - 1
        read_rows.append(rows[k][1:])
    if aose_at_level:
        a_ose = sum(e for _, e in read_rows)
    if not read_rows:
        return a_ose, 0.0
    if combine == "mean_of_ratios":
        return a_ose, sum(e / n for n, e in read_rows) / len(read_rows)
    n = sum(n for n, _ in read_rows) / len(read_rows)
    e = sum(e for _, e in read_rows) / len(read_rows)
    wi = {"errors_over_detections": lambda: e / n, "paper": lambda: e / (n - e) if n > e else math.inf,
          "no_minus_one": lambda: n / (n - e) if n > e else math.inf, "inverted": lambda: (n - e) / n}[ratio]()
    return a_ose, wi


def _figures_variant(recall_level, **slip):
    """:func:`_open_set_variant` on the scene."""
    return _open_set_variant(OBJECTS, DETECTIONS, recall_level, **slip)


_WI_RULE = ("WI at a recall level r: for each known class, walk down its own detections (best score first) and "
            "stop at the first one whose recall is closest to r; WI = (mean of the classes' open-set errors so "
            "far) / (mean of their detections so far).")

_FIGURES_MISTAKES = [
    Mistake("Detections *labelled unknown* on an unknown object were counted as open-set errors: they are exactly "
            "what an open-world detector should do. A-OSE counts only detections labelled as a *known* class that "
            "lie on an unknown object.",
            lambda r: _figures_variant(r, unknown_labelled=True)),
    Mistake("False positives on the background (a detection that overlaps no object at all) were counted as "
            "open-set errors: an open-set error lies on an *unknown object* (IoU above 0.5). A detection on "
            "nothing is an ordinary false positive: it lowers precision, but neither A-OSE nor WI's numerator "
            "counts it.",
            lambda r: _figures_variant(r, background=True)),
    Mistake("A-OSE was counted once per unknown object: it counts *detections*. The horse taken for a car and "
            "again for a person makes two open-set errors.",
            lambda r: _figures_variant(r, per_object=True)),
    Mistake("An IoU of exactly 0.5 was taken as an overlap: a detection lies on an object when their IoU is "
            "*above* 0.5 (strictly), as in VOC's matching.",
            lambda r: _figures_variant(r, at_threshold=True)),
    Mistake("A-OSE was counted only down to the rank WI reads: A-OSE is not read at a recall level, it counts the "
            "open-set errors over *all* the detections, at every score.",
            lambda r: _figures_variant(r, aose_at_level=True)),
    Mistake("WI was read at the end of each class's list (all its detections): WI is read at a recall level, at "
            "the rank of each class whose recall is closest to it. " + _WI_RULE,
            lambda r: _figures_variant(r, read="end")),
    Mistake("WI was read at the *last* detection whose recall is closest to the level: recall stays flat along a "
            "run of false positives, and the rank read is the *first* of them (ORE's code takes the first index "
            "of the smallest |recall - r|). " + _WI_RULE,
            lambda r: _figures_variant(r, read="last_closest")),
    Mistake("WI was read at the first detection whose recall *reaches* the level: the rank read is the one whose "
            "recall is *closest* to it, which may lie below (recall 0 is closer to 0.2 than 0.5 is).",
            lambda r: _figures_variant(r, read="at_least")),
    Mistake("WI was averaged class by class (the mean of the ratios errors / detections): it is the ratio of the "
            "means, (mean open-set errors) / (mean detections) over the known classes, so a class with more "
            "detections at the level weighs more.",
            lambda r: _figures_variant(r, combine="mean_of_ratios")),
    Mistake("That is E / (N - E), the paper's P_K / P_K+U - 1 with P_K counted without the detections on unknown "
            "objects. ORE's code, which this course follows, divides by all the detections read, the open-set "
            "errors included: WI = E / N (E, N the means of the open-set errors and of the detections).",
            lambda r: _figures_variant(r, ratio="paper")),
    Mistake("That is N / (N - E), the precision ratio P_K / P_K+U without the '- 1': WI measures the *extra*, "
            "P_K / P_K+U - 1, which ORE's code computes as E / N (E, N the means of the open-set errors and of "
            "the detections read).",
            lambda r: _figures_variant(r, ratio="no_minus_one")),
    Mistake("That is (N - E) / N = 1 - WI, the share of the detections read that are *not* open-set errors (the "
            "precision ratio inverted): WI = E / N, the share that are.",
            lambda r: _figures_variant(r, ratio="inverted")),
]


def _figures_cases() -> list[Case]:
    rng = random.Random(case_seed(132))
    # the per-class recalls are multiples of 1/2: a level at their midpoints (0.25, 0.75) would be a tie
    drawn = rng.choice([0.05, 0.15, 0.3, 0.4, 0.45, 0.55, 0.65, 0.7, 0.85, 0.9, 0.95])
    return [
        Case("recall_level=0.5 (the question)", (0.5,)),
        Case("recall_level=0.8 (the level [1] reports)", (0.8,)),
        Case("recall_level=1.0", (1.0,)),
        Case("recall_level=0.2", (0.2,)),
        Case("recall_level=0.6", (0.6,)),
        Case(f"recall_level={drawn}", (drawn,)),
    ]


def _plain_number(value):
    """``value`` as a Python int or float when it is a real number (a NumPy scalar, a one-element tensor), else
    None."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    elif hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a NumPy scalar
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return value


def _figures_problem(value) -> str | None:
    """Why ``value`` is not a pair (A-OSE, WI) of numbers, or None."""
    if isinstance(value, dict):
        return f"expected a pair (a_ose, wi), got a dict with keys {sorted(map(str, value))}: return a_ose, wi"
    if not isinstance(value, (tuple, list)):
        return f"expected a pair (a_ose, wi), got {type(value).__name__} {value!r:.60}"
    if len(value) != 2:
        return f"expected a pair (a_ose, wi), got {len(value)} items"
    a_ose, wi = (_plain_number(v) for v in value)
    if a_ose is None or wi is None:
        return (f"expected two numbers (a_ose, wi), got {type(value[0]).__name__} and {type(value[1]).__name__}: "
                f"{value!r:.60}")
    if not float(a_ose).is_integer() or a_ose < 0:
        return f"A-OSE is a count of detections: a whole number >= 0, got {a_ose!r}"
    return None


def _figures_compare(got, expected) -> str | None:
    """``None`` when ``got`` is ``expected``'s A-OSE and (within float rounding) WI; else how it differs."""
    problem = _figures_problem(got)
    if problem:
        return problem
    (a_ose, wi), (a_ref, wi_ref) = ([float(_plain_number(v)) for v in pair] for pair in (got, expected))
    differences = []
    if a_ose != a_ref:
        differences.append(f"A-OSE: expected {a_ref:g}, got {a_ose:g}")
    if not math.isclose(wi, wi_ref, rel_tol=1e-6, abs_tol=1e-9):
        differences.append(f"WI: expected {wi_ref:.6g}, got {wi:.6g}")
    return "; ".join(differences) or None


def _show_figures(value) -> str:
    if _figures_problem(value):
        text = repr(value)
        return text if len(text) <= 120 else text[:117] + "..."
    a_ose, wi = (_plain_number(v) for v in value)
    return f"A-OSE = {float(a_ose):g}, WI = {float(wi):.6g}"


def _switched_off(*args, **kwargs):
    """The code every function of clcourse.detection_metrics runs while an answer to 13.wilderness runs (it runs
    with that module's globals: it names builtins only)."""
    raise RuntimeError("clcourse.detection_metrics is switched off while the check runs your function")


@contextmanager
def _without_detection_metrics() -> Iterator[None]:
    """Within this block, every function of clcourse.detection_metrics raises a RuntimeError saying so, however
    the caller reached it (``from ... import`` included: the
    functions' code is swapped, not the module's names)."""
    functions = [detection_metrics.open_world_metrics, detection_metrics.class_curve,
                 detection_metrics.average_precision]
    codes = [f.__code__ for f in functions]
    try:
        for f in functions:
            f.__code__ = _switched_off.__code__
        yield
    finally:
        for f, code in zip(functions, codes):
            f.__code__ = code


_SWITCHED_OFF_HINT = ("The task is to derive the figures from their definitions, so the check runs your function "
                      "with clcourse.detection_metrics switched off. Work out each class's table (recall, detections "
                      "so far, open-set errors so far) by hand and write it into your function; use "
                      "open_world_metrics in the cell below the check, to verify.")


@probe
def _figures_without_metrics(answer, recall_level: float):
    """``answer(recall_level)``, run with clcourse.detection_metrics switched off (in the grading worker when
    grading)."""
    with _without_detection_metrics():
        return call_answer(answer, (recall_level,), {}, "",
                           [(r"detection_metrics is switched off", _SWITCHED_OFF_HINT)])


@task("13.wilderness", "derive: A-OSE and the wilderness impact of a printed scene, at any recall level", 2,
      answer="open_set_figures")
def check_wilderness(answer) -> None:
    """Compare (A-OSE, WI) with clcourse.detection_metrics on the printed scene at several recall levels, the
    answer running without clcourse.detection_metrics."""

    def derived(recall_level):
        try:
            return run_probe(answer, _figures_without_metrics, recall_level)
        except NotAttempted as exc:  # raised inside the probe: let compare_with_reference report it as such
            raise NotImplementedError(str(exc)) from None

    compare_with_reference(
        derived, _figures_cases(), _figures_reference, _FIGURES_MISTAKES,
        generic_hint="A-OSE: count the detections labelled car or person whose IoU with the horse or the dog is "
                     "above 0.5, over the whole list. WI depends on the level: for car and for person, list the "
                     "class's own detections best first with (recall, detections so far, open-set errors so far), "
                     "take the first row whose recall is closest to the level, then (mean errors) / (mean "
                     "detections) over the two classes.",
        compare=_figures_compare,
        show=_show_figures,
        hint_needs_every_case=True,  # single numbers coincide by chance at one level
    )
