"""Quoted figures cannot drift: each lesson's quotes file against its markdown, and against this run's figures."""

import os
from pathlib import Path

import pytest

from clcourse.lessons import measured
from clcourse.lessons.measured import RESULTS_DIR_VARIABLE, drift_problems, load_recorded, quote_problems

REPO = Path(__file__).resolve().parents[1]
LESSONS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", LESSONS, ids=lambda path: path.name)
def test_each_quote_is_in_the_markdown_states_its_value_and_is_recorded(path):
    assert quote_problems(path) == []


@pytest.mark.parametrize("path", LESSONS, ids=lambda path: path.name)
def test_every_lesson_quotes_its_figures_through_a_quotes_file(path):
    """Every lesson reports measured figures, so every lesson has quotes: none may opt out by having no file."""
    assert measured.quotes_path(path).exists(), f"{measured.quotes_path(path).name} is missing"
    assert len(measured.load_quotes(path)) > 0


@pytest.mark.parametrize("path", LESSONS, ids=lambda path: path.name)
def test_quoted_figures_match_this_run(path, request):
    """Runs after the notebooks (conftest.py moves it last): compares with the run this session made."""
    ran = any(Path(str(item.fspath)).resolve() == path.resolve() for item in request.session.items)
    if not ran:
        pytest.skip("the lesson did not run in this session: `make test` (or pytest with notebooks/) runs it")
    recorded = load_recorded(Path(os.environ[RESULTS_DIR_VARIABLE]) / f"{path.name[:2]}.json")
    assert drift_problems(path, recorded) == []


def _lesson(tmp_path, markdown: str, code: str, quotes: list[dict]) -> Path:
    import json

    notebook = tmp_path / "07_fixture.ipynb"
    cells = [{"cell_type": "markdown", "metadata": {}, "source": markdown},
             {"cell_type": "code", "metadata": {}, "source": code, "outputs": [], "execution_count": None}]
    notebook.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    measured.quotes_path(notebook).write_text(json.dumps(quotes))
    return notebook


QUOTE = {"key": "probe", "quote": "reached 86.2 ± 1.1% with $m = 0.99$", "value": 86.2, "tolerance": 3.0}
CODE = 'record("07", "probe", 100 * probe.mean)'


def test_a_consistent_lesson_has_no_problems_and_whitespace_does_not_matter(tmp_path):
    notebook = _lesson(tmp_path, "The probe reached 86.2 ± 1.1%\nwith $m = 0.99$.", CODE, [QUOTE])
    assert quote_problems(notebook) == []
    assert drift_problems(notebook, {"probe": 84.0}) == []


def test_edited_markdown_a_wrong_value_and_a_missing_record_are_each_named(tmp_path):
    notebook = _lesson(tmp_path, "The probe reached 85.0 ± 1.1% with $m = 0.99$.", "pass",
                       [QUOTE | {"value": 86.3, "tolerance": 0}])
    problems = " ".join(quote_problems(notebook))
    assert "no longer says" in problems and "does not state the value 86.3" in problems
    assert "tolerance must be positive" in problems and 'record("07", "probe"' in problems
    assert "85.0 ± 1.1" in problems  # an uncovered spread


def test_drift_beyond_the_tolerance_and_a_missing_figure_fail(tmp_path):
    notebook = _lesson(tmp_path, "reached 86.2 ± 1.1% with $m = 0.99$", CODE, [QUOTE])
    assert "beyond the tolerance" in " ".join(drift_problems(notebook, {"probe": 82.0}))
    assert "was not recorded" in " ".join(drift_problems(notebook, {}))


def test_record_writes_only_where_the_variable_points_and_replaces_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv(RESULTS_DIR_VARIABLE)
    assert measured.record("07", "probe", 1.5) == 1.5
    monkeypatch.setenv(RESULTS_DIR_VARIABLE, str(tmp_path))
    measured.record("07", "probe", 2.0)
    measured.record("07", "probe", 3.0)
    measured.record("07", "knn", 4)
    assert load_recorded(tmp_path / "07.json") == {"probe": 3.0, "knn": 4.0}


@pytest.mark.parametrize("lesson, value, message", [("7", 1.0, "two digits"), ("07", float("nan"), "finite")])
def test_record_rejects_a_bad_lesson_id_and_a_non_finite_value(lesson, value, message):
    with pytest.raises(ValueError, match=message):
        measured.record(lesson, "probe", value)


def test_a_key_recorded_in_a_loop_by_an_f_string_counts_as_recorded(tmp_path):
    quote = QUOTE | {"key": "probe_10%"}
    code = 'for name in ["1%", "10%"]:\n    record("07", f"probe_{name}", 1.0)'
    assert quote_problems(_lesson(tmp_path, "reached 86.2 ± 1.1% with $m = 0.99$", code, [quote])) == []
    other_lesson = code.replace('"07"', '"06"')
    assert "no code cell calls" in " ".join(quote_problems(_lesson(tmp_path, "reached 86.2 ± 1.1% with $m = 0.99$",
                                                                  other_lesson, [quote])))
