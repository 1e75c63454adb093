"""Tests of clcourse.data.scenes: multi-object scenes whose masks, boxes and pixels agree."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clcourse.data import (
    COLOR_VALUES,
    SCENE_CLASSES,
    SHAPE_NAMES,
    TEXTURE_NAMES,
    DenseData,
    make_scenes,
)


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(400, 32, seed=0)


def _chroma(images):
    """max - min over RGB [N, H, W]: 0 on the grey background."""
    return images.max(dim=1).values - images.min(dim=1).values


def _interior(masks):
    """bool [N, H, W]: the pixel and its 8 neighbours have the same class."""
    padded = F.pad(masks[:, None].float(), (1, 1, 1, 1), value=-1)[:, 0]
    h, w = masks.shape[1:]
    same = torch.ones_like(masks, dtype=torch.bool)
    for dy in range(3):
        for dx in range(3):
            same &= padded[:, dy : dy + h, dx : dx + w] == masks
    return same


def _check_boxes_against_mask(data: DenseData) -> None:
    """Every box is tight around pixels of its class; every object pixel lies in a box of its class."""
    for mask, boxes, labels in zip(data.masks, data.boxes, data.box_labels):
        covered = torch.zeros_like(mask, dtype=torch.bool)
        for (x0, y0, x1, y1), label in zip(boxes.long().tolist(), labels.tolist()):
            inside = mask[y0:y1, x0:x1] == label
            # Tight: each of the four sides of the box touches a pixel of the class.
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[y0:y1, x0:x1] |= inside
        assert torch.equal(covered, mask > 0)


def test_shapes_dtypes_and_labels(scenes):
    assert isinstance(scenes, DenseData) and len(scenes) == 400
    assert scenes.images.shape == (400, 3, 32, 32) and scenes.images.dtype == torch.float32
    assert 0 <= scenes.images.min() and scenes.images.max() <= 1
    assert scenes.masks.shape == (400, 32, 32) and scenes.masks.dtype == torch.int64
    assert scenes.class_names == SCENE_CLASSES == ("background", *SHAPE_NAMES)
    assert set(scenes.masks.unique().tolist()) == set(range(len(SCENE_CLASSES)))
    for boxes, labels in zip(scenes.boxes, scenes.box_labels):
        assert boxes.dtype == torch.float32 and boxes.shape == (len(labels), 4) and labels.dtype == torch.int64
        assert ((boxes[:, :2] >= 0) & (boxes[:, 2:] <= 32) & (boxes[:, :2] < boxes[:, 2:])).all()
    counts = scenes.factors["num_objects"]
    assert counts.dtype == torch.int64 and counts.tolist() == [len(b) for b in scenes.boxes]
    assert set(counts.tolist()) == {1, 2, 3}
    assert set(scenes.factors["texture"].tolist()) == set(range(len(TEXTURE_NAMES)))
    assert make_scenes(5, 48).images.shape == (5, 3, 48, 48)


def test_boxes_are_tight_and_cover_every_object_pixel(scenes):
    _check_boxes_against_mask(scenes)


def test_box_of_a_class_alone_in_its_image_is_the_masks_bounding_box(scenes):
    checked = 0
    for mask, boxes, labels in zip(scenes.masks, scenes.boxes, scenes.box_labels):
        for box, label in zip(boxes, labels.tolist()):
            if (labels == label).sum() == 1:
                rows, cols = (mask == label).nonzero().unbind(1)
                expected = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
                assert box.tolist() == [float(v) for v in expected]
                checked += 1
    assert checked > 500


def test_object_pixels_have_the_objects_colour_up_to_antialiasing(scenes):
    # An object two pixels clear of every other box (whose anti-aliased fringe reaches past its box):
    # each of its pixels is a * fill + (1 - a) * grey with a > 0.5.
    checked = 0
    for image, mask, boxes, labels in zip(scenes.images, scenes.masks, scenes.boxes, scenes.box_labels):
        for i, ((x0, y0, x1, y1), label) in enumerate(zip(boxes.long().tolist(), labels.tolist())):
            others = torch.cat([boxes[:i], boxes[i + 1 :]]) + torch.tensor([-2, -2, 2, 2])
            apart = (others[:, 0] >= x1) | (others[:, 2] <= x0) | (others[:, 1] >= y1) | (others[:, 3] <= y0)
            if not apart.all():
                continue
            pixels = image[:, y0:y1, x0:x1][:, mask[y0:y1, x0:x1] == label].T  # [P, 3]
            palette_distance = torch.cdist(pixels, COLOR_VALUES)
            fill = COLOR_VALUES[palette_distance.min(0).values.argmin()]  # the colour its interior shows exactly
            assert palette_distance.min() < 1e-6
            share = (pixels.max(1).values - pixels.min(1).values) / (fill.max() - fill.min())
            grey_part = pixels - share[:, None] * fill
            assert (share > 0.5 - 1e-5).all() and (share < 1 + 1e-5).all()
            assert (grey_part.max(1).values - grey_part.min(1).values).max() < 1e-5
            checked += 1
    assert checked > 200


def test_background_is_grey_away_from_objects(scenes):
    interior = _interior(scenes.masks)
    background = interior & (scenes.masks == 0)
    chroma = _chroma(scenes.images)
    # A star's spike thinner than a pixel may tint a few pixels without owning one.
    assert (chroma[background] > 0).float().mean() < 1e-3
    assert chroma[scenes.masks > 0].min() > 0  # fills are saturated: an object pixel is never grey


def test_deterministic_per_seed_and_seeds_differ(scenes):
    again = make_scenes(400, 32, seed=0)
    assert torch.equal(again.images, scenes.images) and torch.equal(again.masks, scenes.masks)
    assert all(torch.equal(a, b) for a, b in zip(again.boxes, scenes.boxes))
    assert all(torch.equal(a, b) for a, b in zip(again.box_labels, scenes.box_labels))
    other = make_scenes(400, 32, seed=1)
    assert not torch.equal(other.images, scenes.images) and not torch.equal(other.masks, scenes.masks)


def test_restricted_classes_keep_their_ids():
    known = make_scenes(300, 32, seed=2, classes=("circle", "star"))
    ids = {SCENE_CLASSES.index("circle"), SCENE_CLASSES.index("star")}
    assert ids == {1, 4}
    assert known.class_names == SCENE_CLASSES
    assert set(known.masks.unique().tolist()) == {0} | ids
    assert set(torch.cat(known.box_labels).tolist()) == ids
    _check_boxes_against_mask(known)


def test_hidden_objects_are_dropped_and_empty_scenes_allowed():
    crowded = make_scenes(100, 16, seed=3, min_objects=8, max_objects=8)
    counts = crowded.factors["num_objects"]
    assert counts.max() <= 8 and (counts < 8).any()  # eight objects in 16 x 16: some end up fully hidden
    _check_boxes_against_mask(crowded)
    sparse = make_scenes(100, 32, seed=4, min_objects=0, max_objects=1)
    empty = sparse.factors["num_objects"] == 0
    assert empty.any() and (sparse.masks[empty] == 0).all()
    assert all(len(sparse.boxes[i]) == 0 for i in empty.nonzero().flatten().tolist())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=-1), "n must be a non-negative int"),
        (dict(n=4, size=8), "size must be an int >= 16"),
        (dict(n=4, min_objects=3, max_objects=2), "min_objects <= max_objects"),
        (dict(n=4, min_objects=0, max_objects=0), "max_objects >= 1"),
        (dict(n=4, classes=("circle", "hexagon")), "distinct names from"),
        (dict(n=4, classes=()), "at least one"),
        (dict(n=4, classes="circle"), "sequence of shape names"),
        (dict(n=4, classes=(1, 2)), "sequence of shape names"),
    ],
)
def test_bad_arguments_say_what_was_expected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_scenes(**kwargs)
