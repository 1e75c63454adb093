"""Batch grading: score every submission on every task of its exercise set, trusting none of them.

How a score is made
-------------------
* **The exercise set** comes from ``--set``, else from the notebook's ``clcourse.lesson`` metadata (written
  by ``clcourse exercises build``) and its file name (``NN_topic.ipynb``), which must agree. Its tasks and
  their points come from the grader's registry: every task of the set gets a row in every report, a task
  scores at most its points, and a ``check()`` of another task is reported and ignored.
* **The notebook supplies code, never results.** Each submission is graded by its own supervisor process
  (:mod:`clcourse.grading.supervisor`), which runs the notebook's code cells (``check`` calls removed) in a
  sandboxed worker (:mod:`clcourse.grading.sandbox`), then calls each task's function there on inputs drawn
  from a seed the submission never sees, receiving plain data (:mod:`clcourse.grading.wire`). The checker,
  the reference and the comparison run in the supervisor. Nothing the submission writes is read as a score.
* **A submission alone.** Limits per cell, per task and per notebook that tags cannot change, resource limits
  (:class:`~clcourse.grading.sandbox.Limits`), and on Linux namespaces that hide the other submissions and
  kill every process it started (see :mod:`clcourse.grading.sandbox` for what holds where).
* **The batch survives.** A supervisor that dies costs its submission's tasks (0, with the reason); the
  reports are rewritten after each submission; ``jobs`` submissions are graded at once.
"""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from clcourse.grading.feedback import NOT_GRADED
from clcourse.grading.registry import DEFAULT_CHECK_SECONDS, tasks as registered_tasks
from clcourse.grading.sandbox import Limits, die_with_parent
from clcourse.grading.supervisor import MAX_NOTEBOOK_BYTES

_FILE_SET = re.compile(r"^(\d\d)_")


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
    """The grading of one notebook: its exercise set, its task rows, and what else went wrong."""

    notebook: str
    exercise_set: str = ""
    tasks: list[TaskScore] = field(default_factory=list)
    cell_errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    output: str = ""
    isolation: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def points(self) -> int:
        """Points earned in this notebook."""
        return sum(t.points for t in self.tasks)

    @property
    def max_points(self) -> int:
        """Points available in this notebook."""
        return sum(t.max_points for t in self.tasks)


def exercise_set_of(path: str | Path, override: str | None = None) -> str:
    """The exercise set (lesson number, e.g. ``"03"``) a submission answers.

    Raises:
        ValueError: when it cannot be told, or the notebook's metadata and file name disagree.
    """
    known = sorted({t.lesson for t in registered_tasks()})
    if override is not None:
        wanted = f"{int(override):02d}" if str(override).isdigit() else str(override)
        if wanted not in known:
            raise ValueError(f"--set {override}: no such exercise set (known: {', '.join(known)})")
        return wanted
    path = Path(path)
    from_name = _FILE_SET.match(path.name)
    from_metadata = None
    try:
        if path.stat().st_size <= MAX_NOTEBOOK_BYTES:
            meta = json.loads(path.read_text(encoding="utf-8")).get("metadata", {}).get("clcourse", {})
            from_metadata = str(meta.get("lesson")) if isinstance(meta, dict) and meta.get("lesson") else None
    except (OSError, ValueError, AttributeError):
        pass
    named = from_name.group(1) if from_name else None
    if from_metadata and named and from_metadata != named:
        raise ValueError(f"the notebook's metadata says exercise set {from_metadata} but its file name says {named}: "
                         "pass --set NN")
    found = from_metadata or named
    if found is None:
        raise ValueError("cannot tell which exercise set this is (no clcourse.lesson metadata, and the file name "
                         "does not start with NN_): pass --set NN")
    if found not in known:
        raise ValueError(f"exercise set {found} has no graded tasks (known: {', '.join(known)}): pass --set NN")
    return found


@dataclass(frozen=True)
class GradingOptions:
    """How submissions are graded (the flags of ``clcourse grade``).

    Attributes:
        cell_timeout: seconds each code cell may run (no tag changes it).
        task_timeout: seconds each task's check may take.
        notebook_timeout: seconds for a whole submission, cells and checks.
        limits: the worker's resources.
        seed: the hidden seed of the checks' inputs (recorded in the JSON report to re-grade alike).
        exercise_set: grade every notebook as this set, whatever its name and metadata say.
    """

    cell_timeout: float = 60
    task_timeout: float = DEFAULT_CHECK_SECONDS
    notebook_timeout: float = 900
    limits: Limits = field(default_factory=Limits)
    seed: int = field(default_factory=lambda: secrets.randbits(62))
    exercise_set: str | None = None

    def __post_init__(self) -> None:
        for name in ("cell_timeout", "task_timeout", "notebook_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")


def grade_notebook(path: str | Path, options: GradingOptions | None = None, hide: list[str] | None = None
                   ) -> NotebookScore:
    """Grade one submission in its own supervisor process (see the module docstring)."""
    options = options or GradingOptions()
    start = time.monotonic()
    score = NotebookScore(str(path))
    try:
        score.exercise_set = exercise_set_of(path, options.exercise_set)
    except ValueError as exc:
        score.notes.append(str(exc))
        return score
    job = {"path": os.path.abspath(path), "exercise_set": score.exercise_set, "seed": options.seed,
           "limits": asdict(options.limits), "cell_timeout": options.cell_timeout,
           "task_timeout": options.task_timeout, "notebook_timeout": options.notebook_timeout,
           "hide": sorted(set(hide or []) | {str(Path(path).resolve())})}
    report, failure = None, ""
    try:
        run = subprocess.run([sys.executable, "-m", "clcourse.grading.supervisor"], input=json.dumps(job),
                             capture_output=True, text=True, timeout=options.notebook_timeout + 120,
                             start_new_session=True, preexec_fn=die_with_parent)
        report = _parse_report(run.stdout)
        if report is None:
            failure = f"its grading process ended with status {run.returncode} " + _tail(run.stderr)
    except subprocess.TimeoutExpired:
        failure = f"its grading process outlived the notebook's limit of {options.notebook_timeout:g} s"
    if report is None:
        score.tasks = [TaskScore(str(path), t.id, NOT_GRADED, 0, t.points, f"not graded: {failure}")
                       for t in registered_tasks(score.exercise_set)]
    else:
        max_points = {t.id: t.points for t in registered_tasks(score.exercise_set)}
        rows = {r.get("task_id"): r for r in report.get("tasks", []) if isinstance(r, dict)}
        for task_id, points in max_points.items():  # the registry's tasks, the registry's points
            r = rows.get(task_id, {"status": NOT_GRADED, "points": 0, "problem": "no result for this task"})
            earned = min(int(r.get("points", 0)), points) if r.get("status") == "passed" else 0
            score.tasks.append(TaskScore(str(path), task_id, str(r.get("status")), earned, points, _summary(r)))
        score.cell_errors = [str(e) for e in report.get("cell_errors", [])]
        score.notes += [str(n) for n in report.get("notes", [])]
        score.output = str(report.get("output", ""))
        score.isolation = report.get("isolation", {}) if isinstance(report.get("isolation"), dict) else {}
    score.seconds = time.monotonic() - start
    return score


def _parse_report(stdout: str) -> dict | None:
    lines = stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None
    return report if isinstance(report, dict) else None


def _tail(text: str) -> str:
    last = [line for line in text.strip().splitlines() if line.strip()][-1:]
    return f"({last[0][:200]})" if last else "(no message)"


def grade_notebooks(paths, options: GradingOptions | None = None, *, jobs: int = 1, hide: list[str] | None = None,
                    on_graded=None, progress: bool = False) -> list[NotebookScore]:
    """Grade every notebook (``jobs`` at a time); the scores in the order of ``paths``.

    Args:
        options: see :class:`GradingOptions`.
        jobs: submissions graded at once, each in its own supervisor and worker.
        hide: files no submission may read (reports, the seed file); every submission is hidden from the others.
        on_graded: ``on_graded(scores_so_far)`` after each submission (in the order of ``paths``): the CLI
            rewrites its reports there.
        progress: show a progress bar over the submissions (on stderr).
    """
    options = options or GradingOptions()
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    paths = [Path(p) for p in paths]
    hidden = sorted({str(p.resolve()) for p in paths} | set(hide or []))
    done: dict[int, NotebookScore] = {}
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=jobs) as pool, tqdm(total=len(paths), unit="notebook", desc="grading",
                                                             disable=not progress, file=sys.stderr) as bar:
        futures = {pool.submit(grade_notebook, p, options, hidden): i for i, p in enumerate(paths)}
        for future in as_completed(futures):
            with lock:
                done[futures[future]] = future.result()
                bar.update(1)
                if on_graded is not None:
                    on_graded([done[i] for i in sorted(done)])
    return [done[i] for i in range(len(paths))]


def _summary(entry: dict) -> str:
    """The feedback of a task in one line."""
    status = entry.get("status")
    if status == "passed":
        return "passed"
    if status == "not attempted":
        return "not attempted yet"
    parts = [str(entry.get("problem", ""))]
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
        which = f"exercise set {nb.exercise_set}, " if nb.exercise_set else ""
        lines.append(f"{nb.notebook}  ({which}{nb.points}/{nb.max_points} points, {nb.seconds:.1f} s)")
        lines.append(f"  {'task':<22} {'passed':<7} {'points':<7} message")
        for t in nb.tasks:
            msg = t.message if len(t.message) <= width - 40 else t.message[: width - 43] + "..."
            lines.append(f"  {t.task_id:<22} {'yes' if t.passed else 'no':<7} "
                         f"{f'{t.points}/{t.max_points}':<7} {msg}")
        if not nb.tasks:
            lines.append("  (no graded tasks)")
        lines.extend(f"  ! {e}" for e in nb.notes + nb.cell_errors)
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
            if not nb.tasks:  # the set could not be told: the submission still has its row, with the reason
                writer.writerow([nb.notebook, "", "", NOT_GRADED, False, 0, 0, "; ".join(nb.notes)])
    partial.replace(path)


def write_json(scores: list[NotebookScore], path: str | Path, seed: int | None = None) -> None:
    """The whole report as JSON: totals, the seed, and per notebook its set, tasks, failed cells, notes,
    isolation and the start of its output."""
    report = {
        "points": sum(s.points for s in scores),
        "max_points": sum(s.max_points for s in scores),
        "seed": seed,
        "notebooks": [
            {"notebook": s.notebook, "exercise_set": s.exercise_set, "points": s.points,
             "max_points": s.max_points, "seconds": round(s.seconds, 2), "cell_errors": s.cell_errors,
             "notes": s.notes, "isolation": s.isolation, "output": s.output,
             "tasks": [{**asdict(t), "passed": t.passed} for t in s.tasks]}
            for s in scores
        ],
    }
    partial = _partial_path(path)
    partial.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)
