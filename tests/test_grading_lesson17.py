"""Lesson 17 checks: the references agree with the package, solutions pass, wrong and hostile answers fail with a
hint."""

import math
import random

import pytest
import torch
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

from clcourse.evaluate import effective_rank
from clcourse.grading import evaluate, tasks
from clcourse.grading.lesson17_challenges import (
    _DIAGNOSE_MISTAKES,
    _RANK_MISTAKES,
    CAUSES,
    _diagnose_cases,
    _diagnose_reference,
    _diagnose_variant,
    _rank_cases,
    _rank_closed_form,
    _rank_reference,
    _record,
    _spectrum_features,
)


def test_lesson_17_has_two_tasks():
    assert [t.id for t in tasks(17)] == ["17.diagnose", "17.collapse_rank"]


# --- 17.diagnose: the drawn records carry their cause ------------------------------------------

@pytest.mark.parametrize("cause", CAUSES)
def test_the_reference_names_the_cause_of_every_drawn_record(cause):
    rng = random.Random(0)
    assert all(_diagnose_reference(_record(cause, rng)) == cause for _ in range(500))


def test_the_cases_hold_four_runs_of_each_cause():
    found = [_diagnose_reference(case.args[0]) for case in _diagnose_cases()]
    assert sorted(found) == sorted(CAUSES * 4)


def test_a_collapsed_batch_sits_at_the_loss_ceiling():
    """The records' ceiling is NT-Xent of a constant embedding, log(2N - 1)."""
    from clcourse.losses import nt_xent

    z = torch.ones(32, 8)
    assert math.isclose(nt_xent(z, z, 0.5).item(), math.log(63), rel_tol=1e-6)
    rng = random.Random(1)
    for _ in range(200):
        record = _record("complete collapse", rng)
        assert record["ntxent"] <= math.log(2 * record["batch_size"] - 1) + 1e-9


def test_the_variant_without_a_slip_is_the_reference():
    for case in _diagnose_cases():
        assert _diagnose_variant(*case.args) == _diagnose_reference(*case.args)


# --- 17.collapse_rank: the closed form is the package's effective rank ------------------------

@pytest.mark.parametrize("case", _rank_cases(), ids=lambda c: c.name)
def test_the_closed_form_is_the_effective_rank_of_such_features(case):
    assert math.isclose(effective_rank(_spectrum_features(*case.args)), _rank_closed_form(*case.args), rel_tol=1e-6)


def test_rank_limits():
    assert math.isclose(_rank_reference(5, 5, 2.0, 2.0), 5.0)  # all equal: the dimension
    assert math.isclose(_rank_reference(3, 10, 1.0, 0.0), 3.0)  # the others zero: k
    assert 3.0 < _rank_reference(3, 10, 1.0, 0.01) < 10.0


def test_a_closed_form_that_disagrees_with_the_package_is_a_checker_bug(monkeypatch):
    import clcourse.grading.lesson17_challenges as lesson17

    monkeypatch.setattr(lesson17, "effective_rank", lambda features: 1.0)
    with pytest.raises(RuntimeError, match="closed form"):
        _rank_reference(3, 8, 1.0, 0.1)


# --- every known mistake is told, by its own hint -------------------------------------------

@pytest.mark.parametrize("mistakes, cases, reference", [
    (_DIAGNOSE_MISTAKES, _diagnose_cases(), _diagnose_reference),
    (_RANK_MISTAKES, _rank_cases(), _rank_reference),
], ids=["diagnose", "collapse_rank"])
def test_every_mistake_differs_from_the_reference_on_some_case(mistakes, cases, reference):
    for mistake in mistakes:
        assert_mistake_differs_somewhere(mistake, cases, reference)


@pytest.mark.parametrize("task_id, mistakes", [("17.diagnose", _DIAGNOSE_MISTAKES),
                                               ("17.collapse_rank", _RANK_MISTAKES)])
def test_every_mistake_is_told_by_its_own_hint(task_id, mistakes):
    assert_each_mistake_told_by_its_own_hint(task_id, mistakes)


# --- correct answers, written differently, pass -----------------------------------------------

def diagnose_other_thresholds(record):
    """Other thresholds inside the gaps between the causes pass too."""
    spread = record["output_std"] * math.sqrt(record["projection_dim"])
    ceiling = math.log(2 * record["batch_size"] - 1)
    if spread < 0.4:
        return "complete collapse"
    if record["ntxent"] / ceiling > 0.9:
        return "temperature too high"
    if record["effective_rank"] / record["feature_dim"] < 0.2:
        return "dimensional collapse"
    return "shortcut" if record["probe"] - record["probe_untrained"] < 3 else "healthy"


def rank_solution(k, d, a, b):
    total = k * a + (d - k) * b
    values = [a / total] * k + [b / total] * (d - k)
    return math.exp(-sum(p * math.log(p) for p in values if p > 0))


def rank_tensor(k, d, a, b):
    s = torch.tensor([a] * k + [b] * (d - k), dtype=torch.float64)
    p = s / s.sum()
    p = p[p > 0]
    return torch.exp(-(p * p.log()).sum()).item()


@pytest.mark.parametrize("task_id, answer", [
    ("17.diagnose", diagnose_other_thresholds), ("17.diagnose", lambda r: learner(r)),
    ("17.collapse_rank", rank_solution), ("17.collapse_rank", rank_tensor),
])
def test_correct_answers_pass(task_id, answer):
    result = evaluate(task_id, answer)
    assert result.passed, result.message


def test_the_solution_notebook_passes_and_the_student_notebook_holds_no_solution():
    assert_solution_passes_and_student_hides_it("17_challenges.ipynb", "17", ["17.collapse_rank", "17.diagnose"],
                                                ['return "dimensional collapse"',
                                                 "entropy -= (d - k) * (b / total)"])


# --- typical wrong answers: each must fail with a hint naming the mistake --------------------

def learner(record, *, spread_first=True, loss_first=False, scale_std=True, scale_rank=True, read_probe=True,
            read_loss=True, swap=False):
    """A learner's diagnosis with one of the typical slips."""
    spread = record["output_std"] * (math.sqrt(record["projection_dim"]) if scale_std else 10)
    rank = record["effective_rank"] / (record["feature_dim"] if scale_rank else 128)
    stuck = read_loss and record["ntxent"] > 0.95 * math.log(2 * record["batch_size"] - 1)
    complete, dimensional = ("dimensional collapse", "complete collapse") if swap else ("complete collapse",
                                                                                      "dimensional collapse")
    if loss_first and stuck:
        return "temperature too high"
    if not spread_first and rank < 0.24:
        return dimensional
    if spread < 0.3:
        return complete
    if stuck:
        return "temperature too high"
    if rank < 0.24:
        return dimensional
    if read_probe and record["probe"] < record["probe_untrained"] + 2.5:
        return "shortcut"
    return "healthy"


def loss_reader(record):
    return "healthy" if record["ntxent"] < 0.95 * math.log(2 * record["batch_size"] - 1) else "complete collapse"


WRONG = {
    "17.diagnose": [
        (loss_reader, "The loss alone cannot tell"),
        (lambda r: learner(r, swap=True), "two collapses are swapped"),
        (lambda r: learner(r, spread_first=False), "look at the output's spread first"),
        (lambda r: learner(r, loss_first=True), "check the output's spread before the loss"),
        (lambda r: learner(r, read_probe=False), "The probe was not read"),
        (lambda r: learner(r, scale_std=False), "compared with a fixed number"),
        (lambda r: learner(r, scale_rank=False), "compare effective_rank / feature_dim"),
        (lambda r: learner(r, read_loss=False), "ceiling was not read"),
    ],
    "17.collapse_rank": [
        (lambda k, d, a, b: rank_solution(k, d, a * a, b * b), "eigenvalues"),
        (lambda k, d, a, b: math.log(rank_solution(k, d, a, b)), "That is the entropy"),
        (lambda k, d, a, b: math.exp(math.log2(rank_solution(k, d, a, b))), "in bits"),
        (lambda k, d, a, b: float(k), "left out"),
        (lambda k, d, a, b: 1 / rank_solution(k, d, a, b), "sign was lost"),
        (lambda k, d, a, b: d, "most the rank can be"),
    ],
}


def test_wrong_answers_cover_every_task():
    assert_covers(WRONG, tasks(17))


@each_wrong_answer(WRONG)
def test_wrong_answer_is_rejected_with_its_hint(task_id, answer, mistake):
    assert_rejected_with_hint(task_id, answer, mistake)


# --- hostile and broken answers: failures with a reason, never a crash or a checker error ----

@pytest.mark.parametrize("task_id, answer, problem", [
    ("17.diagnose", raises_on_purpose, "ValueError: broken on purpose"),
    ("17.diagnose", exits_on_purpose, "SystemExit"),
    ("17.diagnose", lambda r: None, "expected"),
    ("17.diagnose", lambda r: 3, "expected"),
    ("17.diagnose", lambda r: "collapse", "collapse"),
    ("17.diagnose", lambda r: [learner(r)], "expected"),
    ("17.collapse_rank", raises_on_purpose, "ValueError: broken on purpose"),
    ("17.collapse_rank", exits_on_purpose, "SystemExit"),
    ("17.collapse_rank", lambda k, d, a, b: None, "expected a number"),
    ("17.collapse_rank", lambda k, d, a, b: float("nan"), "got nan"),
])
def test_hostile_and_broken_answers_fail_with_a_reason(task_id, answer, problem):
    result = evaluate(task_id, answer)
    assert result.status == "failed" and result.points == 0, result.message
    assert "checker itself failed" not in result.problem, result.message
    assert result.case and problem in result.problem + result.hint, result.message
