"""The figures a lesson measured, and the check that its markdown quotes them as measured.

A lesson's text quotes numbers from its own experiments ("the 10% probe reached 86.2%"). So that a change of
code cannot leave the text behind, each such figure is

1. **recorded** by the lesson when it is measured: ``record("07", "probe_m0.99", 100 * probe.mean)``. When the
   environment variable ``CLCOURSE_RESULTS_DIR`` names a folder (``make test`` sets it), the value is added to
   ``<folder>/07.json``; otherwise recording only returns the value, and a learner's run writes nothing;
2. **quoted** in ``notebooks/<lesson>.quotes.json``, next to the notebook: one entry per figure, with the
   words of the markdown that quote it, the value quoted and a tolerance::

       {"key": "probe_m0.99", "quote": "86.2% with $m = 0.99$", "value": 86.2, "tolerance": 4.0}

:func:`quote_problems` (the static half: every quote appears in the markdown, states its value, and is
recorded by the notebook's code; every "±" figure of the markdown is inside a quote) and
:func:`drift_problems` (the measured half: each recorded value within its tolerance of the quote) are what
``tests/test_number_drift.py`` asserts, the second after the lessons ran in the same ``make test``: no lesson
runs twice. A tolerance is at least the spread of the figure over training seeds and CPUs.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

RESULTS_DIR_VARIABLE = "CLCOURSE_RESULTS_DIR"
QUOTES_SUFFIX = ".quotes.json"


def record(lesson: str, key: str, value: float) -> float:
    """Note that lesson ``lesson`` ("07") measured ``value`` for figure ``key``; return ``value``.

    Written to ``$CLCOURSE_RESULTS_DIR/<lesson>.json`` when that variable is set (a later record of the same
    key replaces the earlier one), not written otherwise.
    """
    if not re.fullmatch(r"\d\d", lesson):
        raise ValueError(f"lesson must be two digits like '07', got {lesson!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"figure {key!r} of lesson {lesson} is {value}: a quoted figure must be finite")
    folder = os.environ.get(RESULTS_DIR_VARIABLE)
    if folder:
        path = Path(folder) / f"{lesson}.json"
        values = load_recorded(path)
        values[key] = value
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(values, indent=1, sort_keys=True))
        temporary.replace(path)
    return value


def load_recorded(path: Path) -> dict[str, float]:
    """The figures recorded in a results file ``path`` (empty when there is none)."""
    return json.loads(path.read_text()) if path.exists() else {}


@dataclass(frozen=True)
class Quote:
    """One figure a lesson's markdown quotes: its key, the quoting words, the value quoted, the tolerance."""

    key: str
    quote: str
    value: float
    tolerance: float


def quotes_path(notebook: Path) -> Path:
    """``notebooks/07_moco.ipynb`` -> ``notebooks/07_moco.quotes.json``."""
    return notebook.with_suffix(QUOTES_SUFFIX)


def load_quotes(notebook: Path) -> list[Quote]:
    """The quotes of the lesson ``notebook`` (empty when it has no quotes file)."""
    path = quotes_path(notebook)
    if not path.exists():
        return []
    return [Quote(**entry) for entry in json.loads(path.read_text())]


def _squeeze(text: str) -> str:
    return " ".join(text.split())


def _format(value: float) -> str:
    return f"{value:g}" if value == int(value) else f"{value}"


def _cells(notebook: Path, kind: str) -> list[str]:
    cells = json.loads(notebook.read_text())["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == kind]


SPREAD = re.compile(r"\d+(?:\.\d+)?%?\s*(?:±|\\pm)\s*\d+(?:\.\d+)?")


def _recorded_key_patterns(lesson: str, code: str) -> list[str]:
    """Regular expressions of the keys that ``record(lesson, key, ...)`` calls in ``code`` can write.

    A plain string is its own key; in an f-string each ``{...}`` stands for any text, so a loop
    ``record("00", f"probe_{name}", ...)`` records ``probe_1%``, ``probe_10%``...
    """
    patterns = []
    for is_template, key in re.findall(rf'record\(\s*"{lesson}",\s*(f?)"([^"]*)"', code):
        if is_template:
            patterns.append(".+".join(re.escape(part) for part in re.split(r"\{[^}]*\}", key)))
        else:
            patterns.append(re.escape(key))
    return patterns


def quote_problems(notebook: Path) -> list[str]:
    """What is wrong with the lesson's quotes file, without running the lesson (empty list: nothing)."""
    lesson = notebook.name[:2]
    markdown = _squeeze("\n".join(_cells(notebook, "markdown")))
    code = "\n".join(_cells(notebook, "code"))
    quotes = load_quotes(notebook)
    recorded_keys = _recorded_key_patterns(lesson, code)
    problems = []
    keys = [quote.key for quote in quotes]
    problems += [f"key {key!r} is quoted twice" for key in sorted(set(keys)) if keys.count(key) > 1]
    for quote in quotes:
        where = f"{quotes_path(notebook).name}, {quote.key!r}"
        if _squeeze(quote.quote) not in markdown:
            problems.append(f"{where}: the markdown no longer says {quote.quote!r}")
        if _format(quote.value) not in quote.quote:
            problems.append(f"{where}: the quote {quote.quote!r} does not state the value {_format(quote.value)}")
        if not quote.tolerance > 0:
            problems.append(f"{where}: tolerance must be positive, got {quote.tolerance}")
        if not any(re.fullmatch(pattern, quote.key) for pattern in recorded_keys):
            problems.append(f'{where}: no code cell calls record("{lesson}", "{quote.key}", ...)')
    covered = " | ".join(_squeeze(quote.quote) for quote in quotes)
    for spread in SPREAD.findall(markdown):
        if spread not in covered:
            problems.append(f"the markdown quotes {spread!r}, a measured spread, but no entry of "
                            f"{quotes_path(notebook).name} covers it")
    return problems


def drift_problems(notebook: Path, recorded: dict[str, float]) -> list[str]:
    """Each quote of ``notebook`` against this run's ``recorded`` figures: what drifted or was not recorded."""
    problems = []
    for quote in load_quotes(notebook):
        if quote.key not in recorded:
            problems.append(f"{notebook.name}: {quote.key!r} was not recorded by this run")
            continue
        measured = recorded[quote.key]
        if abs(measured - quote.value) > quote.tolerance:
            problems.append(f"{notebook.name}: the text quotes {quote.quote!r} ({quote.key}), this run measured "
                            f"{measured:.4g}, beyond the tolerance {quote.tolerance:g}: re-measure and update the "
                            f"markdown, {quotes_path(notebook).name} and benchmarks/README.md together")
    return problems
