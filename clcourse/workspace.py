"""The learner's workspace: their own copies of the lessons and exercises, apart from the course's.

``make lab`` (``clcourse lab``) serves JupyterLab on a git-ignored folder, by default ``workspace/`` in
the checkout, that holds ``lessons/`` (copies of ``notebooks/``) and ``exercises/`` (copies of the
student exercise notebooks). Running a lesson there saves outputs and edits into the learner's copy,
never into the course's files, so ``git pull`` never conflicts with them.

Every start synchronises the workspace with the course (:func:`sync_workspace`); a manifest records
which version of the course each copy came from:

- a notebook the workspace lacks (new, or deleted by the learner) is copied;
- a copy the learner never changed follows the course when the course changes;
- a copy the learner changed is never overwritten: the course's newer version is written beside it as
  ``NN_topic.new.ipynb``, and a message says so until the learner deletes one of the two (deleting
  theirs takes the new version at the next start; deleting the ``.new`` file keeps theirs).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["COURSE_FOLDERS", "Change", "default_workspace", "sync_workspace"]

CHECKOUT = Path(__file__).resolve().parents[1]
# course folder -> workspace folder
COURSE_FOLDERS = {"notebooks": "lessons", "exercises": "exercises"}
MANIFEST = ".clcourse-workspace.json"
WORKSPACE_ENV = "CLCOURSE_WORKSPACE"


@dataclass(frozen=True)
class Change:
    """What :func:`sync_workspace` did to one notebook: ``kind`` is "added", "updated" or "newer"."""

    kind: str
    path: str  # relative to the workspace

    def __str__(self) -> str:
        if self.kind == "newer":
            new = Path(self.path).with_suffix(".new.ipynb")
            return (f"{self.path}: the course has a newer version, written beside yours as {new}; yours is kept "
                    f"(delete yours to take the new one, or delete {new.name} to keep yours)")
        return f"{self.path}: {self.kind}"


def default_workspace() -> Path:
    """``$CLCOURSE_WORKSPACE`` when set, else ``workspace/`` in the course's checkout."""
    return Path(os.environ[WORKSPACE_ENV]) if os.environ.get(WORKSPACE_ENV) else CHECKOUT / "workspace"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sync_workspace(workspace: str | Path | None = None, course: str | Path = CHECKOUT) -> list[Change]:
    """Bring ``workspace`` up to date with the course's notebooks without touching the learner's work.

    Args:
        workspace: the learner's folder (created if missing); default :func:`default_workspace`.
        course: the checkout whose ``notebooks/`` and ``exercises/`` are copied.

    Returns:
        what changed, one :class:`Change` per notebook added, updated or left with a newer version.
    """
    workspace = default_workspace() if workspace is None else Path(workspace)
    course = Path(course)
    if not (course / "notebooks").is_dir():
        raise FileNotFoundError(f"no course at {course}: expected {course / 'notebooks'}")
    workspace.mkdir(parents=True, exist_ok=True)
    manifest_path = workspace / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    copied, offered = manifest.setdefault("copied", {}), manifest.setdefault("offered", {})
    changes = []
    for source_folder, target_folder in COURSE_FOLDERS.items():
        for source in sorted((course / source_folder).glob("*.ipynb")):
            relative = f"{target_folder}/{source.name}"
            target, newer = workspace / relative, workspace / Path(relative).with_suffix(".new.ipynb")
            course_version = _digest(source)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                copied[relative] = course_version
                offered.pop(relative, None)
                newer.unlink(missing_ok=True)
                changes.append(Change("added", relative))
            elif copied.get(relative) == course_version:
                continue
            elif _digest(target) in (course_version, copied.get(relative)):  # the learner never changed it
                shutil.copyfile(source, target)
                copied[relative] = course_version
                changes.append(Change("updated", relative))
            elif offered.get(relative) != course_version or newer.exists():
                shutil.copyfile(source, newer)  # offered until the learner deletes one of the two
                offered[relative] = course_version
                changes.append(Change("newer", relative))
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return changes
