"""The project's set-up files agree with each other."""

import re
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
