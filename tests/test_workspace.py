"""Tests of clcourse.workspace: the learner's copies follow the course without losing their work."""

import json

import pytest

from clcourse.workspace import sync_workspace


@pytest.fixture
def course(tmp_path):
    root = tmp_path / "course"
    for folder, names in (("notebooks", ("00_welcome", "06_simclr")), ("exercises", ("06_simclr",))):
        (root / folder).mkdir(parents=True)
        for name in names:
            (root / folder / f"{name}.ipynb").write_text(json.dumps({"version": 1, "name": name}))
    (root / "exercises" / "source").mkdir()
    (root / "exercises" / "source" / "06_simclr.ipynb").write_text("solutions")  # never copied
    return root


def kinds(changes):
    return sorted((c.kind, c.path) for c in changes)


def test_first_start_copies_the_lessons_and_student_exercises(course, tmp_path):
    work = tmp_path / "work"
    assert kinds(sync_workspace(work, course)) == [("added", "exercises/06_simclr.ipynb"),
                                                   ("added", "lessons/00_welcome.ipynb"),
                                                   ("added", "lessons/06_simclr.ipynb")]
    assert not (work / "exercises" / "source").exists()
    assert sync_workspace(work, course) == []  # nothing to do the second time


def test_an_untouched_copy_follows_the_course_and_an_edited_one_is_kept(course, tmp_path):
    work = tmp_path / "work"
    sync_workspace(work, course)
    (work / "lessons" / "06_simclr.ipynb").write_text("the learner's outputs")
    for name in ("00_welcome", "06_simclr"):
        (course / "notebooks" / f"{name}.ipynb").write_text(json.dumps({"version": 2, "name": name}))

    changes = sync_workspace(work, course)
    assert kinds(changes) == [("newer", "lessons/06_simclr.ipynb"), ("updated", "lessons/00_welcome.ipynb")]
    assert "version\": 2" in (work / "lessons" / "00_welcome.ipynb").read_text()
    assert (work / "lessons" / "06_simclr.ipynb").read_text() == "the learner's outputs"
    assert "version\": 2" in (work / "lessons" / "06_simclr.new.ipynb").read_text()
    message = str(next(c for c in changes if c.kind == "newer"))
    assert "06_simclr.new.ipynb" in message and "yours is kept" in message
    assert kinds(sync_workspace(work, course)) == [("newer", "lessons/06_simclr.ipynb")]  # until resolved

    (work / "lessons" / "06_simclr.new.ipynb").unlink()  # the learner keeps theirs
    assert sync_workspace(work, course) == []
    (work / "lessons" / "06_simclr.ipynb").unlink()  # ... or, later, takes the course's
    assert kinds(sync_workspace(work, course)) == [("added", "lessons/06_simclr.ipynb")]
    assert "version\": 2" in (work / "lessons" / "06_simclr.ipynb").read_text()


def test_a_missing_course_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected .*notebooks"):
        sync_workspace(tmp_path / "work", tmp_path / "nowhere")
