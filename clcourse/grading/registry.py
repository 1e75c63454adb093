"""The task registry and ``check()``, the one call an exercise notebook makes.

Each lesson module registers its checkers with :func:`task`.  A checker takes
the learner's answer and either returns (pass) or raises
:class:`~clcourse.grading.harness.Failure` / ``NotAttempted``; ``check`` turns
that into a :class:`~clcourse.grading.feedback.CheckResult` and shows it. The batch grader calls
:func:`evaluate` in its own process, with the submission's function running in a worker.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from clcourse.grading.feedback import (
    FAILED,
    NOT_ATTEMPTED,
    PASSED,
    CheckResult,
    show,
)
from clcourse.grading.harness import Failure, NotAttempted


@dataclass(frozen=True)
class Task:
    """A graded exercise task.

    Attributes:
        id: ``"NN.name"``, NN the lesson number.
        description: one line: what the learner writes.
        points: what the task is worth.
        answer: the name of the function the exercise notebook defines for it (what the grader calls).
    """

    id: str
    description: str
    points: int
    answer: str
    checker: Callable[[Any], None] = field(repr=False, compare=False)

    @property
    def lesson(self) -> str:
        """The lesson number, e.g. ``"03"``."""
        return self.id.split(".", 1)[0]

    def __str__(self) -> str:
        return f"{self.id:<24} lesson {self.lesson}  {self.points} pt  {self.description}"


_TASKS: dict[str, Task] = {}


def task(task_id: str, description: str, points: int = 1, *, answer: str) -> Callable:
    """Decorator registering a checker function as task ``task_id``; ``answer`` names the notebook's function."""

    def register(checker: Callable[[Any], None]) -> Callable[[Any], None]:
        if task_id in _TASKS:
            raise ValueError(f"task {task_id!r} is registered twice")
        if not answer.isidentifier():
            raise ValueError(f"task {task_id!r}: answer must be a function name, got {answer!r}")
        _TASKS[task_id] = Task(task_id, description, points, answer, checker)
        return checker

    return register


def tasks(lesson: str | int | None = None) -> list[Task]:
    """Every task (or one lesson's, e.g. ``tasks(3)``), in the order the exercises ask them.

    Print one to read its id, lesson, points and description.
    """
    wanted = None if lesson is None else f"{int(lesson):02d}"
    return [t for t in _TASKS.values() if wanted in (None, t.lesson)]


def get_task(task_id: str) -> Task:
    """The task registered as ``task_id``; ``KeyError`` listing the known ids otherwise."""
    try:
        return _TASKS[task_id]
    except KeyError:
        known = ", ".join(sorted(_TASKS))
        raise KeyError(f"unknown task {task_id!r}; known tasks: {known}") from None


DEFAULT_CHECK_SECONDS = 120.0  # the slowest check (01.shortcut_free_views) trains for about 10-20 s
CHECK_SECONDS_VARIABLE = "CLCOURSE_CHECK_TIMEOUT"


class CheckTimeout(BaseException):
    """The check ran past its time limit (a BaseException, so that the learner's ``except Exception`` cannot swallow it)."""


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`CheckTimeout` in this thread after ``seconds`` (POSIX main thread; elsewhere no limit)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise CheckTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _check_seconds(timeout: float | None) -> float:
    seconds = float(os.environ.get(CHECK_SECONDS_VARIABLE, DEFAULT_CHECK_SECONDS)) if timeout is None else timeout
    if not seconds > 0:
        raise ValueError(f"a check's time limit must be > 0 seconds, got {seconds}")
    return seconds


def evaluate(task_id: str, answer: Any, timeout: float | None = None) -> CheckResult:
    """Grade ``answer`` for ``task_id`` without displaying or logging (see :func:`check`)."""
    seconds = _check_seconds(timeout)
    try:
        t = get_task(task_id)
    except KeyError as exc:
        return CheckResult(str(task_id), FAILED, 0, 0, problem=exc.args[0],
                           hint="Copy the task id from the exercise's check cell.")
    try:
        with _isolated(), _time_limit(seconds):
            t.checker(answer)
    except CheckTimeout:
        return CheckResult(t.id, FAILED, 0, t.points, problem=f"the check did not finish within {seconds:g} s",
                           hint="Your function is very slow on the check's inputs or never returns: look for a loop "
                                "that does not end, or a loop over every element where one tensor operation would "
                                f"do. ({CHECK_SECONDS_VARIABLE} sets the limit.)")
    except NotAttempted:
        return CheckResult(t.id, NOT_ATTEMPTED, 0, t.points,
                           problem="not attempted yet: the function still raises NotImplementedError",
                           hint="Replace the `raise NotImplementedError(...)` line with your code.")
    except Failure as f:
        return CheckResult(t.id, FAILED, 0, t.points, case=f.case, expected=f.expected,
                           received=f.received, problem=f.problem, hint=f.hint)
    except Exception as exc:  # a checker bug must not crash the learner's notebook
        return CheckResult(t.id, FAILED, 0, t.points,
                           problem=f"the checker itself failed ({type(exc).__name__}: {exc})",
                           hint="This is a bug in clcourse, not in your answer: please report it.")
    return CheckResult(t.id, PASSED, t.points, t.points)


@contextmanager
def _isolated() -> Iterator[None]:
    """Run a checker without touching the learner's session: global RNG state and thread count."""
    before = torch.get_num_threads()
    # Check inputs are tiny: extra threads only add synchronisation, which makes a check
    # about ten times slower on a busy laptop.
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(before)


def check(task_id: str, answer: Any, timeout: float | None = None) -> CheckResult:
    """Check ``answer`` for task ``task_id`` and show the feedback at once.

    The answer is compared with the reference on random and edge-case inputs.
    On failure the feedback names the input, the expected and received values
    and, when the answer matches a typical mistake, a hint naming it.  An
    answer that still raises ``NotImplementedError`` is "not attempted yet";
    any other exception is reported, never raised.

    Args:
        task_id: e.g. ``"03.nt_xent"`` (see :func:`tasks`).
        answer: usually the function the exercise asks for.
        timeout: seconds the check may take (default ``$CLCOURSE_CHECK_TIMEOUT`` or 120); past it the
            check fails and says so, where the platform allows (POSIX, the main thread).

    Returns:
        the :class:`CheckResult` (``.passed``, ``.message``); in Jupyter it is
        displayed as a coloured box, elsewhere printed.
    """
    result = evaluate(task_id, answer, timeout)
    show(result)
    return result
