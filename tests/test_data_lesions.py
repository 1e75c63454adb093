"""Tests of clcourse.data.lesions: medical-like slices, their lesion masks and boxes, and the scanner shift."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clcourse.data import DenseData, make_lesions
from clcourse.data.lesions import LESION_CLASSES, _draw_anatomy
from clcourse.data.shapes import PixelGrid

N = 300


@pytest.fixture(scope="module")
def scanner_a():
    return make_lesions(N, 64, seed=0)


@pytest.fixture(scope="module")
def scanner_b():
    return make_lesions(N, 64, seed=0, scanner="B")


@pytest.fixture(scope="module")
def anatomy():
    """The anatomy make_lesions(N, 64, seed=0) draws first: organ bool [N, S, S], lesions bool [N, L, S, S]."""
    return _draw_anatomy(N, PixelGrid.of(64), torch.Generator().manual_seed(0))


def test_shapes_dtypes_and_factors(scanner_a, scanner_b):
    for data, code in ((scanner_a, 0), (scanner_b, 1)):
        assert isinstance(data, DenseData) and len(data) == N
        assert data.images.shape == (N, 1, 64, 64) and data.images.dtype == torch.float32
        assert 0 <= data.images.min() and data.images.max() <= 1
        assert data.masks.shape == (N, 64, 64) and data.masks.dtype == torch.int64
        assert set(data.masks.unique().tolist()) == {0, 1}
        assert data.class_names == LESION_CLASSES == ("background", "lesion")
        assert data.factors["scanner"].dtype == torch.int64 and (data.factors["scanner"] == code).all()
        for boxes, labels in zip(data.boxes, data.box_labels):
            assert boxes.dtype == torch.float32 and boxes.shape == (len(labels), 4)
            assert labels.dtype == torch.int64 and (labels == 1).all()
    counts = scanner_a.factors["num_lesions"]
    assert counts.dtype == torch.int64 and counts.tolist() == [len(b) for b in scanner_a.boxes]
    assert set(counts.tolist()) == {0, 1, 2, 3}
    assert make_lesions(3, 32).images.shape == (3, 1, 32, 32)


def test_masks_and_boxes_are_the_anatomys_lesions(scanner_a, anatomy):
    lesions = anatomy.lesions
    assert torch.equal(lesions.any(1).long(), scanner_a.masks)
    for image_lesions, boxes in zip(lesions, scanner_a.boxes):
        present = [m for m in image_lesions if m.any()]
        assert len(present) == len(boxes)
        for lesion, box in zip(present, boxes.tolist()):
            rows, cols = lesion.nonzero().unbind(1)
            assert box == [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]


def test_lesions_lie_inside_the_organ_and_never_touch(anatomy):
    lesions, organ = anatomy.lesions, anatomy.organ
    assert not (lesions.any(1) & ~organ).any()
    # Grown by one pixel (8-neighbourhood), a lesion reaches no pixel of another lesion of its image.
    grown = F.max_pool2d(lesions.float(), 3, stride=1, padding=1) > 0
    meets = (grown[:, :, None] & lesions[:, None]).flatten(3).any(3)  # [N, L, L]: j grown meets k
    assert not (meets & ~torch.eye(lesions.shape[1], dtype=torch.bool)).any()
    assert (lesions.flatten(2).any(2).sum(1) >= 2).sum() > 50  # many images do have several lesions


def test_lesions_differ_from_the_organ_around_them(scanner_a, anatomy):
    image = scanner_a.images[:, 0]
    organ_only = anatomy.organ & ~anatomy.lesions.any(1)
    darker = brighter = 0
    for i, boxes in enumerate(scanner_a.boxes):
        organ_level = image[i][organ_only[i]].mean()
        for lesion in anatomy.lesions[i]:
            if lesion.any():
                if image[i][lesion].mean() < organ_level:
                    darker += 1
                else:
                    brighter += 1
    assert 0.55 < darker / (darker + brighter) < 0.85  # mostly hypo-intense, as DARK_LESION_P = 0.7


def test_same_anatomy_on_both_scanners_and_b_is_shifted(scanner_a, scanner_b, anatomy):
    assert torch.equal(scanner_a.masks, scanner_b.masks)
    assert all(torch.equal(a, b) for a, b in zip(scanner_a.boxes, scanner_b.boxes))
    a, b = scanner_a.images[:, 0], scanner_b.images[:, 0]
    assert b.mean() > a.mean() + 0.08  # brighter overall
    air = (slice(None), slice(0, 4), slice(0, 4))  # a corner: air outside the body
    assert b[air].std() > 2 * a[air].std()  # noisier
    organ, tissue = anatomy.organ, (anatomy.clean > 0.15) & ~anatomy.organ
    contrast_a = a[organ].mean() - a[tissue].mean()
    contrast_b = b[organ].mean() - b[tissue].mean()
    assert contrast_a > 0.15 and contrast_b < 0.8 * contrast_a  # the organ stands out less


def test_deterministic_per_seed_and_seeds_differ(scanner_a):
    again = make_lesions(N, 64, seed=0)
    assert torch.equal(again.images, scanner_a.images) and torch.equal(again.masks, scanner_a.masks)
    assert all(torch.equal(a, b) for a, b in zip(again.boxes, scanner_a.boxes))
    other = make_lesions(N, 64, seed=1)
    assert not torch.equal(other.images, scanner_a.images) and not torch.equal(other.masks, scanner_a.masks)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=-1), "n must be a non-negative int"),
        (dict(n=2.5), "n must be a non-negative int"),
        (dict(n=4, size=16), "size must be an int >= 32"),
        (dict(n=4, scanner="C"), r"scanner must be one of \['A', 'B'\]"),
    ],
)
def test_bad_arguments_say_what_was_expected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_lesions(**kwargs)
