"""Tests of clcourse.lessons.augmentations: the shortcut experiment's variants, probe and throughput."""

import pytest
import torch

from clcourse.augment import simclr_transform
from clcourse.data import COLOR_VALUES, make_shapes
from clcourse.lessons.augmentations import (
    VARIANTS,
    images_per_second,
    instance_colors,
    probe_factors,
    sample_photos,
    train_and_probe,
    variant_augment,
)


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(96, image_size=16, seed=0), make_shapes(48, image_size=16, seed=1)


def test_variants_switch_crop_and_colour_independently():
    crop, color, both, none = (variant_augment(v, 16) for v in ("crop", "color", "crop+color", "none"))
    assert crop.crop_scale == both.crop_scale == (0.08, 1.0) and color.crop_scale == none.crop_scale == (1.0, 1.0)
    assert crop.flip_p == 0.5 and color.flip_p == 0.0
    assert crop.jitter_p == crop.gray_p == 0.0 and none.jitter_p == 0.0
    assert color.jitter_p == both.jitter_p == 0.8 and color.gray_p == both.gray_p == 0.2
    assert both.jitter == pytest.approx((0.4, 0.4, 0.4, 0.1))
    assert set(VARIANTS) == {"none", "crop", "color", "crop+color"}


def test_variant_none_keeps_the_image_and_crop_keeps_the_colours():
    x = make_shapes(8, image_size=16, seed=0).images
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(variant_augment("none", 16)(x, generator=g), x)
    # A crop only moves pixels: the set of channel values stays within the image's.
    cropped = variant_augment("crop", 16, crop_scale=(0.5, 1.0))(x, generator=g)
    assert cropped.amax(dim=(2, 3)).le(x.amax(dim=(2, 3)) + 1e-5).all()


def test_variant_augment_rejects_unknown_variants():
    with pytest.raises(ValueError, match="variant must be one of"):
        variant_augment("crop+blur", 16)


def test_probe_factors_reads_colour_off_the_mean_colour(shapes):
    train, test = shapes
    mean_colour = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    accuracy = probe_factors(mean_colour, train, test, ("color", "shape"))
    assert set(accuracy) == {"color", "shape"}
    assert accuracy["color"] > 0.9  # the shape's fill colour dominates the mean colour
    with pytest.raises(ValueError, match="no factor 'size'"):
        probe_factors(mean_colour, train, test, ("size",))


def test_train_and_probe_trains_for_the_budget_and_is_reproducible(shapes):
    train, test = shapes
    augment = variant_augment("crop+color", 16)
    runs = [train_and_probe(train, test, augment, variant="both", width=4, batch_size=32, steps=3, seed=0)
            for _ in range(2)]
    assert runs[0].variant == "both" and runs[0].history.steps == 3
    assert set(runs[0].accuracy) == {"shape", "color"}
    assert all(0 <= a <= 1 for a in runs[0].accuracy.values())
    assert runs[0].accuracy == runs[1].accuracy
    assert runs[0].history.step_loss == runs[1].history.step_loss


def test_train_and_probe_without_augment_probes_the_untrained_encoder(shapes):
    train, test = shapes
    result = train_and_probe(train, test, None, width=4, factors=("texture",))
    assert result.history is None and set(result.accuracy) == {"texture"}


def test_images_per_second_times_both_kinds_of_pipeline():
    images = torch.rand(16, 3, 16, 16)
    batched = images_per_second(variant_augment("crop+color", 16), images, batched=True, seconds=0.05, batch_size=8)
    per_sample = images_per_second(simclr_transform(16), images, batched=False, seconds=0.05, batch_size=8)
    assert batched > 0 and per_sample > 0
    with pytest.raises(ValueError, match="seconds"):
        images_per_second(simclr_transform(16), images, batched=False, seconds=0)


def test_sample_photos_are_two_rgb_squares_in_unit_range():
    photos = sample_photos(32)
    assert photos.shape == (2, 3, 32, 32) and photos.dtype == torch.float32
    assert 0 <= photos.min() and photos.max() <= 1 and photos.std() > 0.1


def test_instance_colors_without_change_reproduces_the_images(shapes):
    train, _ = shapes
    torch.testing.assert_close(instance_colors(train, 0.0, 0.0).images, train.images, atol=1e-5, rtol=0)


def test_instance_colors_gives_every_image_its_own_colours_but_keeps_the_named_colour():
    data = make_shapes(64, image_size=16, seed=0)
    recoloured = instance_colors(data, fill_jitter=0.15, tint=0.5, seed=0)
    assert recoloured.images.shape == data.images.shape and 0 <= recoloured.images.min() <= recoloured.images.max() <= 1
    assert torch.equal(recoloured.labels, data.labels) and torch.equal(recoloured.factors["color"], data.factors["color"])
    # The brightest pixel of each image lies inside the shape: its colour is the new fill,
    # which differs from image to image yet stays nearest the image's named colour.
    flat = recoloured.images.flatten(2)
    fill = flat.gather(2, flat.sum(1, keepdim=True).argmax(2, keepdim=True).expand(-1, 3, 1)).squeeze(2)
    nearest = torch.cdist(fill, COLOR_VALUES).argmin(1)
    assert torch.equal(nearest, data.factors["color"])
    assert torch.unique(fill, dim=0).shape[0] == len(data)
    torch.testing.assert_close(instance_colors(data, seed=0).images, instance_colors(data, seed=0).images)
    with pytest.raises(ValueError, match="fill_jitter"):
        instance_colors(data, fill_jitter=0.5)
