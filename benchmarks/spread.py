"""How the benchmark scripts print a figure over seeds: "mean ± std", the sample standard deviation (n - 1).

The scripts run as ``python benchmarks/NAME.py``, which puts this folder on the import path.
"""

from __future__ import annotations

import statistics


def mean_std(values: list[float], sign: bool = False, digits: int = 1) -> str:
    """``"62.5 ± 2.5"`` for a list of figures (``digits`` decimals, one by default; ``sign``: ``"+0.9 ± 0.6"``); the
    mean alone for one figure."""
    mean = f"{statistics.mean(values):+.{digits}f}" if sign else f"{statistics.mean(values):.{digits}f}"
    return mean + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def mean_std_seeds(values: list[float], unit: str = "%", digits: int = 1) -> str:
    """``"95.4 ± 0.4% (95.4 / 94.9 / 95.8)"``: :func:`mean_std` with a ``unit`` and each seed's figure; one figure
    alone: ``"88.3%"``."""
    text = mean_std(values, digits=digits) + unit
    return text if len(values) < 2 else f"{text} ({' / '.join(f'{v:.{digits}f}' for v in values)})"
