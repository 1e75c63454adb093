"""pytest's hooks for the lessons: their execution times, and the number-drift check after they ran.

`make test` prints each lesson's time at its end: a report, not a timing assertion, so a lesson drifting past
its budget is seen at once, whatever the machine, without making the suite fail on a slow one.

Each lesson records the figures its markdown quotes (`clcourse.lessons.measured.record`) into a folder made
fresh for this session; `tests/test_number_drift.py`'s run-time check is moved after every notebook, so it
compares the text with the one run of each lesson that this session made. The end of the report lists every
quoted figure next to what this run measured.
"""

import os
import tempfile
from collections import defaultdict
from pathlib import Path

from clcourse.lessons.costs import LESSON_BUDGET_S, LESSON_COSTS
from clcourse.lessons.measured import RESULTS_DIR_VARIABLE, load_quotes, load_recorded

# Set before any kernel starts, so that every lesson's kernel inherits it; never a stale folder from before.
os.environ[RESULTS_DIR_VARIABLE] = tempfile.mkdtemp(prefix="clcourse-measured-")

DRIFT_CHECK = "test_number_drift.py::test_quoted_figures_match_this_run"

_seconds = defaultdict(float)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: DRIFT_CHECK in item.nodeid)  # stable: only the drift checks move, to the end


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

    terminalreporter.section("figures the lessons quote, against this run")
    for path in sorted(_seconds):
        recorded = load_recorded(Path(os.environ[RESULTS_DIR_VARIABLE]) / f"{Path(path).name[:2]}.json")
        for quote in load_quotes(Path(path)):
            measured = recorded.get(quote.key)
            shown = "not recorded" if measured is None else f"{measured:.4g}"
            flag = "" if measured is not None and abs(measured - quote.value) <= quote.tolerance else "  <- drifted"
            terminalreporter.write_line(f"{Path(path).name[:2]}  {quote.key:<28} quoted {quote.value:>8g} "
                                        f"± {quote.tolerance:<5g} measured {shown}{flag}")
