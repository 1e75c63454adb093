"""Lesson 13's protocol: the task split, both tasks' training, the replay set and the evaluation, at a tiny scale."""

import pytest
import torch

import clcourse.lessons.open_world as open_world
from clcourse.lessons.open_world import TASK1, TASK2, evaluate, identifier_for, make_open_world_data, train_task1


@pytest.fixture(scope="module")
def data():
    return make_open_world_data(train=64, held_out=40, test=20)


def test_the_split_draws_every_shape_and_fixes_the_scenes(data):
    first = make_open_world_data(train=64, held_out=40, test=20)
    assert torch.equal(first.train1.images, data.train1.images)
    assert not torch.equal(data.train1.images[:20], data.train2.images[:20])
    labels = set(torch.cat(data.test.box_labels).tolist())
    assert set(TASK1) | set(TASK2) | {6} <= labels


def test_both_tasks_train_and_the_figures_come_out(data, monkeypatch):
    monkeypatch.setattr(open_world, "TASK2_STEPS", 4)
    monkeypatch.setattr(open_world, "REPLAY_STEPS", 3)
    monkeypatch.setattr(open_world, "EXEMPLARS_PER_CLASS", 2)
    model = train_task1(data, "ORE", seed=0, steps=6)
    assert model.known_classes == list(TASK1) and int(model.iteration) == 6
    assert model.store.start == 3  # the burn-in: half of the steps unless the variant says otherwise
    assert train_task1(data, "ORE, prototypes at step 100", seed=0, steps=2).store.start == 100
    metrics = evaluate(model, data.test)
    assert {"known_map", "unknown_recall", "a_ose", "wilderness_impact", "detections_per_image"} <= set(metrics)
    learner, replayed = open_world.train_task2(model, data, seed=0)
    assert model.known_classes == list(TASK1)  # the task-1 detector is left as it was
    assert learner.known_classes == replayed.known_classes == sorted(TASK1 + TASK2)
    assert int(learner.iteration) == 6 + 4 and int(replayed.iteration) == 6 + 4 + 3
    assert open_world.train_task2(model, data, seed=0, replay=False)[1] is None
    assert evaluate(replayed, data.test)["ap"].keys() == set(TASK1 + TASK2)


def test_the_identifier_is_fitted_on_the_held_out_objects(data):
    model = train_task1(data, "auto-labelling", seed=0, steps=4)
    identifier = identifier_for(model, data)
    assert len(identifier.known) == len(identifier.unknown) == 3
    relabelled = evaluate(model, data.test, identifier)
    assert relabelled["a_ose"] <= evaluate(model, data.test)["a_ose"]  # relabelling only removes known labels
