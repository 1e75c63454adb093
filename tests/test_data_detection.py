"""Detection batches: a task's annotations, and batches reshuffled every epoch."""

import pytest
import torch

from clcourse.data import DetectionBatches, make_scenes, task_annotations


def test_annotations_keep_only_the_task_classes():
    boxes = [torch.tensor([[0.0, 0, 4, 4], [5, 5, 9, 9], [1, 1, 3, 3]]), torch.zeros(0, 4)]
    labels = [torch.tensor([1, 4, 2]), torch.zeros(0, dtype=torch.long)]
    kept_boxes, kept_labels = task_annotations(boxes, labels, [2, 1])
    assert kept_labels[0].tolist() == [1, 2] and torch.equal(kept_boxes[0], boxes[0][[0, 2]])
    assert kept_boxes[1].shape == (0, 4) and kept_labels[1].tolist() == []


def test_batches_are_reproducible_and_reshuffled_every_epoch():
    scenes = make_scenes(10, 32, seed=0)
    loader = DetectionBatches(scenes.images, scenes.boxes, scenes.box_labels, 4, seed=3)
    first = [b.images for b in loader]
    assert len(first) == len(loader) == 2 and torch.equal(first[0], next(iter(loader)).images)
    loader.set_epoch(1)
    assert not torch.equal(first[0], next(iter(loader)).images)
    subset = DetectionBatches(scenes.images, scenes.boxes, scenes.box_labels, 2, indices=torch.tensor([4, 7]))
    batch = next(iter(subset))
    assert {tuple(x.flatten()[:3].tolist()) for x in batch.images} == \
        {tuple(scenes.images[i].flatten()[:3].tolist()) for i in (4, 7)}
    with pytest.raises(ValueError, match=r"batch_size must be an int in \[1, 10\]"):
        DetectionBatches(scenes.images, scenes.boxes, scenes.box_labels, 11)
