"""The cost every lesson prints at its top: one entry per lesson, equal to the measured table in benchmarks/."""

import json
import re
from pathlib import Path

import pytest
import torch

from clcourse.device import get_profile
from clcourse.lessons.costs import LESSON_BUDGET_S, LESSON_COSTS, cost_note, lesson_cost

REPO = Path(__file__).resolve().parents[1]
LESSONS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _measured_table() -> dict[str, int]:
    text = (REPO / "benchmarks" / "README.md").read_text()
    section = text.split("## Lesson times (`time_lessons.py`)")[1].split("\n## ")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^\| (\d\d)_\w+ \| (\d+) \|$", section, re.MULTILINE)}


def test_every_lesson_has_a_cost_entry_and_no_entry_lacks_a_lesson():
    assert sorted(path.name[:2] for path in LESSONS) == sorted(LESSON_COSTS)


def test_costs_equal_the_measured_table_and_fit_the_budget():
    assert _measured_table() == {lesson: cost.quick_seconds for lesson, cost in LESSON_COSTS.items()}
    assert all(cost.quick_seconds <= LESSON_BUDGET_S for cost in LESSON_COSTS.values())


@pytest.mark.parametrize("path", LESSONS, ids=lambda path: path.name)
def test_each_lesson_prints_its_own_cost_in_its_first_code_cell(path):
    cells = json.loads(path.read_text())["cells"]
    first_code = "".join(next(cell for cell in cells if cell["cell_type"] == "code")["source"])
    assert f'print(cost_note("{path.name[:2]}", profile))' in first_code


def test_quick_note_names_the_time_and_both_knobs():
    note = cost_note("03", get_profile("quick", torch.device("cpu")))
    assert f"about {LESSON_COSTS['03'].quick_seconds} s" in note
    assert "faster:" in note and "fuller:" in note and "CLCOURSE_PROFILE=full" in note


def test_full_note_does_not_promise_a_time_it_never_measured():
    note = cost_note("06", get_profile("full", torch.device("cpu")))
    assert "Not timed" in note and LESSON_COSTS["06"].full in note


def test_unknown_lesson_says_which_exist():
    with pytest.raises(KeyError, match="known lessons: 00"):
        lesson_cost("99")
