"""Grade a class of 30 submissions of exercise set 03 with ``--jobs 1`` and ``--jobs 2``, side by side.

The class mixes 20 honest solutions with 10 hostile submissions from ``tests/hostile_submissions.py`` (forged
reports, the reference as an answer, detached processes, killers, memory/output/fork/file bombs, a copier, a
hanging cell, untouched stubs). Each run must finish and score every honest copy fully, and no hostile one
above what its own code earns. Prints the wall time of each run and the ratio.

    python benchmarks/grade_class.py            # about 8 minutes on 2 cores
"""

from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hostile_submissions import (  # noqa: E402  (after the path it lives on)
    ALIAS, BOMBS, DAEMON, FORGER, KILLER, OTHER_SET, SOLVED, STUB, write_submission,
)

HOSTILE = {  # name: (base, cells, points it may earn: its own correct code, or nothing)
    "forger": (STUB, FORGER, 0), "alias": (STUB, ALIAS, 0), "stub": (STUB, [], 0),
    "daemon": (SOLVED, DAEMON, 4), "killer": (SOLVED, KILLER, 4), "bombs": (SOLVED, BOMBS, 4),
    "otherset": (SOLVED, OTHER_SET, 4), "hang": (SOLVED, ["while True:\n    pass"], 4),
}


def make_class(folder: Path) -> dict[str, int]:
    """Write the 30 notebooks; return {file stem: the points it should score}."""
    expected = {}
    for k in range(20):
        expected[write_submission(folder / f"03_honest{k:02d}.ipynb", SOLVED).stem] = 4
    for name, (base, cells, points) in (HOSTILE | {"forger2": HOSTILE["forger"]}).items():
        expected[write_submission(folder / f"03_{name}.ipynb", base, cells).stem] = points
    good = folder / "03_honest00.ipynb"
    copier = [f"import json\nfor cell in json.load(open({str(good)!r}))['cells']:\n"
              "    if cell['cell_type'] == 'code' and 'check(' not in cell['source']:\n        exec(cell['source'])"]
    expected[write_submission(folder / "03_copier.ipynb", STUB, copier).stem] = 0
    return expected


def grade(folder: Path, expected: dict[str, int], jobs: int) -> float:
    report = folder / f"scores-jobs{jobs}.csv"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clcourse", "grade", *sorted(map(str, folder.glob("03_*.ipynb"))),
                    "--jobs", str(jobs), "--timeout", "20", "--memory-mb", "2048", "--processes", "32",
                    "--file-mb", "16", "--csv", str(report), "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    points: dict[str, int] = {}
    for row in csv.DictReader(report.open()):
        points[Path(row["notebook"]).stem] = points.get(Path(row["notebook"]).stem, 0) + int(row["points"])
    wrong = {name: (points.get(name), want) for name, want in expected.items() if points.get(name) != want}
    if wrong:
        raise SystemExit(f"--jobs {jobs}: scores differ from the expected ones: {wrong}")
    return seconds


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        expected = make_class(folder)
        assert len(expected) == 30
        times = {jobs: grade(folder, expected, jobs) for jobs in (1, 2)}
    print("30 submissions of exercise set 03 (20 honest, 10 hostile), every score as expected:")
    for jobs, seconds in times.items():
        print(f"  --jobs {jobs}: {seconds:6.1f} s  ({seconds / 30:.1f} s per submission)")
    print(f"  --jobs 2 is {times[1] / times[2]:.2f}x faster than --jobs 1")


if __name__ == "__main__":
    main()
