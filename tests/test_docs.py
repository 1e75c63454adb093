"""The repository's documents link only to themselves, and every such link resolves."""

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
DOCUMENTS = sorted(
    path for pattern in ("*.md", "docs/*.md", "*/README.md", "notebooks/*.ipynb", "exercises/*.ipynb")
    for path in REPO.glob(pattern)
)


def _markdown(path: Path) -> str:
    if path.suffix != ".ipynb":
        return path.read_text()
    cells = json.loads(path.read_text())["cells"]
    return "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown")


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO)))
def test_links_stay_inside_the_repository_and_resolve(path):
    for target in LINK.findall(_markdown(path)):
        assert not re.match(r"[a-z]+://", target), f"{path.name} links outside the repository: {target}"
        if target.startswith("#"):
            continue
        assert (path.parent / target.split("#")[0]).exists(), f"{path.name} links to a missing file: {target}"


def test_the_contributor_documents_exist_and_readme_points_to_them():
    readme = (REPO / "README.md").read_text()
    for document in ("CONTRIBUTING.md", "docs/design.md", "docs/adding-a-method.md"):
        assert (REPO / document).is_file() and f"]({document})" in readme
