"""What a learner sees after a check.

A :class:`CheckResult` renders as an HTML box in Jupyter and as plain text
elsewhere; the batch grader turns the same result into a row of its report.
"""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass

PASSED = "passed"
FAILED = "failed"
NOT_ATTEMPTED = "not attempted"
NOT_GRADED = "not graded"  # the batch grader could not run the task's check (no such function, time up...)

_COLOURS = {PASSED: "#2e7d32", FAILED: "#c62828", NOT_ATTEMPTED: "#757575", NOT_GRADED: "#c62828"}
_SYMBOLS = {PASSED: "\u2714", FAILED: "\u2718", NOT_ATTEMPTED: "\u2026", NOT_GRADED: "\u2718"}
# The order and labels of the detail rows, in text and HTML alike.
_DETAILS = (("case", "input"), ("expected", "expected"), ("received", "received"),
            ("problem", "problem"), ("hint", "hint"))


@dataclass
class CheckResult:
    """The outcome of ``check(task_id, answer)``.

    Attributes:
        task_id: e.g. ``"03.nt_xent"``.
        status: ``"passed"``, ``"failed"`` or ``"not attempted"``.
        points: points earned (``max_points`` when passed, else 0).
        max_points: what the task is worth.
        case: the input that failed (empty when passed).
        expected, received: short descriptions of the reference's and the answer's output.
        problem: what is wrong (a shape, a value, an exception...).
        hint: the likely mistake, when one was recognised.
    """

    task_id: str
    status: str
    points: int
    max_points: int
    case: str = ""
    expected: str = ""
    received: str = ""
    problem: str = ""
    hint: str = ""

    @property
    def passed(self) -> bool:
        """True when the answer matched the reference on every input."""
        return self.status == PASSED

    @property
    def headline(self) -> str:
        """One line: symbol, task, status and points."""
        return (f"{_SYMBOLS[self.status]} {self.task_id}: {self.status} "
                f"({self.points}/{self.max_points} points)")

    @property
    def message(self) -> str:
        """The full feedback as plain text: headline, then one line per detail."""
        lines = [self.headline]
        for field, label in _DETAILS:
            value = getattr(self, field)
            if value:
                body = value.replace("\n", "\n" + " " * 12)
                lines.append(f"  {label + ':':<9} {body}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return self.message

    def _repr_html_(self) -> str:
        colour = _COLOURS[self.status]
        rows = "".join(
            f"<tr><th style='text-align:left;padding-right:1em;vertical-align:top'>{label}</th>"
            f"<td style='text-align:left'><pre style='margin:0;white-space:pre-wrap'>"
            f"{html.escape(getattr(self, field))}</pre></td></tr>"
            for field, label in _DETAILS
            if getattr(self, field)
        )
        table = f"<table style='margin-top:0.4em'>{rows}</table>" if rows else ""
        return (
            f"<div style='border-left:6px solid {colour};padding:0.4em 0.8em;margin:0.3em 0'>"
            f"<b style='color:{colour}'>{html.escape(self.headline)}</b>{table}</div>"
        )

    def _ipython_display_(self) -> None:
        # check() displays its result itself; when the check is also the last
        # line of a cell, IPython would show it a second time.  Showing a result
        # at most once per cell execution avoids the duplicate.
        from IPython import get_ipython
        from IPython.display import publish_display_data

        shell = get_ipython()
        count = getattr(shell, "execution_count", None)
        if count is not None and getattr(self, "_shown_in", None) == count:
            return
        self._shown_in = count
        publish_display_data({"text/plain": self.message, "text/html": self._repr_html_()})

    def to_dict(self) -> dict:
        """A JSON-ready dict: every field plus ``passed`` and ``message``."""
        return {**asdict(self), "passed": self.passed, "message": self.message}


def show(result: CheckResult) -> None:
    """Display ``result``: rich output in IPython/Jupyter, a plain print otherwise."""
    try:
        from IPython import get_ipython
    except ImportError:
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        from IPython.display import display

        display(result)
    else:
        print(result.message)
