"""The batch grader against hostile submissions (tests/hostile_submissions.py): forged results, escapes, bombs."""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from clcourse.cli import main
from clcourse.grading import evaluate
from clcourse.grading.build import KERNELSPEC
from clcourse.grading.grader import GradingOptions, grade_notebooks
from clcourse.grading.lesson07_moco import _key_age_cases, _key_age_reference
from clcourse.grading.sandbox import isolation
from hostile_submissions import (
    ALIAS, BOMBS, DAEMON, EXERCISES, FORGER, KILLER, OTHER_SET, SLEEP_MARK, SOLVED, STUB, write_submission,
)

NAMESPACES = isolation() == "namespaces"
needs_namespaces = pytest.mark.skipif(not NAMESPACES, reason="holds with the Linux namespaces only (see sandbox.py)")


def _key_age_table_notebook(path: Path) -> Path:
    """07's derivation answered with a lookup table of the public cases: passes check(), not the grader."""
    table = {case.args: _key_age_reference(*case.args) for case in _key_age_cases()}
    nb = nbformat.read(EXERCISES / "07_moco.ipynb", as_version=4)
    nb.cells.append(new_code_cell(f"TABLE = {table!r}\ndef mean_key_age(queue_size, batch_size, momentum):\n"
                                  "    return TABLE[(queue_size, batch_size, momentum)]"))
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("class")
    good = write_submission(folder / "03_good.ipynb", SOLVED)
    copier = [f"import json\nsource = json.load(open({str(good)!r}))\n"
              "for cell in source['cells']:\n    if cell['cell_type'] == 'code' and 'check(' not in cell['source']:\n"
              "        exec(cell['source'])"]
    killer = KILLER + (["import os, signal\nos.kill(-1, signal.SIGKILL)"] if NAMESPACES else [])
    paths = [
        good,
        write_submission(folder / "03_forger.ipynb", STUB, FORGER),
        write_submission(folder / "03_alias.ipynb", STUB, ALIAS),
        write_submission(folder / "03_nochecks.ipynb", STUB, drop_checks=True, metadata=False),
        write_submission(folder / "03_otherset.ipynb", SOLVED, OTHER_SET),
        write_submission(folder / "03_copier.ipynb", STUB, copier),
        write_submission(folder / "03_daemon.ipynb", SOLVED, DAEMON),
        write_submission(folder / "03_killer.ipynb", SOLVED, killer),
        write_submission(folder / "03_bombs.ipynb", SOLVED, BOMBS),
        write_submission(folder / "03_hang.ipynb", SOLVED, ["while True:\n    pass"]),
        _key_age_table_notebook(folder / "07_table.ipynb"),
    ]
    (folder / "03_garbage.ipynb").write_text("{ not a notebook")
    nbformat.write(new_notebook(cells=[], metadata={"kernelspec": KERNELSPEC}), folder / "03_empty.ipynb")
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1")]), folder / "homework.ipynb")
    paths += [folder / "03_garbage.ipynb", folder / "03_empty.ipynb", folder / "homework.ipynb"]
    csv_path, json_path = folder / "scores.csv", folder / "scores.json"
    started = time.monotonic()
    status = main(["grade", *map(str, paths), "--jobs", "2", "--timeout", "20", "--memory-mb", "2048",
                   "--processes", "32", "--output-kb", "16", "--file-mb", "16", "--no-progress",
                   "--csv", str(csv_path), "--json", str(json_path)])
    rows: dict[str, dict[str, dict]] = {}
    for r in csv.DictReader(csv_path.open()):
        rows.setdefault(Path(r["notebook"]).stem, {})[r["task"]] = r
    report = {Path(n["notebook"]).stem: n for n in json.loads(json_path.read_text())["notebooks"]}
    return {"status": status, "rows": rows, "report": report, "seconds": time.monotonic() - started,
            "seed": json.loads(json_path.read_text())["seed"]}


def _scores(graded, name: str) -> dict[str, tuple[str, str]]:
    return {task: (r["status"], r["points"]) for task, r in graded["rows"][name].items()}


FULL = {"03.nt_xent": ("passed", "2"), "03.temperature_for_share": ("passed", "2")}
NOT_ATTEMPTED = {"03.nt_xent": ("not attempted", "0"), "03.temperature_for_share": ("not attempted", "0")}


def test_every_submission_has_a_row_per_task_of_its_set(graded):
    assert graded["status"] == 2  # homework.ipynb's set cannot be told
    assert set(graded["rows"]) == {"03_good", "03_forger", "03_alias", "03_nochecks", "03_otherset", "03_copier",
                                   "03_daemon", "03_killer", "03_bombs", "03_hang", "07_table", "03_garbage",
                                   "03_empty", "homework"}
    for name, tasks in graded["rows"].items():
        if name == "homework":
            assert list(tasks) == [""] and "cannot tell which exercise set" in tasks[""]["message"]
        elif name == "07_table":
            assert set(tasks) == {"07.momentum_update", "07.key_age"}
        else:
            assert set(tasks) == set(FULL), name
        assert all(int(r["points"]) <= int(r["max_points"]) for r in tasks.values())
    assert isinstance(graded["seed"], int)


def test_honest_and_robust_submissions_score_fully(graded):
    robust = ("03_good", "03_otherset", "03_daemon", "03_bombs", "03_hang") + (("03_killer",) if NAMESPACES else ())
    for name in robust:
        assert _scores(graded, name) == FULL, (name, graded["rows"][name])


def test_forged_logs_printed_reports_and_patched_references_score_nothing(graded):
    assert _scores(graded, "03_forger") == NOT_ATTEMPTED
    assert not graded["report"]["03_forger"]["cell_errors"]  # every forging cell ran, and nothing came of it


def test_the_reference_itself_is_not_an_answer(graded):
    row = graded["rows"]["03_alias"]["03.nt_xent"]
    assert row["points"] == "0" and "not a function written in the notebook" in row["message"]
    assert "clcourse.losses.nt_xent" in row["message"]


def test_deleting_check_cells_and_metadata_keeps_every_task_in_the_score(graded):
    assert _scores(graded, "03_nochecks") == NOT_ATTEMPTED


def test_checks_of_another_set_are_reported_not_added(graded):
    notes = graded["report"]["03_otherset"]["notes"]
    assert any("07.key_age" in n and "ignored" in n for n in notes)
    assert graded["report"]["03_otherset"]["points"] == 4


@needs_namespaces
def test_a_classmates_notebook_cannot_be_read(graded):
    assert _scores(graded, "03_copier") == NOT_ATTEMPTED
    assert graded["report"]["03_copier"]["cell_errors"]  # the copy failed: it read an empty file


@needs_namespaces
def test_no_process_outlives_its_submission(graded):
    left = subprocess.run(["pgrep", "-f", f"sleep {SLEEP_MARK}"], capture_output=True, text=True).stdout
    assert left == ""


@needs_namespaces
def test_killing_everything_in_reach_costs_nothing_but_the_cells(graded):
    errors = graded["report"]["03_killer"]["cell_errors"]  # the worker is its namespace's init: nothing it
    assert all("ended the process" not in e for e in errors), errors  # can signal is outside


def test_memory_output_process_and_file_bombs_are_bounded(graded):
    report = graded["report"]["03_bombs"]
    errors = " ".join(report["cell_errors"])
    assert "alloc" in errors.lower() or "memory" in errors.lower()  # the 6 GiB tensor was refused
    if report["isolation"]["processes"] != "not limited (root without a pids cgroup)":
        assert "BlockingIOError" in errors or "Resource temporarily unavailable" in errors
    assert "File too large" in errors or "No space left" in errors
    assert len(report["output"]) <= 16 * 1024


def test_a_hanging_cell_is_stopped_whatever_its_tags(graded):
    (error,) = graded["report"]["03_hang"]["cell_errors"]
    assert "did not finish within 20 s" in error


def test_unreadable_and_empty_notebooks_list_every_task_with_the_reason(graded):
    for name, why in (("03_garbage", "could not be read (NotJSONError)"), ("03_empty", "has no code")):
        rows = graded["rows"][name]
        assert set(rows) == set(FULL) and all(r["points"] == "0" and why in r["message"] for r in rows.values())


def test_answers_are_checked_on_inputs_the_notebook_never_saw(graded):
    table = {case.args: _key_age_reference(*case.args) for case in _key_age_cases()}
    namespace: dict = {"TABLE": table}
    exec("def mean_key_age(queue_size, batch_size, momentum):\n    return TABLE[(queue_size, batch_size, momentum)]",
         namespace)
    assert evaluate("07.key_age", namespace["mean_key_age"]).passed  # the public cases: the table passes
    row = graded["rows"]["07_table"]["07.key_age"]
    assert row["points"] == "0" and "KeyError" in row["message"]


def test_a_submission_that_kills_its_supervisor_loses_only_its_own_rows(tmp_path):
    """Without namespaces a submission can reach its supervisor: that costs its own row, not the batch's."""
    killer = write_submission(tmp_path / "03_killer.ipynb", STUB, ["import os, signal\nos.kill(os.getppid(), signal.SIGKILL)"])
    honest = write_submission(tmp_path / "03_honest.ipynb", SOLVED)
    env = {**os.environ, "CLCOURSE_GRADING_ISOLATION": "process-group"}
    csv_path = tmp_path / "scores.csv"
    run = subprocess.run([sys.executable, "-m", "clcourse", "grade", str(killer), str(honest), "--csv", str(csv_path),
                          "--no-progress"], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [(Path(r["notebook"]).stem, r["task"], r["status"], r["points"]) for r in csv.DictReader(csv_path.open())]
    assert rows[2:] == [("03_honest", "03.nt_xent", "passed", "2"),
                        ("03_honest", "03.temperature_for_share", "passed", "2")]
    assert [r[2:] for r in rows[:2]] == [("not graded", "0")] * 2
    assert "grading process ended" in next(csv.DictReader(csv_path.open()))["message"]


def test_grading_options_and_flags_are_checked(tmp_path, capsys):
    good = write_submission(tmp_path / "03_good.ipynb", SOLVED)
    assert main(["grade", str(good), "--set", "99"]) == 1
    assert "no such exercise set" in capsys.readouterr().err
    assert main(["grade", str(good), "--memory-mb", "0"]) == 1
    assert "memory_mb must be a positive integer" in capsys.readouterr().err
    assert main(["grade", str(good), "--memory-mb", "512"]) == 1
    assert "at least 1024" in capsys.readouterr().err
    with pytest.raises(ValueError, match="cell_timeout must be > 0"):
        GradingOptions(cell_timeout=0)
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        grade_notebooks([good], jobs=0)
    wrong_name = write_submission(tmp_path / "04_mine.ipynb", SOLVED)
    (score,) = grade_notebooks([wrong_name])
    assert not score.tasks and "metadata says exercise set 03 but its file name says 04" in score.notes[0]
