"""ORE's detector: its proposals keep their objectness, the RoI sampling auto-labels unknowns, classes not yet
known are masked, clustering starts after the burn-in, detections and the energy relabelling, and it learns."""

import pytest
import torch

from clcourse.data import SCENE_CLASSES, make_scenes
from clcourse.data.detection import DetectionBatch, DetectionBatches, task_annotations
from clcourse.detection_metrics import open_world_metrics
from clcourse.energy import EnergyIdentifier
from clcourse.methods.ore import MASKED_LOGIT, ORE, relabel_unknowns
from clcourse.train import fit

C = len(SCENE_CLASSES)


def small_model(**kwargs) -> ORE:
    torch.manual_seed(0)
    return ORE(C, [1, 2], 32, channels=16, feature_dim=16, **kwargs)


def batch_of(scenes, classes=(1, 2)) -> DetectionBatch:
    boxes, labels = task_annotations(scenes.boxes, scenes.box_labels, classes)
    return DetectionBatch(scenes.images, boxes, labels)


def test_the_proposals_come_with_their_objectness():
    model = small_model().eval()
    images = make_scenes(3, 32, seed=0).images
    _, proposals, objectness, losses = model.propose(images)
    assert losses == {} and len(proposals) == len(objectness) == 3
    for boxes, scores in zip(proposals, objectness):
        assert boxes.shape == (len(scores), 4) and 0 < len(scores) <= 64
        assert ((scores >= 0) & (scores <= 1)).all()


def test_sample_rois_labels_the_best_background_region_unknown():
    model = small_model(unknowns_per_image=1, rois_per_image=64)  # 64: every region is sampled
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    proposals = torch.tensor([[0.0, 0.0, 10.0, 10.0],    # the annotated object
                              [20.0, 20.0, 30.0, 30.0],  # an unannotated object, the best background region
                              [0.0, 0.0, 10.0, 4.0],     # IoU 0.4 with the object: background, lower objectness
                              [21.0, 20.0, 30.0, 30.0],  # background, lowest
                              [0.0, 0.0, 10.0, 7.0]])    # IoU 0.7: the object's class
    objectness = torch.tensor([0.99, 0.9, 0.8, 0.1, 0.95])
    rois, labels, targets = model.sample_rois([proposals], [objectness], [gt], [torch.tensor([2])])
    assert len(rois[0]) == 5 + 1  # the proposals and the annotated box
    by_box = {tuple(box.tolist()): int(label) for box, label in zip(rois[0], labels[0])}
    assert by_box == {(0.0, 0.0, 10.0, 10.0): 2, (20.0, 20.0, 30.0, 30.0): model.unknown_label,
                      (0.0, 0.0, 10.0, 4.0): 0, (21.0, 20.0, 30.0, 30.0): 0, (0.0, 0.0, 10.0, 7.0): 2}
    object_rows = labels[0] == 2
    torch.testing.assert_close(model.box_coder.decode_single(targets[0][object_rows], rois[0][object_rows]),
                               gt.expand(int(object_rows.sum()), 4))
    closed = small_model(unknowns_per_image=0, rois_per_image=64)
    _, labels, _ = closed.sample_rois([proposals], [objectness], [gt], [torch.tensor([2])])
    assert closed.unknown_label not in labels[0].tolist()
    stricter = small_model(unknowns_per_image=2, unknown_max_iou=0.1, rois_per_image=64)
    rois, labels, _ = stricter.sample_rois([proposals], [objectness], [gt], [torch.tensor([2])])
    unknown_boxes = {tuple(b.tolist()) for b, lab in zip(rois[0], labels[0]) if lab == stricter.unknown_label}
    assert unknown_boxes == {(20.0, 20.0, 30.0, 30.0), (21.0, 20.0, 30.0, 30.0)}  # (0, 0, 10, 4) overlaps the object


def test_classes_not_yet_known_are_masked_and_set_known_widens_them():
    model = small_model()
    images = make_scenes(2, 32, seed=0).images
    _, logits = model.describe_boxes(images, [torch.tensor([[2.0, 2, 12, 12]])] * 2)
    active = [0, 1, 2, model.unknown_label]
    inactive = [c for c in range(C + 1) if c not in active]
    assert (logits[:, inactive] == MASKED_LOGIT).all() and (logits[:, active] != MASKED_LOGIT).all()
    model.set_known([1, 2, 3])
    assert model.known_classes == [1, 2, 3] and model.known_logits(logits).shape == (2, 3)
    assert not small_model(unknowns_per_image=0).active_outputs()[C]
    with pytest.raises(ValueError, match="known classes must be ids in 1..6"):
        model.set_known([0, 1])


def test_clustering_waits_for_the_burn_in_then_pulls_to_the_prototypes():
    model = small_model(clustering_start=2, update_every=1)
    batch = batch_of(make_scenes(4, 32, seed=0, max_objects=3))
    for _ in range(3):  # steps 0 and 1 burn in; step 2 ends by setting the prototypes
        assert model.losses(batch)["clustering"].item() == 0.0
        model.on_step_end()
    assert model.store.valid[1:3].any() and model.store.valid[0]  # the background's prototype too, as in ORE's code
    losses = model.losses(batch)
    assert losses["clustering"].item() > 0 and losses["clustering"].requires_grad
    off = small_model(clustering_weight=0.0)
    assert off.losses(batch)["clustering"].item() == 0.0 and int(off.store.counts.sum()) == 0


def test_a_training_step_reaches_every_part():
    model = small_model()
    loss = model.training_step(batch_of(make_scenes(4, 32, seed=0)))
    loss.backward()
    for part in (model.encoder, model.rpn, model.box_head, model.classifier, model.box_regressor):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), part


def test_annotations_of_unknown_classes_and_bad_images_are_refused():
    model = small_model()
    scenes = make_scenes(2, 32, seed=0, min_objects=3, classes=("star",))
    with pytest.raises(ValueError, match=r"annotations must be of known classes \[1, 2\]"):
        model.losses(DetectionBatch(scenes.images, scenes.boxes, scenes.box_labels))
    with pytest.raises(ValueError, match=r"images must be float \[B, 3, 32, 32\]"):
        model.detect(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="DetectionBatch"):
        model.losses((scenes.images, scenes.boxes))


def test_detections_are_valid_and_the_energy_identifier_relabels_them():
    model = small_model()
    found = model.detect(make_scenes(3, 32, seed=0).images, score_threshold=0.0)
    allowed = {1, 2, model.unknown_label}
    for d in found:
        assert d.boxes.shape == (len(d.scores), 4) and d.logits.shape == (len(d.scores), C + 1)
        assert d.features.shape == (len(d.scores), 16) and len(d.scores) <= 20
        assert set(d.labels.tolist()) <= allowed
        assert (d.boxes >= 0).all() and (d.boxes <= 32).all()
    always_unknown = EnergyIdentifier(known=(1.0, -1000.0, 1.0), unknown=(1.0, -1000.0, 1e6))
    never_unknown = EnergyIdentifier(known=(1.0, -1000.0, 1e6), unknown=(1.0, -1000.0, 1.0))
    flipped = relabel_unknowns(found, always_unknown, model)
    assert all((d.labels == model.unknown_label).all() for d in flipped)
    kept = relabel_unknowns(found, never_unknown, model)
    assert all(torch.equal(a.labels, b.labels) for a, b in zip(kept, found))
    assert any(len(d.labels) and (d.labels != model.unknown_label).any() for d in found)  # inputs untouched


def test_the_state_dict_carries_the_known_classes_and_the_store():
    model = small_model(clustering_start=0)
    model.losses(batch_of(make_scenes(4, 32, seed=0)))
    model.on_step_end()
    model.set_known([1, 2, 3])
    copy = small_model(clustering_start=0)
    copy.load_state_dict(model.state_dict())
    assert copy.known_classes == [1, 2, 3] and int(copy.iteration) == 1
    assert torch.equal(copy.store.prototypes, model.store.prototypes)


def test_it_learns_to_detect_the_known_classes():
    """A few hundred steps on 32-px scenes: the known classes are found well above chance."""
    torch.manual_seed(0)
    train, test = make_scenes(400, 32, seed=0), make_scenes(60, 32, seed=1)
    boxes, labels = task_annotations(train.boxes, train.box_labels, [1, 2])
    model = ORE(C, [1, 2], 32, channels=32, feature_dim=64)
    fit(model, DetectionBatches(train.images, boxes, labels, 8), steps=250, lr=2e-3, progress=False, device="cpu")
    found = model.detect(test.images)
    metrics = open_world_metrics([d.as_tuple() for d in found], list(zip(test.boxes, test.box_labels)), [1, 2],
                                 model.unknown_label)
    assert metrics["known_map"] > 0.3, metrics
