"""Lesson 15 checks: the references agree with PCRL, solutions pass, wrong and hostile answers fail with a hint."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from wrong_answers import (
    assert_covers,
    assert_each_mistake_told_by_its_own_hint,
    assert_mistake_differs_somewhere,
    assert_rejected_with_hint,
    assert_solution_passes_and_student_hides_it,
    each_wrong_answer,
    exits_on_purpose,
    raises_on_purpose,
)

from clcourse.device import torch_threads
from clcourse.grading import evaluate, tasks
from clcourse.grading.harness import call_plain, first_difference
from clcourse.grading.lesson15_pcrl import (
    _DIHEDRAL_MISTAKES,
    _HYBRID_MISTAKES,
    _canonical_closed_form,
    _canonical_reference,
    _canonical_variant,
    _dihedral_cases,
    _hybrid_cases,
    _hybrid_reference,
    _hybrid_variant,
)
from clcourse.methods.pcrl import PCRL, apply_transforms, make_transforms, pcrl_augment
from clcourse.unet import UNetEncoder

EXERCISES = Path(__file__).parent.parent / "exercises"
SETTINGS = [(fr, fc, k) for fr in (False, True) for fc in (False, True) for k in range(4)]


def test_lesson_15_has_two_tasks():
    assert [t.id for t in tasks(15)] == ["15.hybrid", "15.dihedral"]


# --- 15.hybrid: the reference is what PCRL.step decodes --------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hybrid_reference_reproduces_a_pcrl_step(seed):
    """A real step of a small PCRL: the reference, given the step's ordinary and momentum maps, targets and alpha
    (already folded: max(alpha, 1 - alpha) = alpha), gives the step's hybrid maps and the target of its loss."""
    torch.manual_seed(seed)
    model = PCRL(UNetEncoder(1, (4, 8)), projection_dim=8, queue_size=16, augment=pcrl_augment(16),
                 generator=torch.Generator().manual_seed(seed))
    with torch_threads(1):
        out = model.step(torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(10 + seed)))
    assert 0.5 <= out.alpha <= 1 and len(out.ordinary) == len(out.momentum) == len(out.hybrid) == 2
    features, target = _hybrid_reference(out.ordinary, out.momentum, out.targets, out.alpha)
    assert len(features) == 2 and all(torch.equal(f, h) for f, h in zip(features, out.hybrid))
    # the target is the one the step's hybrid reconstruction is scored against (the term is the mean of two MSEs)
    reconstruction = (F.mse_loss(out.outputs[0], out.targets[0]) + F.mse_loss(out.outputs[1], target)) / 2
    torch.testing.assert_close(reconstruction, out.reconstruction, rtol=1e-6, atol=1e-7)
    # u and 1 - u give the same hybrid: the fold
    unfolded = _hybrid_reference(out.ordinary, out.momentum, out.targets, 1 - out.alpha)
    torch.testing.assert_close(unfolded, (features, target), rtol=1e-6, atol=1e-6)
    # the paths differ, so the mixing weights matter: the mistakes differ from the step here
    assert not torch.allclose(out.ordinary[0], out.momentum[0])
    unfolded_maps, _ = _hybrid_variant(out.ordinary, out.momentum, out.targets, 1 - out.alpha, fold="none")
    assert out.alpha == 0.5 or not torch.allclose(unfolded_maps[0], out.hybrid[0])


@pytest.mark.parametrize("case", _hybrid_cases(), ids=lambda case: case.name[:40])
def test_hybrid_reference_is_the_formula_and_the_variant_without_a_slip(case):
    ordinary, momentum, (t1, t2), u = case.args
    alpha = max(u, 1 - u)
    features, target = call_plain(_hybrid_reference, case)
    assert len(features) == len(ordinary) and all(f.dtype == o.dtype for f, o in zip(features, ordinary))
    for f, o, m in zip(features, ordinary, momentum):
        torch.testing.assert_close(f, alpha * o + (1 - alpha) * m)
        assert f.requires_grad
    torch.testing.assert_close(target, alpha * t1 + (1 - alpha) * t2)
    assert first_difference(call_plain(_hybrid_variant, case), (features, target)) is None


def test_hybrid_cases_hold_what_their_names_say():
    cases = _hybrid_cases()
    assert any(c.args[3] < 0.5 for c in cases) and any(c.args[3] > 0.5 for c in cases)
    assert {0.0, 0.5, 1.0} <= {c.args[3] for c in cases}
    for case in cases:
        ordinary, momentum, targets, u = case.args
        assert all(o.requires_grad for o in ordinary) and not any(m.requires_grad for m in momentum)
        assert [o.shape for o in ordinary] == [m.shape for m in momentum]
        assert [o.shape[-1] for o in ordinary] == [ordinary[0].shape[-1] >> i for i in range(len(ordinary))]
        assert targets[0].shape == targets[1].shape and targets[0].shape[-1] == ordinary[0].shape[-1]
        assert f"u={u}" in case.name and f"L={len(ordinary)}" in case.name
        if "float64" in case.name:
            assert ordinary[0].dtype == torch.float64


def test_hybrid_gradient_reaches_the_ordinary_maps_only():
    ordinary, momentum, targets, u = _hybrid_cases()[0].fresh()[0]
    momentum = [m.requires_grad_() for m in momentum]
    features, target = _hybrid_reference(ordinary, momentum, targets, u)
    grads = torch.autograd.grad(sum(f.sum() for f in features), [*ordinary, *momentum])
    assert all(torch.allclose(g, torch.full_like(g, 0.7)) for g in grads[:3])
    assert all(torch.allclose(g, torch.full_like(g, 0.3)) for g in grads[3:])
    assert not target.requires_grad


# --- 15.dihedral: the closed form is what apply_transforms does -------------------------------

@pytest.mark.parametrize("setting", SETTINGS, ids=str)
def test_canonical_form_moves_images_as_the_setting(setting):
    fr, fc, k = setting
    flip, k2 = _canonical_closed_form(fr, fc, k)
    assert isinstance(flip, bool) and isinstance(k2, int) and 0 <= k2 <= 3
    image = torch.rand(3, 2, 6, 6, generator=torch.Generator().manual_seed(k))
    moved = apply_transforms(image, make_transforms([fr] * 3, [fc] * 3, [k] * 3))
    assert torch.equal(apply_transforms(image, make_transforms([False] * 3, [flip] * 3, [k2] * 3)), moved)
    assert _canonical_reference(fr, fc, k) == (flip, k2)
    if not fr:
        assert (flip, k2) == (fc, k)


def test_sixteen_settings_make_the_eight_symmetries_of_the_square():
    """The predicted count: 8 distinct images of a random one, each from two settings, one of them row-flip free."""
    image = torch.rand(1, 1, 7, 7, generator=torch.Generator().manual_seed(0))
    moved = [apply_transforms(image, make_transforms([fr], [fc], [k])) for fr, fc, k in SETTINGS]
    distinct = []
    for m in moved:
        if not any(torch.equal(m, d) for d in distinct):
            distinct.append(m)
    assert len(distinct) == 8
    forms = [_canonical_closed_form(*s) for s in SETTINGS]
    assert len(set(forms)) == 8 and all(forms.count(f) == 2 for f in forms)
    # a symmetric image makes fewer: a constant one, 1
    flat = torch.ones(1, 1, 4, 4)
    assert all(torch.equal(apply_transforms(flat, make_transforms([fr], [fc], [k])), flat) for fr, fc, k in SETTINGS)


def test_a_package_that_disagrees_with_the_closed_form_is_a_checker_bug(monkeypatch):
    import clcourse.grading.lesson15_pcrl as lesson

    def turns_only(images, transforms):  # a broken apply_transforms that forgets the flips
        return images.rot90(int(transforms[0, 2:].argmax()), (-2, -1))

    monkeypatch.setattr(lesson, "apply_transforms", turns_only)
    result = evaluate("15.dihedral", _canonical_closed_form)
    assert not result.passed and "checker itself failed" in result.problem and "closed form" in result.problem


@pytest.mark.parametrize("mistake", _HYBRID_MISTAKES + _DIHEDRAL_MISTAKES, ids=lambda m: m.hint[:40])
def test_every_mistake_differs_from_the_reference_on_some_case(mistake):
    if mistake in _HYBRID_MISTAKES:
        cases, reference = _hybrid_cases(), _hybrid_reference
    else:
        cases, reference = _dihedral_cases(), _canonical_reference
    assert_mistake_differs_somewhere(mistake, cases, reference)


@pytest.mark.parametrize("mistakes", [_HYBRID_MISTAKES, _DIHEDRAL_MISTAKES], ids=["hybrid", "dihedral"])
def test_every_mistake_is_told_by_its_own_hint(mistakes):
    """Each known mistake, given as the answer, fails with its own hint (no other mistake shadows it)."""
    task_id = "15.hybrid" if mistakes is _HYBRID_MISTAKES else "15.dihedral"
    assert_each_mistake_told_by_its_own_hint(task_id, mistakes)


# --- solutions a learner might write ---------------------------------------------------------

def hybrid_solution(ordinary, momentum, targets, u):
    alpha = max(u, 1 - u)
    return [alpha * o + (1 - alpha) * m for o, m in zip(ordinary, momentum)], alpha * targets[0] + (1 - alpha) * \
        targets[1]


def hybrid_with_lerp(ordinary, momentum, targets, u):
    """torch.lerp(m, o, a) = m + a (o - m), alpha a tensor; a tuple of maps and a list back are as good."""
    alpha = torch.tensor(u).clamp(min=1 - u)
    t1, t2 = targets
    features = tuple(torch.lerp(m, o, alpha.to(o.dtype)) for o, m in zip(ordinary, momentum))
    return features, torch.lerp(t2, t1, alpha.to(t1.dtype))


def hybrid_loop(ordinary, momentum, targets, u):
    alpha = u if u >= 0.5 else 1 - u
    features = []
    for level in range(len(ordinary)):
        features.append(alpha * ordinary[level] + (1 - alpha) * momentum[level].detach())
    return [features, alpha * targets[0] + (1 - alpha) * targets[1]]


def canonical_solution(flip_rows, flip_cols, k):
    return flip_cols != flip_rows, (k + 2 * flip_rows) % 4


def canonical_cases(flip_rows, flip_cols, k):
    """Case by case, in ints, as a learner reasoning on paper might."""
    if not flip_rows:
        return int(flip_cols), k
    if flip_cols:  # both flips: a half turn
        return 0, (k + 2) % 4
    return 1, (k + 2) % 4


def canonical_by_search(flip_rows, flip_cols, k):
    """No derivation: search the 8 row-flip-free settings with apply_transforms, answers as NumPy and tensor."""
    image = torch.rand(1, 1, 5, 5)
    target = apply_transforms(image, make_transforms([flip_rows], [flip_cols], [k]))
    for flip in (False, True):
        for k2 in range(4):
            if torch.equal(apply_transforms(image, make_transforms([False], [flip], [k2])), target):
                return np.bool_(flip), torch.tensor(k2)
    raise AssertionError("not found")


@pytest.mark.parametrize("task_id, answer", [
    ("15.hybrid", hybrid_solution), ("15.hybrid", hybrid_with_lerp), ("15.hybrid", hybrid_loop),
    ("15.dihedral", canonical_solution), ("15.dihedral", canonical_cases), ("15.dihedral", canonical_by_search),
])
def test_correct_answers_pass(task_id, answer):
    result = evaluate(task_id, answer)
    assert result.passed, result.message


def test_the_solution_notebook_passes_and_the_student_notebook_holds_no_solution():
    assert_solution_passes_and_student_hides_it("15_pcrl.ipynb", "15", ["15.dihedral", "15.hybrid"],
                                                ["max(u, 1 - u)  #", "(k + 2 * int(flip_rows)) % 4"])


# --- typical wrong answers: each must fail with a hint naming the mistake --------------------

def hy(ordinary, momentum, targets, u, *, fold=max, swap=False, levels="all", target="mixed", detach=(),
       regrad=False, in_place=False):
    """A learner's hybrid with one of the typical slips."""
    alpha = fold(u, 1 - u) if fold is not None else u
    a, b = (1 - alpha, alpha) if swap else (alpha, 1 - alpha)
    last = len(ordinary) - 1
    features = []
    for i, (o, m) in enumerate(zip(ordinary, momentum)):
        if levels == "bottleneck" and i != last or levels == "skips" and i == last:
            features.append(o)
            continue
        if in_place:
            m.mul_(b)
            f = a * o + m
        else:
            f = a * o + b * m
        if i in detach:
            f = f.detach().requires_grad_(regrad)
        features.append(f)
    if levels == "only_last":
        features = features[-1:]
    t1, t2 = targets
    w = {"mixed": alpha, "first": 1.0, "swapped": 1 - alpha, "unfolded": u, "mean": 0.5}[target]
    return features, w * t1 + (1 - w) * t2


def cf(flip_rows, flip_cols, k, **slip):
    return _canonical_variant(flip_rows, flip_cols, k, **slip)


WRONG = {
    "15.hybrid": [
        (lambda *a: hy(*a, fold=None), "not folded"),
        (lambda *a: hy(*a, fold=min), "smaller side"),
        (lambda *a: hy(*a, swap=True), "weights of the maps are swapped"),
        (lambda *a: hy(*a, levels="bottleneck"), "Only the bottleneck"),
        (lambda *a: hy(*a, levels="skips"), "Only the skip connections"),
        (lambda *a: hy(*a, levels="only_last"), "Only the mixed bottleneck was returned"),
        (lambda *a: hy(*a, target="first"), "still T1(x1)"),
        (lambda *a: hy(*a, target="swapped"), "target's weights are swapped"),
        (lambda *a: hy(*a, target="unfolded"), "another alpha"),
        (lambda *a: hy(*a, target="mean"), "averages the two targets"),
        (lambda *a: hy(*a, detach=(0, 1, 2, 3)), "cut off"),
        (lambda *a: hy(*a, detach=(0,)), "cut off"),
        (lambda *a: hy(*a, detach=(1,), regrad=True), "not the right gradient"),
        (lambda *a: hy(*a, in_place=True), "in place"),
        (lambda o, m, t, u: hy(o, m, t, u)[0], "expected 2 items"),
    ],
    "15.dihedral": [
        (lambda *a: cf(*a, toggle=False, turn=0), "row flip was dropped"),
        (lambda *a: cf(*a, turn=0), "treated as a column flip"),
        (lambda *a: cf(*a, toggle=False), "not a half turn alone"),
        (lambda *a: cf(*a, turn=1), "not a quarter turn"),
        (lambda *a: cf(*a, turn=3), "not a clockwise quarter turn"),
        (lambda *a: cf(*a, both_cancel=True), "not the identity"),
        (lambda *a: cf(*a, mod=False), "not taken mod 4"),
        (lambda *a: cf(*a, turn_then_flip=True), "wrong way (clockwise)"),
        (lambda *a: cf(*a, keep_rows=True), "column flip was removed instead"),
        (lambda fr, fc, k: (fr, fc, k), "expected a pair (flip_cols2, k2), got 3 items"),
    ],
}


def test_wrong_answers_cover_every_task():
    assert_covers(WRONG, tasks(15))


@each_wrong_answer(WRONG)
def test_wrong_answer_is_rejected_with_its_hint(task_id, answer, mistake):
    assert_rejected_with_hint(task_id, answer, mistake)


# --- hostile and broken answers: failures with a reason, never a crash or a checker error ----

def _interrupts(*args):
    raise KeyboardInterrupt


def _wrong_shapes(ordinary, momentum, targets, u):
    return [o.flatten(1) for o in ordinary], targets[0]


def _numpy_maps(ordinary, momentum, targets, u):
    return [o.detach().numpy() for o in ordinary], targets[0].numpy()


def _strings(*args):
    return "features", "target"


def _modifies_targets(ordinary, momentum, targets, u):
    features, target = hybrid_solution(ordinary, momentum, targets, u)
    targets[1].zero_()
    return features, target


def _float_turns(flip_rows, flip_cols, k):
    flip, k2 = canonical_solution(flip_rows, flip_cols, k)
    return flip, float(k2)


def _flip_two(flip_rows, flip_cols, k):
    return 2, k


@pytest.mark.parametrize("task_id, answer, problem", [
    ("15.hybrid", raises_on_purpose, "ValueError: broken on purpose"),
    ("15.hybrid", exits_on_purpose, "SystemExit"),
    ("15.hybrid", _interrupts, "KeyboardInterrupt"),
    ("15.hybrid", lambda *a: None, "expected a tuple"),
    ("15.hybrid", _strings, "item 0"),
    ("15.hybrid", _wrong_shapes, "wrong shape"),
    ("15.hybrid", _numpy_maps, "expected a tensor"),
    ("15.hybrid", _modifies_targets, "changed the targets in place"),
    ("15.hybrid", 42, "must be a function"),
    ("15.dihedral", raises_on_purpose, "ValueError: broken on purpose"),
    ("15.dihedral", exits_on_purpose, "SystemExit"),
    ("15.dihedral", lambda *a: None, "expected a pair"),
    ("15.dihedral", lambda *a: "False, 0", "expected a pair"),
    ("15.dihedral", lambda fr, fc, k: make_transforms([False], [fc], [k])[0], "got a tensor of shape [6]"),
    ("15.dihedral", _float_turns, "expected a bool and an int"),
    ("15.dihedral", _flip_two, "flip_cols2 must be True or False"),
    ("15.dihedral", lambda fr, fc, k: (fc, True), "k2 must be an int"),
])
def test_hostile_and_broken_answers_fail_with_a_reason(task_id, answer, problem):
    result = evaluate(task_id, answer)
    assert result.status == "failed" and result.points == 0, result.message
    assert "checker itself failed" not in result.problem, result.message
    assert result.case and problem in result.problem, result.message
