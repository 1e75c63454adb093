"""The exercise notebooks, their build, and the batch grader on them (hostile submissions: test_grading_integrity)."""

import csv
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from clcourse.cli import main
from clcourse.grading import tasks
from clcourse.grading.build import (
    BEGIN, KERNELSPEC, STUB, build_exercises, clean, render, strip_solutions, student_notebook,
)
from clcourse.grading.grader import GradingOptions, grade_notebooks

EXERCISES = Path(__file__).parent.parent / "exercises"
SOURCES = sorted((EXERCISES / "source").glob("*.ipynb"))
STUDENTS = [EXERCISES / p.name for p in SOURCES]


def test_one_source_notebook_per_lesson_with_tasks():
    lessons = {t.lesson for t in tasks()}
    assert [p.name[:2] for p in SOURCES] == sorted(lessons)
    for path in SOURCES:
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata["clcourse"]["lesson"] == path.name[:2]
        assert nb.metadata["kernelspec"]["name"] == "python3"


def test_sources_are_stored_clean():
    for path in SOURCES:
        assert path.read_text(encoding="utf-8") == render(clean(nbformat.read(path, as_version=4))), path


def test_committed_student_notebooks_equal_the_build(tmp_path):
    for src, student in zip(SOURCES, STUDENTS):
        built = render(student_notebook(nbformat.read(src, as_version=4), src.name))
        assert student.read_text(encoding="utf-8") == built, f"{student} is stale: run `clcourse exercises build`"
    assert main(["exercises", "build", "--source", str(EXERCISES / "source"), "--out", str(EXERCISES),
                 "--check"]) == 0
    written = build_exercises(EXERCISES / "source", tmp_path)
    assert all(changed for _, changed in written)  # first build into an empty folder
    assert not any(changed for _, changed in build_exercises(EXERCISES / "source", tmp_path))


def test_student_notebooks_keep_signatures_and_drop_solutions():
    for src, student in zip(SOURCES, STUDENTS):
        text = student.read_text(encoding="utf-8")
        assert BEGIN not in text and "outputs\": [\n    {" not in text
        src_defs = [c.source.splitlines()[0] for c in nbformat.read(src, as_version=4).cells
                    if c.cell_type == "code" and c.source.startswith("def ")]
        stu_cells = [c.source for c in nbformat.read(student, as_version=4).cells
                     if c.cell_type == "code" and c.source.startswith("def ")]
        assert [c.splitlines()[0] for c in stu_cells] == src_defs
        assert all(f"    {STUB}" in c for c in stu_cells)


def test_strip_solutions_keeps_indentation_and_rejects_bad_markers():
    source = "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n"
    assert strip_solutions(source) == f"def f(x):\n    y = 1\n    {STUB}"
    with pytest.raises(ValueError, match="never closed"):
        strip_solutions("### BEGIN SOLUTION\nx = 1")
    with pytest.raises(ValueError, match="without"):
        strip_solutions("x = 1\n### END SOLUTION")
    with pytest.raises(ValueError, match="inside another"):
        strip_solutions("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION")


@pytest.fixture(scope="module")
def graded_exercises():
    """The solution and the student notebooks, graded in one batch two at a time."""
    scores = grade_notebooks(SOURCES + STUDENTS, GradingOptions(seed=2026), jobs=2)
    return scores[: len(SOURCES)], scores[len(SOURCES):]


def test_solution_notebooks_score_full_marks(graded_exercises):
    scores, _ = graded_exercises
    for nb in scores:
        assert not nb.cell_errors, nb.cell_errors
        assert nb.tasks and all(t.passed for t in nb.tasks), [(t.task_id, t.message) for t in nb.tasks]
        assert nb.points == nb.max_points
    assert {t.task_id for nb in scores for t in nb.tasks} == {t.id for t in tasks()}


def test_student_notebooks_run_to_the_end_and_score_zero(graded_exercises):
    _, scores = graded_exercises
    for nb in scores:
        assert not nb.cell_errors, nb.cell_errors  # every cell ran
        assert len(nb.tasks) >= 2
        for t in nb.tasks:
            assert (t.status, t.points, t.message) == ("not attempted", 0, "not attempted yet")


def _synthetic_notebook(path: Path) -> None:
    """Exercise set 04 with a passing task around cells that raise, hang (tagged setup) and kill the worker."""
    cells = [
        new_code_cell("import torch\nfrom clcourse.grading import check", metadata={"tags": ["setup"]}),
        new_code_cell("def false_negatives(b, probs):\n"
                      "    p = torch.tensor(probs, dtype=torch.float64)\n"
                      "    return 2 * (b - 1) * float((p**2).sum()), 1 - float((p * (1 - p) ** (b - 1)).sum())"),
        new_code_cell('check("04.false_negatives", false_negatives)'),
        new_code_cell("raise ValueError('broken on purpose')\ndef info_nce(q, p, k, t=0.1):\n    return 0"),
        new_code_cell("while True:\n    pass", metadata={"tags": ["setup"]}),
        new_code_cell("import os\nos._exit(1)"),
    ]
    nbformat.write(new_notebook(cells=cells, metadata={"kernelspec": KERNELSPEC}), path)


def test_grader_survives_raising_hanging_and_killing_cells(tmp_path, capsys):
    notebook = tmp_path / "04_synthetic.ipynb"
    _synthetic_notebook(notebook)
    csv_path, json_path = tmp_path / "scores.csv", tmp_path / "scores.json"
    # 15 s: importing torch and the grader takes about 3 s on an idle 2-core machine and over 6 s on a loaded one,
    # and the setup cell that does it must finish for the task after it to be graded.
    assert main(["grade", str(notebook), "--timeout", "15", "--csv", str(csv_path), "--json", str(json_path),
                 "--seed", "1"]) == 0

    table = capsys.readouterr().out
    assert "04.false_negatives" in table and "total: 2/4 points" in table

    rows = {r["task"]: r for r in csv.DictReader(csv_path.open())}
    assert set(rows) == {"04.info_nce", "04.false_negatives"}
    assert rows["04.false_negatives"]["passed"] == "True"
    assert rows["04.info_nce"]["points"] == "0"
    assert "defines no function info_nce(); its cell 4 raised ValueError: broken on purpose" in rows["04.info_nce"]["message"]

    report = json.loads(json_path.read_text())
    (nb,) = report["notebooks"]
    assert report["points"] == nb["points"] == 2 and report["max_points"] == nb["max_points"] == 4
    assert report["seed"] == 1 and nb["exercise_set"] == "04"
    errors = nb["cell_errors"]
    assert errors[0].startswith("cell 4: raised ValueError")
    assert "cell 5: did not finish within 15 s" in errors[1]  # its setup tag bought it no time
    assert errors[2].startswith("cell 6: ended the process running the notebook")


def test_grade_reports_missing_notebooks(tmp_path, capsys):
    assert main(["grade", str(tmp_path / "nope.ipynb")]) == 1
    assert "no such notebook" in capsys.readouterr().err


def test_check_output_is_shown_once_as_html():
    nb = new_notebook(cells=[new_code_cell(
        "from clcourse.grading import check\ncheck('05.chord_margin', lambda d_ap, m: 1 / 0)")])
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    outputs = nb.cells[0].outputs
    assert [o.output_type for o in outputs] == ["display_data"]
    assert "ZeroDivisionError" in outputs[0].data["text/html"]
    assert "05.chord_margin: failed" in outputs[0].data["text/plain"]


def test_nbgrader_generates_the_same_student_notebooks():
    """The sources carry nbgrader's cell metadata: its generate_assignment preprocessors accept them and write the
    stubs `clcourse exercises build` writes, with the registry's points on the check cells."""
    from nbgrader import utils
    from nbgrader.preprocessors import CheckCellMetadata, ClearOutput, ClearSolutions, ComputeChecksums, LockCells

    def generate(nb):
        resources: dict = {}
        for step in (ClearSolutions(code_stub={"python": STUB}), LockCells(), ClearOutput(), CheckCellMetadata(),
                     ComputeChecksums()):
            nb, resources = step.preprocess(nb, resources)
        return nb

    for src, student in zip(SOURCES, STUDENTS):
        released = generate(nbformat.read(src, as_version=4))
        built = nbformat.read(student, as_version=4)
        assert [c.source for c in released.cells] == [c.source for c in built.cells], src.name
        graded = {c.metadata.nbgrader["grade_id"]: c.metadata.nbgrader["points"] for c in released.cells
                  if utils.is_grade(c)}
        assert graded == {t.id.replace(".", "_"): t.points for t in tasks(src.name[:2])}
        assert all(utils.is_locked(c) for c in released.cells if utils.is_grade(c))

    bare = nbformat.read(SOURCES[0], as_version=4)
    for cell in bare.cells:
        cell.metadata.pop("nbgrader", None)
    with pytest.raises(RuntimeError, match="non-solution cell"):  # why the metadata is there
        generate(bare)
