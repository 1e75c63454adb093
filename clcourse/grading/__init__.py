"""Graded exercises: instant feedback in the notebook, and the batch grader.

In an exercise notebook::

    from clcourse.grading import check
    check("03.nt_xent", nt_xent)      # -> a green or red box, with a hint when it fails

``tasks()`` lists the task ids.  ``clcourse grade PATH...`` (see
:mod:`clcourse.grading.grader`) runs submitted notebooks and scores them;
``clcourse exercises build`` (see :mod:`clcourse.grading.build`) writes the
student notebooks from the solution sources.
"""

from clcourse.grading.feedback import CheckResult
from clcourse.grading.registry import Task, check, evaluate, tasks

# Importing the lesson modules registers their tasks.
from clcourse.grading import (  # noqa: E402,F401  (imported for their side effect)
    lesson01_augmentations,
    lesson02_heads,
    lesson03_ntxent,
    lesson04_infonce,
    lesson05_triplet,
    lesson06_simclr,
    lesson07_moco,
    lesson08_swav,
    lesson09_nnclr,
    lesson10_pcl,
    lesson11_supcon,
    lesson12_pixel_contrast,
    lesson13_ore,
    lesson14_curl,
    lesson15_pcrl,
    lesson16_sscl,
    lesson17_challenges,
    lesson18_beyond,
)

__all__ = ["CheckResult", "Task", "check", "evaluate", "tasks"]
