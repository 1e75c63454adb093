"""What each lesson costs to run, and the knobs that make it faster or fuller.

Every lesson prints :func:`cost_note` at its top, so a learner knows before running it how long it takes on a
machine like theirs. The seconds are measured, not estimated: each lesson executed alone in a fresh kernel on
2 idle CPU cores in the quick profile (the lesson times ``make test`` prints from a fresh clone, or
``python benchmarks/time_lessons.py``; ``benchmarks/README.md`` keeps the table and a test checks that the two agree). The full profile has not been timed: this
project's machines have no GPU, so its note names the regime instead of promising a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..device import Profile, describe_device, usable_cpus

MEASURED_ON = "2 idle CPU cores"
LESSON_BUDGET_S = 150  # each lesson runs in about 2 minutes on 2 cores, 150 s at most


@dataclass(frozen=True)
class LessonCost:
    """A lesson's measured cost and how to change it.

    Attributes:
        title: the lesson's short title.
        quick_seconds: wall time of the whole lesson, quick profile, on :data:`MEASURED_ON`.
        full: what the full profile trains (one GPU).
        faster: which setting to lower for a faster run, and what it costs in results.
        fuller: which setting to raise for a fuller run.
    """

    title: str
    quick_seconds: int
    full: str
    faster: str
    fuller: str


LESSON_COSTS: dict[str, LessonCost] = {
    "00": LessonCost(
        "Welcome", 67,
        full="SimCLR on 8x8 digits for 300 epochs",
        faster="section 4's `steps` (1,500): fewer steps, a lower 1%-label probe",
        fuller="more `steps` in section 4, or lesson 06 for SimCLR on CIFAR-10",
    ),
    "01": LessonCost(
        "Augmentations", 67,
        full="ResNet-18 on 20,000 32-px shapes, 100 epochs per augmentation pipeline",
        faster="`steps` (600) in section 4's settings",
        fuller="more `steps`, or a 32-px `SIZE`",
    ),
    "02": LessonCost(
        "Encoders and heads", 54,
        full="ResNet-18 on CIFAR-10, 100 epochs per head",
        faster="the training `budget` (300 steps) or fewer `training_seeds` (3): a noisier table",
        fuller="a larger `budget`",
    ),
    "03": LessonCost(
        "NT-Xent and temperature", 77,
        full="ResNet-18 on CIFAR-10, 100 epochs, one model per temperature",
        faster="the sweep's `budget` (150 steps), fewer `seeds` (3) or fewer `temperatures`",
        fuller="a larger `budget` or more `temperatures`",
    ),
    "04": LessonCost(
        "InfoNCE and negatives", 76,
        full="ResNet-18 on CIFAR-10, 100 epochs per negative-weighting variant; the MI sweep for 4,000 steps",
        faster="the MI sweep's `steps` (400), the variants' `budget` (300 steps) or fewer `seeds` (3)",
        fuller="more `steps`, larger `batch_sizes`",
    ),
    "05": LessonCost(
        "Triplet loss", 81,
        full="ResNet-18 on CIFAR-10, 100 epochs per mining strategy",
        faster="the `budget` (120 steps per run), fewer `seeds` (3) or no ablations",
        fuller="a larger `budget`",
    ),
    "06": LessonCost(
        "SimCLR", 72,
        full="the course's SimCLR recipe: ResNet-18 on CIFAR-10",
        faster="the recipe's `epochs` (300) or the explorer's `n_points`",
        fuller="more `epochs`; `clcourse train simclr` runs the same recipe from a terminal",
    ),
    "07": LessonCost(
        "MoCo", 73,
        full="MoCo on 8x8 digits, 3,000 steps per run; `clcourse train moco` for CIFAR-10",
        faster="`steps` (300) or fewer `seeds` (3): a noisier table",
        fuller="more `steps`",
    ),
    "08": LessonCost(
        "SwAV", 66,
        full="SwAV on 8x8 digits, 3,000 steps per run; `clcourse train swav` for CIFAR-10",
        faster="`steps` (300) or fewer `seeds` (3): a noisier table",
        fuller="more `steps`",
    ),
    "09": LessonCost(
        "NNCLR", 55,
        full="NNCLR on 8x8 digits, 3,000 steps per run; `clcourse train nnclr` for CIFAR-10",
        faster="`steps` (300) or fewer `seeds` (3): a noisier table",
        fuller="more `steps`",
    ),
    "10": LessonCost(
        "PCL", 67,
        full="PCL, MoCo and SimCLR on 8x8 digits, 3,000 steps per run, an E-step every 19",
        faster="`steps` (300) or fewer `seeds` (3): a noisier table",
        fuller="more `steps`, or `clcourse train pcl` for CIFAR-10",
    ),
    "11": LessonCost(
        "Supervised contrastive", 85,
        full="SupCon on 16x16 digits, 5,000 steps per run",
        faster="`steps` (200) or fewer `seeds` (3): a noisier table",
        fuller="more `steps`",
    ),
    "12": LessonCost(
        "Pixel contrast", 97,
        full="a SmallSegmenter on 20,000 scenes, 4,000 steps per run",
        faster="`steps` (400) or fewer `seeds` (3): a noisier table",
        fuller="more `steps`, or `clcourse train pixel-contrast`",
    ),
    "13": LessonCost(
        "ORE", 78,
        full="the closed-set detector and ORE on 2,000 scenes, 3,200 task-1 steps each",
        faster="`steps` (800): weaker detectors, noisier figures",
        fuller="more `steps`, or `benchmarks/bench_ore_lesson.py` for the three seeds",
    ),
    "14": LessonCost(
        "CURL", 65,
        full="the three agents in the same room for 4,000 steps, 5 seeds",
        faster="`steps` (1,500) or fewer `seeds` (3): noisier curves; more CPUs train more runs side by side",
        fuller="more `steps`, or `clcourse rl curl --layout ...` for another room",
    ),
    "15": LessonCost(
        "PCRL", 87,
        full="PCRL on 20,000 unlabelled slices, 3,000 pre-training and 1,000 fine-tuning steps per run",
        faster="`pretrain_steps` (300), `finetune_steps` (200) or fewer `seeds` (3): a noisier table",
        fuller="more `pretrain_steps`, or `clcourse train pcrl`",
    ),
    "16": LessonCost(
        "SSCL", 26,
        full="SSCL on 20,000 review sentences, 3,000 steps per run, word vectors of dimension 64",
        faster="`steps` (300) or fewer `seeds` (3): a noisier table",
        fuller="more `steps` or `num_sentences`, or `clcourse train sscl`",
    ),
    "17": LessonCost(
        "Challenges", 61,
        full="the same experiments on 8x8 digits with 2,000 steps per run",
        faster="`steps` (200) or fewer `seeds` (3) in the runs cell before section 2: noisier tables",
        fuller="more `steps`; more CPUs train more runs side by side",
    ),
    "18": LessonCost(
        "Beyond", 74,
        full="SimCSE for 1,000 steps, CLIP, sound and video runs with 10x the steps, SimSiam for 1,500 steps",
        faster="`text_steps` (100) or `noncontrastive_steps` (100), or fewer CLIP `seeds` (3): a noisier table",
        fuller="more steps in each section, or `clcourse train byol|simsiam|barlow-twins`",
    ),
}


def lesson_cost(lesson: str) -> LessonCost:
    """The cost entry of lesson ``lesson`` (its two-digit number, e.g. ``"03"``)."""
    if lesson not in LESSON_COSTS:
        raise KeyError(f"no cost entry for lesson {lesson!r}; known lessons: {', '.join(LESSON_COSTS)}")
    return LESSON_COSTS[lesson]


def cost_note(lesson: str, profile: Profile) -> str:
    """Lines a lesson prints at its top: what it will cost here and how to make it faster or fuller.

    Args:
        lesson: the two-digit lesson number, e.g. ``"03"``.
        profile: the profile the lesson runs at (:func:`clcourse.device.get_profile`).
    """
    cost = lesson_cost(lesson)
    here = f"this machine: {describe_device(profile.device)}, {usable_cpus()} usable CPU cores"
    if profile.quick:
        seconds = cost.quick_seconds
        duration = f"about {seconds} s" if seconds < 120 else f"about {seconds / 60:.1f} min"
        lines = [
            (f"Lesson {lesson} ({cost.title}), quick profile: {duration} on {MEASURED_ON} ({here}; "
             "a busy machine is slower, more cores faster)."),
            f"  faster: {cost.faster}.",
            f"  fuller: {cost.fuller}; or CLCOURSE_PROFILE=full on a GPU ({cost.full}).",
        ]
    else:
        lines = [
            (f"Lesson {lesson} ({cost.title}), full profile: {cost.full} ({here}). Not timed by the course "
             f"(no GPU on its machines); the quick profile takes about {cost.quick_seconds} s on {MEASURED_ON}."),
            f"  faster: CLCOURSE_PROFILE=quick, or {cost.faster}.",
        ]
    return "\n".join(lines)
