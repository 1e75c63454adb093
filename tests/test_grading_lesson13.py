"""Lesson 13 checks: the references agree with the package, solutions pass, wrong and hostile answers fail with a
hint, and clcourse.detection_metrics cannot stand in for the derivation."""

import math
import random
import sys
from fractions import Fraction
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou
from wrong_answers import (
    assert_covers,
    assert_rejected_with_hint,
    assert_solution_passes_and_student_hides_it,
    each_wrong_answer,
)

from clcourse import detection_metrics, losses
from clcourse.grading import evaluate, tasks
from clcourse.grading.harness import call_plain, first_difference
from clcourse.grading.lesson13_ore import (
    _CLUSTERING_MISTAKES,
    _FIGURES_MISTAKES,
    DETECTIONS,
    KNOWN,
    OBJECTS,
    UNKNOWN_LABEL,
    _clustering_cases,
    _clustering_reference,
    _clustering_variant,
    _figures_cases,
    _figures_compare,
    _figures_reference,
    _open_set_variant,
    _without_detection_metrics,
    scene_markdown,
    scene_tensors,
)

EXERCISES = Path(__file__).parent.parent / "exercises"


def test_lesson_13_has_two_tasks():
    assert [t.id for t in tasks(13)] == ["13.clustering", "13.wilderness"]


# --- 13.clustering: the reference is clcourse.losses.contrastive_clustering, eqs. 1-2 -------------

def loop_loss(features, labels, prototypes, margin, valid=None):
    """Eqs. 1-2 of [1] in float64, one feature and one prototype at a time, written independently of clcourse."""
    f, p = features.detach().double(), prototypes.detach().double()
    valid = [True] * len(p) if valid is None else valid.tolist()
    total = 0.0
    for x, c in zip(f, labels.tolist()):
        for i, prototype in enumerate(p):
            if not valid[i]:
                continue
            d = math.sqrt(float(((x - prototype) ** 2).sum()))
            total += d if i == c else max(0.0, margin - d)
    return total / len(f)


@pytest.mark.parametrize("case", _clustering_cases(), ids=lambda case: case.name[:40])
def test_clustering_reference_is_the_packages_and_eqs_1_2(case):
    features, labels, prototypes, margin = case.args
    valid = case.kwargs.get("valid")
    got = call_plain(_clustering_reference, case)
    assert torch.equal(got, losses.contrastive_clustering(features, labels, prototypes, margin, valid=valid))
    assert got.dtype == features.dtype and got.requires_grad == features.requires_grad
    assert got.item() == pytest.approx(loop_loss(features, labels, prototypes, margin, valid), rel=1e-5, abs=1e-5)
    # the grader's variant with no slip is the reference too (the mistakes are one change away from it)
    assert first_difference(call_plain(_clustering_variant, case), got) is None


def test_clustering_cases_hold_what_their_names_say():
    cases = _clustering_cases()
    assert sum(c.args[0].requires_grad for c in cases) == 5
    assert any("valid" not in c.kwargs for c in cases) and any(c.kwargs.get("valid", 0) is None for c in cases)
    for case in cases:
        features, labels, prototypes, margin = case.args
        n, c = len(features), len(prototypes)
        assert f"N={n}" in case.name and f"C={c}" in case.name and f"margin={margin:g}" in case.name
        assert n <= 25 and c <= 25  # torch.cdist computes directly (no matrix-product shortcut) at these sizes
        assert prototypes.shape[1] == features.shape[1] and 0 <= labels.min() and labels.max() < c
        assert not prototypes.requires_grad
        if "float64" in case.name:
            assert features.dtype == prototypes.dtype == torch.float64
        distances = torch.cdist(features.detach().double(), prototypes.double())
        other = ~F.one_hot(labels, c).bool()
        if "exactly on their prototypes" in case.name:
            assert torch.equal(features, prototypes[labels]) and distances[other].min() > 28
            assert call_plain(_clustering_reference, case).item() == 0.0
        elif "only the pull term" in case.name:
            assert distances[other].min() > margin
        elif "valid" in case.kwargs and case.kwargs["valid"] is not None:
            invalid = (~case.kwargs["valid"]).nonzero().flatten().tolist()
            assert all(f"{i}" in case.name for i in invalid) or "False, False, False" in case.name
        if "the last" in case.name:
            assert (labels == c - 1).any()
    # most cases mix hinges inside and beyond the margin; the masked case has features of its invalid classes
    mixed = [c for c in cases
             if 0.1 < float((torch.cdist(c.args[0].detach().double(), c.args[2].double()) < c.args[3]).double().mean())
             < 0.9]
    assert len(mixed) >= 5
    masked = cases[1]
    assert set(masked.args[1].tolist()) == set(range(5)) and masked.kwargs["valid"].tolist().count(False) == 2


def test_reference_gradient_is_zero_on_the_prototypes_and_pull_plus_push_elsewhere():
    on = next(c for c in _clustering_cases() if "exactly on" in c.name)
    x = on.args[0].detach().clone().requires_grad_()
    losses.contrastive_clustering(x, on.args[1], on.args[2]).backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    # on a line, prototypes at 0 and 4: a feature of class 0 at 1 is pulled left (+1 / N) and pushed left (+1 / N)
    f = torch.tensor([[1.0], [3.0]], requires_grad=True)
    loss = losses.contrastive_clustering(f, torch.tensor([0, 1]), torch.tensor([[0.0], [4.0]]))
    loss.backward()
    assert loss.item() == pytest.approx(8.0) and f.grad.flatten().tolist() == pytest.approx([1.0, -1.0])


# --- 13.wilderness: the figures are clcourse.detection_metrics' on the printed scene ------------

CAR = [(0.0, 1, 1), (0.0, 2, 2), (0.5, 3, 2), (1.0, 4, 2), (1.0, 5, 2)]  # detections 1, 4, 5, 8, 11
PERSON = [(0.0, 1, 0), (0.5, 2, 0), (0.5, 3, 1), (1.0, 4, 1), (1.0, 5, 1)]  # detections 2, 3, 6, 9, 12


def test_the_scenes_figures_by_hand():
    assert _figures_reference(0.5) == (3, pytest.approx(2 / 5))  # car read at its 3rd detection, person at its 2nd
    assert _figures_reference(0.8) == (3, pytest.approx(3 / 8))  # both at their 4th
    assert _figures_reference(0.2) == (3, pytest.approx(1 / 2))  # both at their 1st (recall 0 is closest)
    detections, ground_truth = scene_tensors()
    boxes, classes = ground_truth[0]
    unknown = [boxes[~torch.isin(classes, torch.tensor(KNOWN))]]
    for label, table in zip(KNOWN, (CAR, PERSON)):
        curve = detection_metrics.class_curve(label, detections, ground_truth, unknown)
        assert list(zip(curve.recall.tolist(), curve.tp_plus_fp.int().tolist(),
                        curve.open_set_errors.int().tolist())) == table
    # detection 11 covers the upper half of the dog: an IoU of exactly 0.5, no overlap
    assert box_iou(torch.tensor([DETECTIONS[10][1]], dtype=torch.float64),
                   torch.tensor([OBJECTS[5][1]], dtype=torch.float64)).item() == 0.5
    assert sorted(score for _, _, score, _ in DETECTIONS) == [s for _, _, s, _ in DETECTIONS][::-1]


@pytest.mark.parametrize("case", _figures_cases(), ids=lambda case: case.name[:30])
def test_case_levels_read_no_tie(case):
    """Two different recalls never lie equally close to a level the check asks (the earlier rank would win)."""
    (level,) = case.args
    for table in (CAR, PERSON):
        gaps = sorted({abs(recall - level) for recall, _, _ in table})
        assert len(gaps) == 1 or gaps[1] - gaps[0] > 1e-6
    assert _figures_compare(_open_set_variant(OBJECTS, DETECTIONS, level), _figures_reference(level)) is None


def _random_scene(rng: random.Random):
    """One image: objects of classes 0..4 (0 and 1 known) and detections on them, shifted, or on nothing."""
    objects = []
    for k in range(rng.randint(1, 7)):
        x, y = rng.randrange(0, 60, 5), rng.randrange(0, 60, 5)
        objects.append((f"o{k}", (x, y, x + rng.choice([5, 10, 20]), y + rng.choice([5, 10, 20])), rng.randrange(5)))
    detections = []
    for number in range(1, rng.randint(1, 14)):
        if rng.random() < 0.8:
            x0, y0, x1, y1 = rng.choice(objects)[1]
            dx, dy = rng.choice([0, 0, 0, 2, 5]), rng.choice([0, 0, 5])
            box = (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
        else:
            x, y = rng.randrange(0, 60, 5), rng.randrange(0, 60, 5)
            box = (x, y, x + 10, y + 10)
        detections.append((number, box, rng.choice([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]), rng.choice([0, 1, 2])))
    return objects, detections


@pytest.mark.parametrize("seed", range(40))
def test_the_variant_without_a_slip_is_detection_metrics(seed):
    """On random scenes (ties in score, classes without objects or detections, duplicates, shifted boxes)."""
    rng = random.Random(seed)
    objects, detections = _random_scene(rng)
    dets, gts = scene_tensors(objects, detections)
    for level in (0.1, 0.5, 0.8, 1.0, rng.uniform(0.05, 1.0)):
        metrics = detection_metrics.open_world_metrics(dets, gts, KNOWN, UNKNOWN_LABEL, recall_level=level)
        a_ose, wi = _open_set_variant(objects, detections, level)
        assert a_ose == metrics["a_ose"]
        assert wi == pytest.approx(metrics["wilderness_impact"], rel=1e-12, abs=1e-12)


def test_the_notebook_prints_the_graders_scene():
    nb = nbformat.read(EXERCISES / "source" / "13_ore.ipynb", as_version=4)
    assert any(scene_markdown() in cell.source for cell in nb.cells if cell.cell_type == "markdown")
    student = nbformat.read(EXERCISES / "13_ore.ipynb", as_version=4)
    assert any(scene_markdown() in cell.source for cell in student.cells if cell.cell_type == "markdown")


def test_detection_metrics_is_switched_off_only_while_the_answer_runs():
    from clcourse.detection_metrics import open_world_metrics  # a reference taken before the block

    dets, gts = scene_tensors()
    before = open_world_metrics(dets, gts, KNOWN, UNKNOWN_LABEL)
    with _without_detection_metrics():
        for call in (lambda: open_world_metrics(dets, gts, KNOWN, UNKNOWN_LABEL),
                     lambda: detection_metrics.class_curve(0, dets, gts, [gts[0][0][:0]]),
                     lambda: detection_metrics.average_precision(torch.ones(1), torch.ones(1))):
            with pytest.raises(RuntimeError, match="switched off"):
                call()
    assert open_world_metrics(dets, gts, KNOWN, UNKNOWN_LABEL) == before
    with pytest.raises(ZeroDivisionError), _without_detection_metrics():
        1 / 0
    assert detection_metrics.open_world_metrics(dets, gts, KNOWN, UNKNOWN_LABEL) == before  # restored after a raise


@pytest.mark.parametrize("mistake", _CLUSTERING_MISTAKES + _FIGURES_MISTAKES, ids=lambda m: m.hint[:40])
def test_every_mistake_differs_from_the_reference_on_some_case(mistake):
    if mistake in _CLUSTERING_MISTAKES:
        cases, reference, compare = _clustering_cases(), _clustering_reference, first_difference
    else:
        cases, reference, compare = _figures_cases(), _figures_reference, _figures_compare
    assert any(compare(call_plain(mistake.fn, case), call_plain(reference, case)) is not None for case in cases)


@pytest.mark.parametrize("mistakes", [_CLUSTERING_MISTAKES, _FIGURES_MISTAKES], ids=["clustering", "wilderness"])
def test_every_mistake_is_told_by_its_own_hint(mistakes):
    """Each known mistake, given as the answer, fails with its own hint (no other mistake shadows it)."""
    task_id = "13.clustering" if mistakes is _CLUSTERING_MISTAKES else "13.wilderness"
    for mistake in mistakes:
        result = evaluate(task_id, mistake.fn)
        assert not result.passed and result.hint == mistake.hint, (mistake.hint[:50], result.message)


def test_the_figures_mistakes_differ_at_the_question_level_or_name_themselves_elsewhere():
    """At recall 0.5 every mistake but one gives other figures than the truth (reading at the first rank that
    *reaches* the level coincides there: recall 0.5 is reached exactly), and no two mistakes agree everywhere."""
    truth = _figures_reference(0.5)
    same = [m.hint[:31] for m in _FIGURES_MISTAKES if _figures_compare(m.fn(0.5), truth) is None]
    assert same == ["WI was read at the first detect"]
    outputs = [tuple(m.fn(*case.args) for case in _figures_cases()) for m in _FIGURES_MISTAKES]
    assert len({tuple((a, round(w, 9)) for a, w in out) for out in outputs}) == len(outputs)


# --- solutions a learner might write ---------------------------------------------------------

def clustering_solution(features, labels, prototypes, margin=10.0, *, valid=None):
    distances = torch.cdist(features, prototypes)
    own = F.one_hot(labels, prototypes.shape[0]).bool()
    terms = torch.where(own, distances, (margin - distances).clamp(min=0))
    if valid is not None:
        terms = terms * valid
    return terms.sum(dim=1).mean()


def clustering_with_norm_and_relu(features, labels, prototypes, margin=10.0, *, valid=None):
    """Broadcast differences, .norm, F.relu, and the mask as a float row; the own distance gathered."""
    c = prototypes.shape[0]
    valid = torch.ones(c, dtype=torch.bool) if valid is None else valid
    d = (features[:, None, :] - prototypes[None, :, :]).norm(dim=-1)
    mask = valid.to(d.dtype)[None, :].expand_as(d).clone()
    pull = d.gather(1, labels[:, None]).squeeze(1) * mask.gather(1, labels[:, None]).squeeze(1)
    others = mask.scatter(1, labels[:, None], 0.0)
    push = (F.relu(margin - d) * others).sum(1)
    return (pull + push).mean()


def clustering_loop_with_epsilon(features, labels, prototypes, margin=10.0, *, valid=None):
    """One feature at a time; sqrt with an epsilon, so the gradient at D = 0 is 0, not NaN."""
    total = features.new_zeros(())
    for f, c in zip(features, labels.tolist()):
        for i, p in enumerate(prototypes):
            if valid is not None and not valid[i]:
                continue
            d = torch.sqrt(((f - p) ** 2).sum() + 1e-12)
            total = total + (d if i == c else torch.clamp(margin - d, min=0.0))
    return total / len(features)


def figures_solution(recall_level):
    read = [min(table, key=lambda row: abs(row[0] - recall_level)) for table in (CAR, PERSON)]
    return 3, sum(e for _, _, e in read) / sum(n for _, n, _ in read)


def figures_as_list_of_fractions(recall_level):
    """A-OSE as a float, WI built from Fractions (returned as a float), the rank found by a loop."""
    reads = []
    for table in (CAR, PERSON):
        best = 0
        for k, (recall, _, _) in enumerate(table):
            if abs(recall - recall_level) < abs(table[best][0] - recall_level):
                best = k
        reads.append(table[best])
    wi = Fraction(sum(e for _, _, e in reads), len(reads)) / Fraction(sum(n for _, n, _ in reads), len(reads))
    return [3.0, float(wi)]


def figures_from_the_boxes(recall_level):
    """The learner's own small evaluation from the tables of the scene, with torchvision's box_iou (not
    clcourse.detection_metrics); NumPy numbers back."""
    boxes = torch.tensor([b for _, b, _ in OBJECTS], dtype=torch.float64)
    classes = [c for _, _, c in OBJECTS]
    a_ose, reads = 0, []
    for known in KNOWN:
        mine = [(score, box) for _, box, score, label in DETECTIONS if label == known]
        mine.sort(key=lambda row: -row[0])
        targets = [j for j, c in enumerate(classes) if c == known]
        found, rows, errors = set(), [], 0
        for _, box in mine:
            iou = box_iou(torch.tensor([box], dtype=torch.float64), boxes)[0]
            best = max(targets, key=lambda j: float(iou[j]))
            if iou[best] > 0.5 and best not in found:
                found.add(best)
            errors += any(iou[j] > 0.5 for j, c in enumerate(classes) if c not in KNOWN)
            rows.append((len(found) / len(targets), len(rows) + 1, errors))
        a_ose += errors
        gaps = [abs(r - recall_level) for r, _, _ in rows]
        reads.append(rows[gaps.index(min(gaps))])
    return np.int64(a_ose), np.float64(np.mean([e for *_, e in reads]) / np.mean([n for _, n, _ in reads]))


@pytest.mark.parametrize("task_id, answer", [
    ("13.clustering", clustering_solution), ("13.clustering", clustering_with_norm_and_relu),
    ("13.clustering", clustering_loop_with_epsilon),
    ("13.wilderness", figures_solution), ("13.wilderness", figures_as_list_of_fractions),
    ("13.wilderness", figures_from_the_boxes),
])
def test_correct_answers_pass(task_id, answer):
    result = evaluate(task_id, answer)
    assert result.passed, result.message


def test_the_solution_notebook_passes_and_the_student_notebook_holds_no_solution():
    assert_solution_passes_and_student_hides_it("13_ore.ipynb", "13", ["13.clustering", "13.wilderness"],
                                                ["torch.cdist(features, prototypes)  #", "a_ose = 3"])


def test_a_graded_submission_cannot_call_detection_metrics_in_the_worker(tmp_path):
    """In the grading worker too, the answer runs with clcourse.detection_metrics switched off; the clustering
    loss is graded there as in the notebook (remote gradients included)."""
    from clcourse.grading.grader import GradingOptions, grade_notebooks

    nb = nbformat.read(EXERCISES / "source" / "13_ore.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "def open_set_figures(recall_level):\n"
        "    m = open_world_metrics(*scene_tensors(), KNOWN, UNKNOWN_LABEL, recall_level=recall_level)\n"
        "    return m['a_ose'], m['wilderness_impact']"))
    path = tmp_path / "13_ore.ipynb"
    nbformat.write(nb, path)
    (scores,) = grade_notebooks([path], GradingOptions(seed=7), jobs=1)
    assert not scores.cell_errors, scores.cell_errors
    results = {t.task_id: t for t in scores.tasks}
    assert results["13.clustering"].passed, results["13.clustering"].message
    assert not results["13.wilderness"].passed and results["13.wilderness"].points == 0
    assert "switched off" in results["13.wilderness"].message


# --- typical wrong answers: each must fail with a hint naming the mistake --------------------

def cc(features, labels, prototypes, margin=10.0, *, valid=None, distance="euclidean", own="pull", push="hinge",
       mask="all", none="all", reduce="mean", detach_push=False, in_place=False):
    """A learner's contrastive clustering with one of the typical slips."""
    c = prototypes.shape[0]
    if in_place == "prototypes":
        prototypes -= prototypes.mean(dim=0)  # centred in place: the caller's prototypes move
    elif in_place == "features":
        features -= features.mean(dim=0)
    if valid is None:
        valid = torch.ones(c, dtype=torch.bool) if none == "all" else torch.zeros(c, dtype=torch.bool)
    f, p = features, prototypes
    if distance == "normalised":
        f, p = F.normalize(f, dim=1), F.normalize(p, dim=1)
    if distance == "squared":
        d = ((f[:, None] - p[None]) ** 2).sum(-1)
    elif distance == "sqrt":
        d = torch.sqrt(((f[:, None] - p[None]) ** 2).sum(-1))
    elif distance == "p_norm":
        d = torch.cdist(f, p, p=margin)
    else:
        d = torch.cdist(f, p)
    is_own = F.one_hot(labels, c).bool()
    hinge = (d - margin if push == "reversed" else margin - d).clamp(min=0)
    if push == "squared":
        hinge = hinge**2
    if detach_push:
        hinge = hinge.detach()
    pull = {"pull": d, "hinge": (margin - d).clamp(min=0), "none": torch.zeros_like(d)}[own]
    terms = torch.where(is_own, pull, hinge)
    if mask == "all":
        terms = terms * valid
    elif mask == "push_only":
        terms = torch.where(is_own, terms, terms * valid)
    others = torch.where(is_own, torch.zeros_like(terms), terms)
    if push == "max":
        per_feature = (terms * is_own).sum(1) + others.max(dim=1).values
    elif push == "mean":
        per_feature = (terms * is_own).sum(1) + others.sum(1) / ((~is_own) & valid).sum(1).clamp(min=1)
    else:
        per_feature = terms.sum(1)
    return {"mean": per_feature.mean(), "sum": per_feature.sum(), "pairs": terms.mean()}[reduce]


def cc_none_unhandled(features, labels, prototypes, margin=10.0, *, valid=None):
    d = torch.cdist(features, prototypes)
    own = F.one_hot(labels, prototypes.shape[0]).bool()
    terms = torch.where(own, d, (margin - d).clamp(min=0)) * valid.float()
    return terms.sum(1).mean()


def fig(recall_level, *, a_ose=3, car=CAR, person=PERSON, read="first", combine="ratio"):
    """A learner's figures from hand-made tables, with one of the typical slips."""
    reads = []
    for table in (car, person):
        gaps = [abs(recall - recall_level) for recall, _, _ in table]
        k = {"first": gaps.index(min(gaps)), "last": len(gaps) - 1 - gaps[::-1].index(min(gaps)),
             "end": len(table) - 1,
             "reaches": next((k for k, row in enumerate(table) if row[0] >= recall_level), len(table) - 1)}[read]
        reads.append(table[k])
    n = sum(n for _, n, _ in reads) / 2
    e = sum(e for _, _, e in reads) / 2
    if a_ose == "read":
        a_ose = int(2 * e)
    wi = {"ratio": e / n, "means": sum(e / n for _, n, e in reads) / 2, "paper": e / (n - e),
          "no_minus_one": n / (n - e), "inverted": (n - e) / n}[combine]
    return a_ose, wi


CAR_WITH_BACKGROUND = [(0.0, 1, 1), (0.0, 2, 2), (0.5, 3, 2), (1.0, 4, 2), (1.0, 5, 3)]  # 11 counted
PERSON_WITH_BACKGROUND = [(0.0, 1, 1), (0.5, 2, 1), (0.5, 3, 2), (1.0, 4, 2), (1.0, 5, 2)]  # 2 counted


def fig_cheat(recall_level):
    from clcourse.detection_metrics import open_world_metrics

    metrics = open_world_metrics(*scene_tensors(), KNOWN, UNKNOWN_LABEL, recall_level=recall_level)
    return metrics["a_ose"], metrics["wilderness_impact"]


WRONG = {
    "13.clustering": [
        (lambda *a, **k: cc(*a, **k, distance="squared"), "The distance is squared"),
        (lambda *a, **k: cc(*a, **k, distance="normalised"), "L2-normalised"),
        (lambda *a, **k: cc(*a, **k, distance="p_norm"), "a margin-norm"),
        (lambda *a, **k: cc(*a, **k, own="hinge"), "own prototype got the hinge too"),
        (lambda *a, **k: cc(*a, **k, own="none"), "The pull term is missing"),
        (lambda *a, **k: cc(*a, **k, push="reversed"), "wrong way round"),
        (lambda *a, **k: cc(*a, **k, push="squared"), "The hinge is squared"),
        (lambda *a, **k: cc(*a, **k, push="max"), "Only the largest hinge"),
        (lambda *a, **k: cc(*a, **k, push="mean"), "averaged over the other prototypes"),
        (lambda *a, **k: cc(*a, **k, mask="ignored"), "The valid mask is not applied"),
        (lambda *a, **k: cc(*a, **k, mask="push_only"), "push terms only"),
        (lambda *a, **k: cc(*a, **k, none="none"), "taken as 'no prototype valid'"),
        (cc_none_unhandled, "valid=None (the default) means every prototype is valid"),
        (lambda *a, **k: cc(*a, **k, reduce="sum"), "summed over the features"),
        (lambda *a, **k: cc(*a, **k, reduce="pairs"), "N x C"),
        (lambda *a, **k: cc(*a, **k, distance="sqrt"), "has an infinite derivative at 0"),
        (lambda *a, **k: cc(*a, **k, detach_push=True), "not the right gradient"),
        (lambda *a, **k: cc(*a, **k).item(), "returned a Python float"),
        (lambda *a, **k: cc(*a, **k, in_place="prototypes"), "changed its input number 3 in place"),
        (lambda *a, **k: cc(*a, **k, in_place="features"), "Use out-of-place operations"),
    ],
    "13.wilderness": [
        (lambda r: fig(r, a_ose=5), "labelled unknown* on an unknown object"),
        (lambda r: fig(r, a_ose=5, car=CAR_WITH_BACKGROUND, person=PERSON_WITH_BACKGROUND), "on the background"),
        (lambda r: fig(r, a_ose=2), "once per unknown object"),
        (lambda r: fig(r, a_ose=4), "exactly 0.5"),
        (lambda r: fig(r, a_ose="read"), "only down to the rank WI reads"),
        (lambda r: fig(r, read="end"), "at the end of each class's list"),
        (lambda r: fig(r, read="last"), "at the *last* detection"),
        (lambda r: fig(r, read="reaches"), "*reaches* the level"),
        (lambda r: fig(r, combine="means"), "mean of the ratios"),
        (lambda r: fig(r, combine="paper"), "E / (N - E)"),
        (lambda r: fig(r, combine="no_minus_one"), "without the '- 1'"),
        (lambda r: fig(r, combine="inverted"), "1 - WI"),
        (lambda r: (3, 0.4), "WI depends on the level"),
        (lambda r: fig(r)[1], "expected a pair (a_ose, wi)"),
        (lambda r: {"a_ose": 3, "wi": fig(r)[1]}, "got a dict"),
        (fig_cheat, "switched off"),
    ],
}


def test_wrong_answers_cover_every_task():
    assert_covers(WRONG, tasks(13))


@each_wrong_answer(WRONG)
def test_wrong_answer_is_rejected_with_its_hint(task_id, answer, mistake):
    assert_rejected_with_hint(task_id, answer, mistake)


# --- hostile and broken answers: failures with a reason, never a crash or a checker error ----

def _raises(*args, **kwargs):
    raise ValueError("broken on purpose")


def _exits(*args, **kwargs):
    sys.exit(3)


def _interrupts(*args, **kwargs):
    raise KeyboardInterrupt


def _per_feature(features, labels, prototypes, margin=10.0, *, valid=None):
    return cc(features, labels, prototypes, margin, valid=valid, reduce="sum").expand(len(features))


def _bool_subtraction(features, labels, prototypes, margin=10.0, *, valid=None):
    valid = torch.ones(len(prototypes), dtype=torch.bool) if valid is None else valid
    return cc(features, labels, prototypes, margin, valid=valid) * (1 - valid).sum()


@pytest.mark.parametrize("task_id, answer, problem", [
    ("13.clustering", _raises, "ValueError: broken on purpose"),
    ("13.clustering", _exits, "SystemExit"),
    ("13.clustering", _interrupts, "KeyboardInterrupt"),
    ("13.clustering", lambda *a, **k: None, "expected a tensor"),
    ("13.clustering", _per_feature, "wrong shape"),
    ("13.clustering", _bool_subtraction, "bool tensor"),
    ("13.clustering", 42, "must be a function"),
    ("13.wilderness", _raises, "ValueError: broken on purpose"),
    ("13.wilderness", _exits, "SystemExit"),
    ("13.wilderness", lambda r: None, "expected a pair"),
    ("13.wilderness", lambda r: ("3", "0.4"), "expected two numbers"),
    ("13.wilderness", lambda r: (2.5, 0.4), "a whole number"),
    ("13.wilderness", lambda r: (3, 0.4, 0.375), "got 3 items"),
    ("13.wilderness", 42, "must be a function"),
])
def test_hostile_and_broken_answers_fail_with_a_reason(task_id, answer, problem):
    result = evaluate(task_id, answer)
    assert result.status == "failed" and result.points == 0, result.message
    assert "checker itself failed" not in result.problem, result.message
    assert result.case and problem in result.problem + result.hint, result.message
