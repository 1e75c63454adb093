"""Grade one submission: its code runs in a sandboxed worker, every judgement happens here.

``python -m clcourse.grading.supervisor`` reads a job (JSON) on stdin and writes the notebook's score (JSON)
on stdout. The batch grader starts one such process per submission, so a submission that brings its
supervisor down costs only its own row.

What is read from the notebook: the source of its code cells, as text. What is executed: those cells, in
order, in the worker, with every top-level ``check(...)`` statement and every IPython magic or shell line
removed; then, for each task of the exercise set (the registry, not the notebook, says which), the function
the task names is called in the worker on inputs drawn here from a hidden seed. The checker, the reference,
the comparison, the hints and the points stay in this process.
"""

from __future__ import annotations

import ast
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import nbformat

from clcourse.grading.feedback import NOT_GRADED, PASSED, CheckResult
from clcourse.grading.harness import hidden_cases
from clcourse.grading.registry import evaluate, tasks
from clcourse.grading.remote import Connection, RemoteAnswer
from clcourse.grading.sandbox import Limits, Worker

MAX_NOTEBOOK_BYTES = 50 * 2**20



def prepare_cell(source: str) -> tuple[str, list[str]]:
    """The cell's code without ``check(...)`` statements or IPython magics, and the task ids it checks.

    Magics and shell escapes (lines starting with ``%`` or ``!``) are not Python: they are dropped. A cell
    that does not parse is returned as it is (the worker reports its SyntaxError).
    """
    lines = [("pass  # " + line) if line.lstrip().startswith(("%", "!")) else line
             for line in source.splitlines()]
    code = "\n".join(lines)
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code, []
    checked, kept = [], []
    for node in tree.body:
        call = node.value if isinstance(node, ast.Expr) else None
        if isinstance(call, ast.Call) and _called_name(call.func) == "check":
            first = call.args[0] if call.args else None
            checked.append(first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else "?")
            continue
        kept.append(node)
    tree.body = kept
    return ast.unparse(tree), checked


def _called_name(func: ast.expr) -> str:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _defining_cells(cells: list[tuple[int, str]]) -> dict[str, int]:
    """The (last) cell that defines each top-level function name."""
    found = {}
    for index, source in cells:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found[node.name] = index
    return found


class Run:
    """The worker of one submission, restarted (with the cells that ran) when it dies or times out."""

    def __init__(self, cells: list[tuple[int, str]], limits: Limits, hide: list[str], cell_timeout: float,
                 deadline: float) -> None:
        self.cells, self.limits, self.hide = cells, limits, hide
        self.cell_timeout, self.deadline = cell_timeout, deadline
        self.errors: dict[int, str] = {}
        self.ran: list[tuple[int, str]] = []
        self.output: list[str] = []
        self.connection: Connection | None = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def start(self) -> None:
        self.close()
        self.connection = Connection(Worker(self.limits, self.hide))

    def close(self) -> None:
        if self.connection is not None:
            self.output.append(self.connection.worker.output)
            self.connection.worker.close()
            self.connection = None

    def _exec(self, index: int, source: str) -> tuple[str | None, bool]:
        """Run one cell within its limit: (what went wrong or None, whether the worker was lost)."""
        limit = min(self.cell_timeout, self.remaining())
        if limit <= 0:
            return "not run: the notebook's time limit was reached", False
        worker = self.connection.worker
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            worker.kill()

        timer = threading.Timer(limit, expire)
        timer.start()
        try:
            reply = self.connection.ask({"op": "exec", "cell": index, "source": source})
        except Exception:  # the worker died, or the timer ended it
            if expired.is_set():
                return f"did not finish within {limit:g} s (stopped; later cells ran in a new worker)", True
            return f"ended the process running the notebook: {worker.exit_status()} (later cells ran in a new one)", True
        finally:
            timer.cancel()
        if "error" in reply:
            err = reply["error"]
            return f"raised {err.get('type')}: {str(err.get('message'))[:300]}", False
        return None, False

    def execute_all(self) -> None:
        self.start()
        for index, source in self.cells:
            problem, lost = self._exec(index, source)
            if problem is None:
                self.ran.append((index, source))
                continue
            self.errors[index] = problem
            if lost:
                self.replay()

    def replay(self) -> None:
        """A new worker that has run the cells that ran before (what the lost one had defined)."""
        self.start()
        for index, source in list(self.ran):
            problem, lost = self._exec(index, source)
            if problem is not None:
                self.errors[index] = f"{problem} (when re-run in a new worker)"
                self.ran.remove((index, source))
                if lost:
                    self.replay()
                    return


def grade_submission(path: str, exercise_set: str, seed: int, limits: dict | None = None,
                     cell_timeout: float = 60, task_timeout: float = 120, notebook_timeout: float = 900,
                     hide: list[str] | None = None) -> dict:
    """Score the notebook at ``path`` on every task of ``exercise_set``; see the module docstring.

    Returns:
        ``{"tasks": [row...], "cell_errors": [...], "notes": [...], "output": str, "isolation": {...}}``;
        a row is a ``CheckResult`` as a dict, with ``message``.
    """
    wanted = tasks(exercise_set)
    report: dict[str, Any] = {"tasks": [], "cell_errors": [], "notes": [], "output": "", "isolation": {}}

    def row(result: CheckResult) -> None:
        entry = result.to_dict()
        entry["points"] = min(int(entry["points"]), entry["max_points"])
        report["tasks"].append(entry)

    try:
        if Path(path).is_symlink() or Path(path).stat().st_size > MAX_NOTEBOOK_BYTES:
            raise ValueError(f"a symbolic link, or larger than {MAX_NOTEBOOK_BYTES // 2**20} MiB")
        nb = nbformat.read(path, as_version=4)
        cells = [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    except Exception as exc:  # any unreadable file: every task scores 0 with the reason (never its content)
        why = str(exc) if isinstance(exc, ValueError) and "symbolic link" in str(exc) else type(exc).__name__
        for t in wanted:
            row(CheckResult(t.id, NOT_GRADED, 0, t.points, problem=f"the notebook could not be read ({why})"))
        return report
    prepared, checked = [], []
    for index, source in cells:
        code, ids = prepare_cell(source)
        checked += ids
        if code.strip():
            prepared.append((index, code))
    known = {t.id for t in wanted}
    for task_id in sorted(set(checked) - known):
        report["notes"].append(f"check({task_id!r}, ...) names no task of exercise set {exercise_set}: ignored")
    if not prepared:
        for t in wanted:
            row(CheckResult(t.id, NOT_GRADED, 0, t.points, problem="the notebook has no code"))
        return report

    limits_ = Limits(**(limits or {}))
    run = Run(prepared, limits_, hide or [], cell_timeout, time.monotonic() + notebook_timeout)
    try:
        run.execute_all()
        report["isolation"] = run.connection.worker.enforced()
        defined_in = _defining_cells(prepared)
        for t in wanted:
            row(_grade_task(run, t, seed, task_timeout, defined_in))
    finally:
        run.close()
    report["cell_errors"] = [f"cell {i + 1}: {e}" for i, e in sorted(run.errors.items())]
    report["output"] = "".join(run.output)[: limits_.output_kb * 1024]
    return report


def _grade_task(run: Run, task, seed: int, task_timeout: float, defined_in: dict[str, int]) -> CheckResult:
    limit = min(task_timeout, run.remaining())
    if limit <= 0:
        return CheckResult(task.id, NOT_GRADED, 0, task.points,
                           problem="not graded: the notebook's time limit was reached before this task")
    if run.connection is None or run.connection.broken or run.connection.worker.process.poll() is not None:
        run.replay()
    worker = run.connection.worker
    backstop = threading.Timer(limit + 10, worker.kill)  # the check's own alarm comes first; this one always holds
    backstop.start()
    try:
        return _judge(run, task, seed, limit, defined_in)
    finally:
        backstop.cancel()  # a connection it broke is replaced before the next task


def _judge(run: Run, task, seed: int, limit: float, defined_in: dict[str, int]) -> CheckResult:
    try:
        found = run.connection.lookup(task.answer)
    except Exception as exc:  # the worker is gone
        return CheckResult(task.id, NOT_GRADED, 0, task.points, problem=f"not graded: {exc}")
    if "missing" in found:
        cell = defined_in.get(task.answer)
        why = f"; its cell {cell + 1} {run.errors[cell]}" if cell is not None and cell in run.errors else ""
        return CheckResult(task.id, NOT_GRADED, 0, task.points,
                           problem=f"the notebook defines no function {task.answer}(){why}",
                           hint=f"Keep the function's name: the grader calls {task.answer}().")
    if "foreign" in found:
        return CheckResult(task.id, NOT_GRADED, 0, task.points,
                           problem=f"{task.answer} is not a function written in the notebook (it is {found['foreign']})",
                           hint=f"Write {task.answer}() in the notebook with def.")
    with hidden_cases(seed):
        result = evaluate(task.id, RemoteAnswer(run.connection, task.answer), timeout=limit)
    if result.status != PASSED and "did not finish" in result.problem:
        run.connection.broken = True  # the worker may still be running the answer: replace it
    return result


def main() -> int:
    job = json.loads(sys.stdin.read())
    report = grade_submission(**job)
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
