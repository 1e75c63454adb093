"""Lesson 13 helpers: ORE's two tasks on the course's scenes, the same protocol for the lesson and its benchmark.

The open-world split follows [1]'s recipe at a CPU's scale: 32-px scenes of up to three shapes, every shape
drawn in every image; **task 1** knows circle, square and triangle (the training images annotate only them:
stars, crosses and hearts are in the pictures, unlabelled); **task 2** learns star and cross from new images
annotated only for them, then fine-tunes on a balanced exemplar set of both tasks' images; heart is never known.
The test set labels every object; what is not known is an unknown object.

[1] Joseph et al., Towards Open World Object Detection (ORE), CVPR 2021.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from clcourse.data import SCENE_CLASSES, make_scenes
from clcourse.data.dense_data import DenseData
from clcourse.data.detection import DetectionBatches, task_annotations
from clcourse.detection_metrics import open_world_metrics
from clcourse.device import seed_everything
from clcourse.energy import EnergyIdentifier
from clcourse.methods.ore import ORE, detect_all, fit_unknown_identifier, relabel_unknowns
from clcourse.open_world import select_exemplars
from clcourse.train import fit

__all__ = ["SIZE", "TASK1", "TASK2", "VARIANTS", "OpenWorldData", "evaluate", "identifier_for", "make_open_world_data",
           "train_task1", "train_task2"]

SIZE = 32
TASK1 = (1, 2, 3)  # circle, square, triangle
TASK2 = (4, 5)     # star, cross; heart (6) stays unknown
BATCH_SIZE, LR = 8, 1e-3
TASK1_STEPS, TASK2_STEPS, REPLAY_STEPS, EXEMPLARS_PER_CLASS = 800, 300, 100, 20
# The detectors compared: a closed-set Faster R-CNN, auto-labelled unknowns alone, ORE (both mechanisms, its
# prototypes first set halfway through task 1, unless a variant says otherwise) and ORE with its prototypes set
# after 100 steps, from features still changing fast (an ablation).
VARIANTS = {
    "closed-set": dict(unknowns_per_image=0, clustering_weight=0.0),
    "auto-labelling": dict(unknowns_per_image=1, clustering_weight=0.0),
    "ORE": dict(unknowns_per_image=1, clustering_weight=0.1),
    "ORE, prototypes at step 100": dict(unknowns_per_image=1, clustering_weight=0.1, clustering_start=100),
}


@dataclass
class OpenWorldData:
    """The scenes of both tasks (``train1``, ``train2``: every object drawn, annotated per task by
    :func:`clcourse.methods.ore.annotations`), a held-out set for the energy identifier (``held_out``) and the
    test set (``test``), all fully labelled."""

    train1: DenseData
    train2: DenseData
    held_out: DenseData
    test: DenseData


def make_open_world_data(train: int = 2000, held_out: int = 300, test: int = 300) -> OpenWorldData:
    """The lesson's scenes (fixed seeds: every training seed sees the same images)."""
    return OpenWorldData(*(make_scenes(n, SIZE, seed=seed, max_objects=3)
                           for n, seed in ((train, 0), (train, 3), (held_out, 2), (test, 1))))


def train_task1(data: OpenWorldData, variant: str, seed: int, steps: int = TASK1_STEPS) -> ORE:
    """A detector of ``VARIANTS[variant]`` trained on task 1 (classes ``TASK1``) for ``steps`` batches of 8; the
    clustering's burn-in is half of them unless the variant sets it."""
    seed_everything(seed)
    model = ORE(len(SCENE_CLASSES), TASK1, SIZE, **{"clustering_start": steps // 2, **VARIANTS[variant]})
    boxes, labels = task_annotations(data.train1.boxes, data.train1.box_labels, TASK1)
    fit(model, DetectionBatches(data.train1.images, boxes, labels, BATCH_SIZE, seed=seed), steps=steps, lr=LR,
        progress=False)
    return model


def train_task2(model: ORE, data: OpenWorldData, seed: int, replay: bool = True) -> tuple[ORE, ORE | None]:
    """Task 2 on a copy of a task-1 detector: ``TASK2`` becomes known as well, trained on ``train2`` (annotated
    for TASK2 only); then, with ``replay``, a further copy fine-tuned on a balanced exemplar set (20 objects per
    class from each task's images, with that task's annotations). Returns (after task 2, after replay or None)."""
    seed_everything(seed)
    learner = copy.deepcopy(model)
    learner.set_known(TASK1 + TASK2)
    boxes, labels = task_annotations(data.train2.boxes, data.train2.box_labels, TASK2)
    fit(learner, DetectionBatches(data.train2.images, boxes, labels, BATCH_SIZE, seed=seed), steps=TASK2_STEPS,
        lr=LR, progress=False)
    if not replay:
        return learner, None
    images, ex_boxes, ex_labels = [], [], []
    for scenes, classes in ((data.train1, TASK1), (data.train2, TASK2)):
        task_boxes, task_labels = task_annotations(scenes.boxes, scenes.box_labels, classes)
        chosen = select_exemplars(task_labels, classes, EXEMPLARS_PER_CLASS, seed=seed)
        images.append(scenes.images[chosen])
        ex_boxes += [task_boxes[i] for i in chosen.tolist()]
        ex_labels += [task_labels[i] for i in chosen.tolist()]
    replayed = copy.deepcopy(learner)
    fit(replayed, DetectionBatches(torch.cat(images), ex_boxes, ex_labels, BATCH_SIZE, seed=seed),
        steps=REPLAY_STEPS, lr=LR, progress=False)
    return learner, replayed


def evaluate(model: ORE, scenes: DenseData, identifier: EnergyIdentifier | None = None) -> dict:
    """:func:`clcourse.detection_metrics.open_world_metrics` of the model's detections on ``scenes`` (WI at recall
    0.8), after the energy identifier's relabelling when one is given; adds ``detections_per_image``."""
    found = detect_all(model, scenes.images)
    if identifier is not None:
        found = relabel_unknowns(found, identifier, model)
    metrics = open_world_metrics([d.as_tuple() for d in found], list(zip(scenes.boxes, scenes.box_labels)),
                                 model.known_classes, model.unknown_label)
    metrics["detections_per_image"] = sum(len(d.labels) for d in found) / len(found)
    return metrics


def identifier_for(model: ORE, data: OpenWorldData) -> EnergyIdentifier:
    """The energy identifier fitted on the held-out scenes (their unknown objects labelled: see
    :func:`clcourse.methods.ore.fit_unknown_identifier`)."""
    return fit_unknown_identifier(model, data.held_out.images, data.held_out.boxes, data.held_out.box_labels)
