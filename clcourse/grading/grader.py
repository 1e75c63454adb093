"""Batch grading: run submitted notebooks in fresh kernels and score every task.

How failures stay isolated
--------------------------
* Each notebook runs in its own kernel (nbclient), **one cell at a time**,
  each cell with its own time limit (setup cells, below, get at least
  ``SETUP_TIMEOUT`` for their imports), and errors allowed: a cell that
  raises only loses what depends on it.
* Scores come from the checks themselves, not from cell outputs: the grader
  names a fresh file in ``CLCOURSE_GRADING_LOG`` and every ``check()`` appends
  a JSON line to it (flushed before the next cell runs).  A task whose check
  never logged scores 0, with the reason taken from the cells that belong to
  it (the cells after the previous check cell, up to and including its own).
* A cell that outlives its time limit, or kills its kernel (``os._exit``, a
  segfault, running out of memory), gets the kernel shut down and a new one
  started.  The new kernel first re-runs the **setup cells** (code cells
  tagged ``setup``: imports and shared data), then grading continues with the
  next cell.  What the lost kernel defined in other cells is gone, so only
  the task the bad cell belongs to is lost, as long as every task's cells are
  self-contained (the exercise notebooks are written that way).

Grading trusts the kernel: it is meant for honest learners, not a sandbox
against a hostile submission.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

import clcourse
from clcourse.grading.feedback import LOG_ENV, NOT_ATTEMPTED
from clcourse.grading.registry import tasks as all_tasks

SETUP_TAG = "setup"
# Setup cells import torch and clcourse: tens of seconds on a busy laptop, never a learner's hang.
SETUP_TIMEOUT = 120
# nbclient logs timeouts and dead kernels as errors; the score table already says so.
_NBCLIENT_LOG = logging.getLogger("clcourse.grading.nbclient")
_NBCLIENT_LOG.addHandler(logging.NullHandler())
_NBCLIENT_LOG.propagate = False
NO_RESULT = "no result"
_CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([^"']+)["']""")


@dataclass
class TaskScore:
    """One row of the score table."""

    notebook: str
    task_id: str
    status: str
    points: int
    max_points: int
    message: str

    @property
    def passed(self) -> bool:
        """True when the task's check passed."""
        return self.status == "passed"


@dataclass
class NotebookScore:
    """The grading of one notebook: its task rows and the cells that failed."""

    notebook: str
    tasks: list[TaskScore] = field(default_factory=list)
    cell_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def points(self) -> int:
        """Points earned in this notebook."""
        return sum(t.points for t in self.tasks)

    @property
    def max_points(self) -> int:
        """Points available in this notebook."""
        return sum(t.max_points for t in self.tasks)


def grade_notebook(path: str | Path, timeout: float = 60, kernel_name: str = "python3") -> NotebookScore:
    """Execute the notebook at ``path`` cell by cell in a fresh kernel and score its tasks.

    Args:
        timeout: seconds each cell may run before its kernel is replaced.
        kernel_name: the Jupyter kernel to run it in.
    """
    start = time.monotonic()
    path = Path(path)
    score = NotebookScore(str(path))
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # unreadable submission: report it, grade the others
        score.cell_errors.append(f"could not read the notebook: {type(exc).__name__}: {exc}")
        return score
    fd, log = tempfile.mkstemp(prefix="clcourse-grading-", suffix=".jsonl")
    os.close(fd)
    try:
        errors = _execute(nb, path.resolve().parent, timeout, kernel_name, _kernel_env(log))
        results = _read_log(log)
    finally:
        os.unlink(log)
    score.cell_errors = [f"cell {i + 1}: {e}" for i, e in sorted(errors.items())]
    score.tasks = _score_tasks(nb, str(path), results, errors)
    score.seconds = time.monotonic() - start
    return score


def grade_notebooks(paths, timeout: float = 60, kernel_name: str = "python3", *,
                    on_graded=None) -> list[NotebookScore]:
    """Grade each notebook in turn (see :func:`grade_notebook`).

    ``on_graded(scores_so_far)`` is called after each notebook: the CLI writes its CSV and JSON there, so a
    submission that kills the grader loses only its own rows.
    """
    scores: list[NotebookScore] = []
    for path in paths:
        scores.append(grade_notebook(path, timeout, kernel_name))
        if on_graded is not None:
            on_graded(scores)
    return scores


def _kernel_env(log: str) -> dict[str, str]:
    env = dict(os.environ)
    env[LOG_ENV] = log
    # Let the kernel import this very clcourse even from an uninstalled checkout.
    package_root = str(Path(clcourse.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def _execute(nb, cwd: Path, timeout: float, kernel_name: str, env: dict) -> dict[int, str]:
    """Run every code cell; return {cell index: what went wrong} for the cells that failed."""
    cells = nb.cells
    setup = [i for i, c in enumerate(cells) if _is_setup(c)]
    errors: dict[int, str] = {}
    next_cell = 0
    while next_cell < len(cells):
        client = NotebookClient(nb, timeout_func=lambda cell: _time_limit(cell, timeout),
                                kernel_name=kernel_name, allow_errors=True,
                                shutdown_kernel="immediate", resources={"metadata": {"path": str(cwd)}},
                                log=_NBCLIENT_LOG)
        # The kernel process's own stdout/stderr carry only launcher noise (cell
        # outputs travel over ZMQ), which would garble the score table.
        with client.setup_kernel(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
            if next_cell > 0 and not _rerun_setup(client, cells, setup, next_cell, timeout):
                errors[next_cell] = "not run: re-running the setup cells in a new kernel failed"
                break
            for i in range(next_cell, len(cells)):
                if cells[i].cell_type != "code":
                    continue
                problem, kernel_lost = _run_cell(client, cells, i, timeout)
                if problem:
                    errors[i] = problem
                if kernel_lost:
                    next_cell = i + 1
                    break
            else:
                next_cell = len(cells)
    return errors


def _is_setup(cell) -> bool:
    return cell.cell_type == "code" and SETUP_TAG in cell.metadata.get("tags", [])


def _time_limit(cell, timeout: float) -> float:
    return max(timeout, SETUP_TIMEOUT) if _is_setup(cell) else timeout


def _rerun_setup(client: NotebookClient, cells, setup: list[int], before: int, timeout: float) -> bool:
    """Restore a replacement kernel's imports and shared data; False if that kernel is lost too."""
    return not any(_run_cell(client, cells, i, timeout)[1] for i in setup if i < before)


def _run_cell(client: NotebookClient, cells, index: int, timeout: float) -> tuple[str | None, bool]:
    """Execute one cell: (what went wrong or None, whether the kernel must be replaced)."""
    cell = cells[index]
    try:
        client.execute_cell(cell, index)
    except CellTimeoutError:
        limit = _time_limit(cell, timeout)
        return f"did not finish within {limit:g} s (stopped; later cells ran in a new kernel)", True
    except DeadKernelError:
        return "killed the kernel (later cells ran in a new one)", True
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return f"raised {out.get('ename')}: {out.get('evalue')}", False
    return None, False


def _read_log(path: str) -> dict[str, dict]:
    """The last logged result of each task (a learner may run a check several times)."""
    results: dict[str, dict] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                entry = json.loads(line)
                results[entry["task_id"]] = entry
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by a dying kernel
    return results


def _score_tasks(nb, name: str, results: dict[str, dict], errors: dict[int, str]) -> list[TaskScore]:
    """One row per task of the notebook: its lesson's tasks plus any task it checks."""
    known = {t.id: t for t in all_tasks()}
    owner = _cell_owners(nb)
    lesson = str(nb.metadata.get("clcourse", {}).get("lesson", ""))
    wanted = {t.id for t in all_tasks() if lesson and t.lesson == lesson}
    wanted |= {tid for tid in set(owner.values()) | set(results) if tid in known}
    rows = []
    for tid in (t.id for t in all_tasks() if t.id in wanted):
        task = known[tid]
        entry = results.get(tid)
        if entry is not None:
            rows.append(TaskScore(name, tid, entry["status"], int(entry["points"]), task.points,
                                  _summary(entry)))
            continue
        cell_problems = [f"cell {i + 1} {errors[i]}" for i in sorted(errors) if owner.get(i) == tid]
        if cell_problems:
            why = "its check did not run: " + "; ".join(cell_problems)
        elif tid in owner.values():
            why = "its check cell never ran"
        else:
            why = f"the notebook has no check cell for it (check({tid!r}, ...))"
        rows.append(TaskScore(name, tid, NO_RESULT, 0, task.points, why))
    return rows


def _cell_owners(nb) -> dict[int, str]:
    """Map each code cell to the task of the first check call at or after it."""
    owner: dict[int, str] = {}
    pending: list[int] = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        pending.append(i)
        called = _CHECK_CALL.findall(cell.source)
        if called:
            for j in pending:
                owner[j] = called[0]
            pending = []
    return owner


def _summary(entry: dict) -> str:
    """The feedback of a logged check in one line."""
    if entry["status"] == "passed":
        return "passed"
    if entry["status"] == NOT_ATTEMPTED:
        return "not attempted yet"
    parts = [entry.get("problem", "")]
    if entry.get("case"):
        parts.append(f"input: {entry['case']}")
    if entry.get("hint"):
        parts.append(f"hint: {entry['hint']}")
    return " | ".join(p.replace("\n", " ") for p in parts if p)


def format_table(scores: list[NotebookScore], width: int = 110) -> str:
    """The terminal score table: per notebook, one row per task, then the total.

    Messages are cut to fit ``width`` columns; the CSV and JSON reports keep them whole.
    """
    lines = []
    for nb in scores:
        lines.append(f"{nb.notebook}  ({nb.points}/{nb.max_points} points, {nb.seconds:.1f} s)")
        lines.append(f"  {'task':<22} {'passed':<7} {'points':<7} message")
        for t in nb.tasks:
            msg = t.message if len(t.message) <= width - 40 else t.message[: width - 43] + "..."
            lines.append(f"  {t.task_id:<22} {'yes' if t.passed else 'no':<7} "
                         f"{f'{t.points}/{t.max_points}':<7} {msg}")
        if not nb.tasks:
            lines.append("  (no graded tasks)")
        lines.extend(f"  ! {e}" for e in nb.cell_errors)
        lines.append("")
    total = sum(s.points for s in scores)
    available = sum(s.max_points for s in scores)
    lines.append(f"total: {total}/{available} points in {len(scores)} notebook(s)")
    return "\n".join(lines)


def _partial_path(path: str | Path) -> Path:
    """A temporary sibling of ``path``: written completely, then renamed over it (never half a report)."""
    return Path(path).with_name(f".{Path(path).name}.partial")


def write_csv(scores: list[NotebookScore], path: str | Path) -> None:
    """One CSV row per (notebook, task): notebook, task, lesson, status, passed, points, max_points, message."""
    partial = _partial_path(path)
    with open(partial, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["notebook", "task", "lesson", "status", "passed", "points", "max_points", "message"])
        for nb in scores:
            for t in nb.tasks:
                writer.writerow([nb.notebook, t.task_id, t.task_id.split(".")[0], t.status, t.passed,
                                 t.points, t.max_points, t.message])
    partial.replace(path)


def write_json(scores: list[NotebookScore], path: str | Path) -> None:
    """The whole report as JSON: totals, and per notebook its tasks and failed cells."""
    report = {
        "points": sum(s.points for s in scores),
        "max_points": sum(s.max_points for s in scores),
        "notebooks": [
            {"notebook": s.notebook, "points": s.points, "max_points": s.max_points,
             "seconds": round(s.seconds, 2), "cell_errors": s.cell_errors,
             "tasks": [{**asdict(t), "passed": t.passed} for t in s.tasks]}
            for s in scores
        ],
    }
    partial = _partial_path(path)
    partial.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)
