"""Shared checks for the graded tasks' typical wrong answers (tests/test_grading*.py).

Each test module lists ``WRONG = {task_id: [(answer, text the hint must contain), ...]}``.
"""

import pytest

from clcourse.grading import evaluate


def assert_covers(wrong: dict, tasks) -> None:
    """Every task has at least five known wrong answers (the course's standard), and only those tasks are listed."""
    assert sorted(wrong) == sorted(t.id for t in tasks)
    assert all(len(answers) >= 5 for answers in wrong.values()), {task: len(a) for task, a in wrong.items()}


def each_wrong_answer(wrong: dict):
    """Parametrize a test over ``(task_id, answer, mistake)`` for every wrong answer."""
    cases = [(task_id, answer, mistake) for task_id, answers in wrong.items() for answer, mistake in answers]
    return pytest.mark.parametrize("task_id, answer, mistake", cases, ids=[f"{t}:{m}" for t, _, m in cases])


def assert_rejected_with_hint(task_id: str, answer, mistake: str) -> None:
    """The answer fails with zero points, names the failing input and gives the expected hint."""
    result = evaluate(task_id, answer)
    assert result.status == "failed" and result.points == 0
    assert result.case, "the failing input must be named"
    assert mistake in result.hint + result.problem, result.message
