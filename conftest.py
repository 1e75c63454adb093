"""pytest's report of how long each lesson notebook took: `make test` prints it at its end.

A report, not a timing assertion: a lesson drifting past its budget is seen at once, whatever the
machine, without making the suite fail on a slow one.
"""

from collections import defaultdict
from pathlib import Path

from clcourse.lessons.costs import LESSON_BUDGET_S, LESSON_COSTS

_seconds = defaultdict(float)


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _seconds[path] += report.duration  # setup (the kernel's start), call and teardown of every cell


def pytest_terminal_summary(terminalreporter):
    if not _seconds:
        return
    terminalreporter.section("lesson execution times")
    for path, seconds in sorted(_seconds.items()):
        cost = LESSON_COSTS.get(Path(path).name[:2])
        quoted = f"  (the lesson says about {cost.quick_seconds} s)" if cost else ""
        over = f"  <- over the {LESSON_BUDGET_S} s budget" if seconds > LESSON_BUDGET_S else ""
        terminalreporter.write_line(f"{seconds:7.1f} s  {path}{quoted}{over}")
    terminalreporter.write_line(f"{sum(_seconds.values()):7.1f} s  all {len(_seconds)} notebooks")
