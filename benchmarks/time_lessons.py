"""How long each lesson takes: every notebook executed alone, in a fresh kernel, in the quick profile.

    .venv/bin/python benchmarks/time_lessons.py [--repeats 1] [notebooks/03_ntxent_temperature.ipynb ...]

Runs the lessons one after another (never two at once: they share the cores), the way a learner's "Run all"
does: nbclient with a fresh ``python3`` kernel per notebook, working directory ``notebooks/``,
``CLCOURSE_PROFILE=quick``. Prints a markdown table of wall times (kernel start included) and the whole
course's total, the table ``benchmarks/README.md`` keeps and ``clcourse.lessons.costs`` quotes to learners
(a test checks the two agree). Measure on an idle machine: another job on the cores slows every lesson.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from clcourse.device import usable_cpus
from clcourse.lessons.costs import LESSON_BUDGET_S, LESSON_COSTS

REPO = Path(__file__).resolve().parents[1]


def run_lesson(path: Path) -> float:
    """Execute the notebook at ``path`` in a fresh kernel; return its wall time in seconds."""
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(notebook, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook in notebooks/")
    parser.add_argument("--repeats", type=int, default=1, help="runs per lesson; the table shows the median")
    args = parser.parse_args()
    os.environ["CLCOURSE_PROFILE"] = "quick"
    paths = args.notebooks or sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    print(f"{len(paths)} lessons, {args.repeats} run(s) each, {usable_cpus()} usable CPU cores", flush=True)
    rows = []
    for path in paths:
        seconds = [run_lesson(path.resolve()) for _ in range(args.repeats)]
        median = statistics.median(seconds)
        print(f"{path.name}: {', '.join(f'{s:.1f}' for s in seconds)} s", flush=True)
        rows.append((path.name, median))
    print("\n| lesson | quick profile, s | quoted to learners, s |\n| --- | ---: | ---: |")
    for name, seconds in rows:
        quoted = LESSON_COSTS.get(name[:2])
        flag = f" (over the {LESSON_BUDGET_S} s budget)" if seconds > LESSON_BUDGET_S else ""
        print(f"| {name[:-6]} | {seconds:.0f}{flag} | {quoted.quick_seconds if quoted else '-'} |")
    total = sum(seconds for _, seconds in rows)
    print(f"| **all {len(rows)} lessons** | **{total:.0f} ({total / 60:.1f} min)** | |")


if __name__ == "__main__":
    main()
