"""The project's set-up files agree with each other."""

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def requirement_name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_names_every_runtime_dependency():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = (ROOT / "environment.yml").read_text().lower()
    listed = {requirement_name(line.split("- ", 1)[1]) for line in env.splitlines() if line.strip().startswith("- ")}
    missing = {requirement_name(d) for d in deps} - listed
    assert not missing, f"environment.yml lacks {sorted(missing)}"


def test_torch_ranges_admit_the_versions_installed_here():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    from packaging.requirements import Requirement

    reqs = {Requirement(d).name: Requirement(d) for d in deps}
    assert reqs["torch"].specifier.contains("2.14.1")
    assert reqs["torchvision"].specifier.contains("0.29.1")


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_committed_notebooks_carry_no_outputs():
    import json

    dirty = []
    for path in sorted([*ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("exercises/**/*.ipynb")]):
        cells = json.loads(path.read_text())["cells"]
        if any(c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count")) for c in cells):
            dirty.append(path.relative_to(ROOT))
    assert not dirty, f"notebooks stored with outputs (strip them: python3 .githooks/pre-commit --strip ...): {dirty}"


def test_the_pre_commit_hook_refuses_a_notebook_with_outputs(tmp_path):
    import json
    import shutil
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    run = lambda *args: subprocess.run(args, cwd=repo, capture_output=True, text=True)  # noqa: E731
    run("git", "init", "-q")
    notebook = {"cells": [{"cell_type": "code", "execution_count": 1, "metadata": {}, "outputs": [
        {"output_type": "stream", "name": "stdout", "text": ["hi\n"]}], "source": ["print('hi')"]}],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (repo / "lesson.ipynb").write_text(json.dumps(notebook))
    run("git", "add", "lesson.ipynb")
    hook = shutil.copy(ROOT / ".githooks" / "pre-commit", repo / "hook")
    refused = run(sys.executable, hook)
    assert refused.returncode == 1 and "lesson.ipynb" in refused.stderr
    assert run(sys.executable, hook, "--strip", "lesson.ipynb").returncode == 0
    run("git", "add", "lesson.ipynb")
    assert run(sys.executable, hook).returncode == 0
