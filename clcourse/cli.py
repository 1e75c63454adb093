"""The ``clcourse`` command.

Each subcommand is one ``add_<name>_command(subparsers)`` function that
registers its parser and sets ``func`` (the function that runs it, returning
the exit status); :func:`build_parser` calls them in turn, so a new command
(``train``, ``doctor``...) is one more such function in :data:`COMMANDS`.
Heavy imports happen inside the command functions, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def add_grade_command(subparsers) -> None:
    """``clcourse grade PATH... [--timeout S] [--csv FILE] [--json FILE] [--kernel NAME]``."""
    parser = subparsers.add_parser(
        "grade", help="run exercise notebooks in fresh kernels and score their tasks",
        description="Execute each notebook cell by cell in a fresh Jupyter kernel and print a score "
                    "table per task. A cell that raises, hangs past the timeout or kills its kernel "
                    "costs only the task it belongs to.")
    parser.add_argument("paths", nargs="+", metavar="PATH", type=Path, help="notebooks to grade")
    parser.add_argument("--timeout", type=float, default=60, metavar="S",
                        help="seconds each cell may run (default: 60)")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write the scores as CSV")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the scores as JSON")
    parser.add_argument("--kernel", default="python3", metavar="NAME",
                        help="Jupyter kernel to run the notebooks in (default: python3)")
    parser.set_defaults(func=run_grade)


def run_grade(args: argparse.Namespace) -> int:
    """Grade ``args.paths``; exit status 1 if a notebook is missing or could not be read."""
    from clcourse.grading import grader

    missing = [str(p) for p in args.paths if not p.is_file()]
    if missing:
        print(f"clcourse grade: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 1
    if args.timeout <= 0:
        print(f"clcourse grade: --timeout must be > 0 seconds, got {args.timeout:g}", file=sys.stderr)
        return 1
    scores = grader.grade_notebooks(args.paths, timeout=args.timeout, kernel_name=args.kernel)
    print(grader.format_table(scores, width=shutil.get_terminal_size((110, 24)).columns))
    if args.csv:
        grader.write_csv(scores, args.csv)
    if args.json:
        grader.write_json(scores, args.json)
    unreadable = any(s.cell_errors and s.cell_errors[0].startswith("could not read") for s in scores)
    return 1 if unreadable else 0


def add_exercises_command(subparsers) -> None:
    """``clcourse exercises build [--source DIR] [--out DIR] [--check]``."""
    parser = subparsers.add_parser("exercises", help="manage the exercise notebooks")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = actions.add_parser(
        "build", help="write student notebooks from the solution sources",
        description="Replace every '### BEGIN SOLUTION' ... '### END SOLUTION' region of the source "
                    "notebooks by a stub raising NotImplementedError, and write the results.")
    build.add_argument("--source", type=Path, default=Path("exercises/source"), metavar="DIR",
                       help="solution notebooks (default: exercises/source)")
    build.add_argument("--out", type=Path, default=Path("exercises"), metavar="DIR",
                       help="where the student notebooks go (default: exercises)")
    build.add_argument("--check", action="store_true",
                       help="write nothing; exit 1 if a student notebook is out of date")
    build.set_defaults(func=run_exercises_build)


def run_exercises_build(args: argparse.Namespace) -> int:
    """Build (or with ``--check`` verify) the student notebooks."""
    from clcourse.grading.build import build_exercises

    try:
        results = build_exercises(args.source, args.out, check_only=args.check)
    except (FileNotFoundError, ValueError) as exc:
        print(f"clcourse exercises build: {exc}", file=sys.stderr)
        return 1
    for path, changed in results:
        state = ("out of date" if args.check else "written") if changed else "up to date"
        print(f"{path}: {state}")
    return 1 if args.check and any(changed for _, changed in results) else 0


COMMANDS = (add_grade_command, add_exercises_command)


def build_parser() -> argparse.ArgumentParser:
    """The ``clcourse`` argument parser with every command of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="clcourse", description="A hands-on course on contrastive learning.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``clcourse`` command line (``argv`` defaults to ``sys.argv[1:]``); return the exit status."""
    args = build_parser().parse_args(argv)
    return args.func(args)
