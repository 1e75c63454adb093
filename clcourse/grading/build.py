"""Student notebooks from solution sources (``clcourse exercises build``).

A source notebook ``exercises/source/NN_topic.ipynb`` holds each solution
between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` lines, the convention
nbgrader uses.  The student version ``exercises/NN_topic.ipynb`` replaces every
such region by one ``raise NotImplementedError(...)`` line at the marker's
indentation, so the function signature and the code around it stay.  Outputs,
execution counts and editor metadata are dropped and the JSON is written in one
canonical form: building twice gives identical bytes, and a test compares the
committed student notebooks with a fresh build.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB = 'raise NotImplementedError("Replace this line with your solution, then run the check cell below.")'
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
# Cell metadata worth keeping: tags; nbgrader's is recomputed from the cell (see nbgrader_metadata).
_CELL_METADATA = ("tags",)
NBGRADER_SCHEMA = 3
_CHECK_CALL = re.compile(r"""^\s*check\(\s*["']([0-9]{2}\.[a-z0-9_]+)["']""", re.MULTILINE)
_DEFINED = re.compile(r"^def ([A-Za-z_][A-Za-z0-9_]*)\(", re.MULTILINE)


def strip_solutions(source: str, where: str = "cell") -> str:
    """Replace each solution region of ``source`` by a stub raising ``NotImplementedError``.

    Raises:
        ValueError: unbalanced or nested markers; the message names ``where``.
    """
    out: list[str] = []
    inside = False
    for number, line in enumerate(source.splitlines(), start=1):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise ValueError(f"{where}, line {number}: {BEGIN!r} inside another solution region")
            inside = True
            out.append(line[: len(line) - len(line.lstrip())] + STUB)
        elif marker == END:
            if not inside:
                raise ValueError(f"{where}, line {number}: {END!r} without a {BEGIN!r} before it")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN!r} is never closed by {END!r}")
    return "\n".join(out)


def nbgrader_metadata(source: str) -> dict | None:
    """nbgrader's metadata for a code cell of a source notebook, so that the course also runs in nbgrader.

    A cell holding a solution region is a solution cell (``grade_id``: the function it defines); a cell that
    calls ``check("NN.name", ...)`` is an autograded test cell, locked, worth the task's points in the registry
    (``grade_id``: ``NN_name``); other cells get none. ``clcourse grade`` does not read this metadata.
    """
    from clcourse.grading.registry import get_task

    if BEGIN in source:
        defined = _DEFINED.search(source)
        if defined is None:
            raise ValueError("a cell with a solution region must define the task's function (def name(...))")
        return {"grade": False, "grade_id": defined.group(1), "locked": False, "schema_version": NBGRADER_SCHEMA,
                "solution": True, "task": False}
    checked = _CHECK_CALL.search(source)
    if checked:
        task = get_task(checked.group(1))
        return {"grade": True, "grade_id": task.id.replace(".", "_"), "locked": True, "points": task.points,
                "schema_version": NBGRADER_SCHEMA, "solution": False, "task": False}
    return None


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` without outputs, execution counts or editor metadata, kernel python3; code cells carry
    nbgrader's metadata (:func:`nbgrader_metadata`)."""
    nb = copy.deepcopy(nb)
    nb.metadata = {
        "kernelspec": dict(KERNELSPEC),
        "language_info": {"name": "python"},
        **({"clcourse": nb.metadata["clcourse"]} if "clcourse" in nb.metadata else {}),
    }
    for cell in nb.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in _CELL_METADATA}
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            grading = nbgrader_metadata(cell.source)
            if grading is not None:
                cell.metadata["nbgrader"] = grading
    return nb


def student_notebook(source: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """The student version of a source notebook: solutions stubbed, cleaned (see :func:`clean`)."""
    nb = clean(source)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source, f"{name}, cell {index + 1}")
    nbformat.validate(nb)
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    """The canonical text of a notebook file (nbformat's sorted, indented JSON, final newline)."""
    return nbformat.writes(nb) + "\n"


def build_exercises(source_dir: str | Path = "exercises/source", out_dir: str | Path = "exercises",
                    check_only: bool = False) -> list[tuple[Path, bool]]:
    """Write the student notebook for every ``*.ipynb`` in ``source_dir`` into ``out_dir``.

    Args:
        check_only: write nothing; only report which student notebooks are out of date.

    Returns:
        ``(student path, changed)`` for each source, ``changed`` meaning the file
        differed from the build (and, unless ``check_only``, was rewritten).
    """
    sources = sorted(Path(source_dir).glob("*.ipynb"))
    if not sources:
        raise FileNotFoundError(f"no source notebooks (*.ipynb) in {Path(source_dir).resolve()}")
    results = []
    for src in sources:
        text = render(student_notebook(nbformat.read(src, as_version=4), src.name))
        target = Path(out_dir) / src.name
        changed = not target.exists() or target.read_text(encoding="utf-8") != text
        if changed and not check_only:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        results.append((target, changed))
    return results
