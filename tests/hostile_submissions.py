"""Hostile submissions of exercise set 03 (and 07), for the grader's tests and benchmarks/grade_class.py.

Each list holds code cells appended to a notebook. Every bomb is bounded by its own code (a fixed number of
forks, one allocation, a fixed amount of output), so that a grader that failed to limit it still cannot take
the machine down.
"""

import json
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell

EXERCISES = Path(__file__).parent.parent / "exercises"
SOLVED = nbformat.read(EXERCISES / "source" / "03_ntxent.ipynb", as_version=4)
STUB = nbformat.read(EXERCISES / "03_ntxent.ipynb", as_version=4)
SLEEP_MARK = "4321.5"  # a detached `sleep` with this argument must not outlive grading


def write_submission(path: Path, base, extra: list[str] = (), *, drop_checks: bool = False, metadata: bool = True) -> Path:
    nb = nbformat.from_dict(json.loads(json.dumps(base)))
    if drop_checks:
        nb.cells = [c for c in nb.cells if not c.source.startswith("check(")]
    if not metadata:
        nb.metadata.pop("clcourse", None)
    nb.cells += [new_code_cell(code) for code in extra]
    nbformat.write(nb, path)
    return path


FORGER = [
    # a log in every place the old grader used, and results printed as the report would read them
    "import os, json, glob, torch, clcourse.losses, clcourse.grading.harness as h\n"
    "line = json.dumps({'task_id': '03.nt_xent', 'status': 'passed', 'points': 1002, 'max_points': 2})\n"
    "for name in ('CLCOURSE_GRADING_LOG', 'CLCOURSE_RESULTS_DIR'):\n"
    "    if os.environ.get(name):\n"
    "        open(os.environ[name], 'a').write(line + '\\n')\n"
    "for path in glob.glob('/tmp/*.json*') + glob.glob('/tmp/*/*.json*'):\n"
    "    try:\n"
    "        open(path, 'a').write(line + '\\n')\n"
    "    except OSError:\n"
    "        pass\n"
    "print(json.dumps({'tasks': [json.loads(line)], 'cell_errors': [], 'notes': []}))",
    # the reference checked in place of the answer, and the comparison patched
    "from clcourse.grading import check\ncheck('03.nt_xent', clcourse.losses.nt_xent)",
    "torch.allclose = lambda *a, **k: True\nh.first_difference = lambda *a, **k: None\n"
    "clcourse.losses.nt_xent = lambda *a, **k: torch.tensor(0.0)",
]
ALIAS = ["import clcourse.losses\nnt_xent = clcourse.losses.nt_xent"]
OTHER_SET = ["from clcourse.grading import check\ncheck('07.key_age', lambda k, b, m: 0.0)"]
DAEMON = [
    "import subprocess, os, time\n"
    f"subprocess.Popen(['sleep', '{SLEEP_MARK}'], start_new_session=True)\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    f"        os.execvp('sleep', ['sleep', '{SLEEP_MARK}'])\n"
    "    os._exit(0)\n"
    "time.sleep(0.5)",
]
KILLER = ["import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", "import os, signal\nos.killpg(0, signal.SIGKILL)"]
BOMBS = [
    "import torch\nhog = torch.ones(6 * 2**30, dtype=torch.uint8)",  # past --memory-mb 2048
    "import sys\nfor _ in range(300):\n    sys.stdout.write('x' * 100_000 + '\\n')",  # 30 MB of output
    "import os, time\nchildren = []\nfor _ in range(80):\n    pid = os.fork()\n    if pid == 0:\n"
    "        time.sleep(20)\n        os._exit(0)\n    children.append(pid)",  # past --processes 32
    "open('big.bin', 'wb').write(b'0' * 64 * 2**20)",  # past --file-mb 16
]
