"""Shared checks for the graded tasks' typical wrong answers (tests/test_grading*.py).

Each test module lists ``WRONG = {task_id: [(answer, text the hint must contain), ...]}``.
"""

import sys
from pathlib import Path

import nbformat
import pytest

from clcourse.device import torch_threads
from clcourse.grading import evaluate
from clcourse.grading.build import BEGIN, STUB, render, student_notebook
from clcourse.grading.harness import call_plain, first_difference

EXERCISES = Path(__file__).parent.parent / "exercises"


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


def assert_mistake_differs_somewhere(mistake, cases, reference) -> None:
    """A known mistake returns something other than the reference on at least one case: else its hint could never
    be told."""
    assert any(first_difference(call_plain(mistake.fn, case), call_plain(reference, case)) is not None
               for case in cases)


def assert_each_mistake_told_by_its_own_hint(task_id: str, mistakes) -> None:
    """Each known mistake, given as the answer, fails with its own hint (no other mistake shadows it)."""
    for mistake in mistakes:
        result = evaluate(task_id, mistake.fn)
        assert not result.passed and result.hint == mistake.hint, (mistake.hint[:50], result.message)


def assert_solution_passes_and_student_hides_it(name: str, lesson: str, task_ids: list[str], leaks: list[str]) -> None:
    """The solution notebook ``exercises/source/<name>`` runs top to bottom and each of its check cells passes; the
    committed student notebook equals a fresh build, holds one stub per task and none of the ``leaks`` (lines of the
    solutions)."""
    source = EXERCISES / "source" / name
    nb = nbformat.read(source, as_version=4)
    assert nb.metadata["clcourse"]["lesson"] == lesson
    checked, namespace = {}, {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            with torch_threads(1):
                exec(cell.source, namespace)  # noqa: S102 - our own notebook
            namespace["check"] = lambda task_id, answer: checked.setdefault(task_id, answer)
    assert sorted(checked) == sorted(task_ids)
    for task_id, answer in checked.items():
        assert evaluate(task_id, answer).passed, task_id
    student = (EXERCISES / name).read_text(encoding="utf-8")
    assert student == render(student_notebook(nb, source.name))
    assert BEGIN not in student and student.count(STUB.replace('"', '\\"')) == len(task_ids)
    assert not [leak for leak in leaks if leak in student]


def raises_on_purpose(*args):
    """A hostile answer that raises: the checker must report it as a failure, not crash."""
    raise ValueError("broken on purpose")


def exits_on_purpose(*args):
    """A hostile answer that calls sys.exit: the checker must survive it."""
    sys.exit(3)
