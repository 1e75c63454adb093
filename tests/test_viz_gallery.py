"""Tests of clcourse.viz.gallery: the settings -> augmentation map and the gallery's update methods."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from clcourse.viz.gallery import (  # noqa: E402
    OPERATIONS,
    AugmentationGallery,
    augment_from_settings,
    image_rows,
    operations_figure,
    views_figure,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def images():
    return torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(0))


def test_augment_from_settings_maps_switches_and_strengths():
    augment = augment_from_settings(16, {"crop": True, "color": True}, {"crop": 0.3, "color": 1.0})
    assert augment.size == 16
    assert augment.crop_scale == (0.3, 1.0)
    assert augment.jitter == pytest.approx((0.8, 0.8, 0.8, 0.2))
    assert augment.jitter_p == 0.8
    assert augment.flip_p == augment.gray_p == augment.blur_p == augment.rotation_degrees == 0.0


def test_augment_from_settings_all_off_is_the_identity(images):
    augment = augment_from_settings(12, {}, {})
    torch.testing.assert_close(augment(images, generator=torch.Generator().manual_seed(1)), images)


def test_augment_from_settings_rejects_unknown_operations():
    with pytest.raises(ValueError, match="unknown operations"):
        augment_from_settings(16, {"solarize": True}, {})


def test_gallery_opens_with_simclr_defaults(images):
    gallery = AugmentationGallery(images, n_views=4, max_images=2)
    assert gallery.last_views.shape == (2, 4, 3, 12, 12)
    assert gallery.enabled == {name: op.enabled for name, op in OPERATIONS.items()}
    assert gallery.augment.crop_scale == (0.08, 1.0) and gallery.augment.jitter_p == 0.8
    assert len(gallery.figure.axes) == 2 * (1 + 4)


def test_set_enabled_and_set_strength_rebuild_the_augment_and_sync_the_controls(images):
    gallery = AugmentationGallery(images, n_views=2)
    gallery.set_enabled("rotation", True)
    gallery.set_strength("rotation", 90.0)
    assert gallery.augment.rotation_degrees == 90.0
    assert gallery.checkboxes["rotation"].value is True
    assert gallery.sliders["rotation"].value == 90.0 and not gallery.sliders["rotation"].disabled
    gallery.set_enabled("crop", False)
    assert gallery.augment.crop_scale == (1.0, 1.0)
    assert gallery.sliders["crop"].disabled


def test_switching_everything_off_shows_the_originals(images):
    gallery = AugmentationGallery(images, n_views=3)
    for name in OPERATIONS:
        gallery.set_enabled(name, False)
    expected = images[:, None].expand(-1, 3, -1, -1, -1)
    torch.testing.assert_close(gallery.last_views, expected)


def test_views_are_reproducible_and_new_draw_changes_them(images):
    first = AugmentationGallery(images, seed=3).last_views
    gallery = AugmentationGallery(images, seed=3)
    torch.testing.assert_close(gallery.last_views, first)
    gallery.new_draw()
    assert gallery.draw == 1 and not torch.equal(gallery.last_views, first)


def test_set_n_views_redraws_the_grid(images):
    gallery = AugmentationGallery(images, n_views=2, max_images=1)
    gallery.set_n_views(5)
    assert gallery.last_views.shape[1] == 5 and gallery.views_control.value == 5
    assert len(gallery.figure.axes) == 1 + 5


def test_size_sets_the_view_size(images):
    assert AugmentationGallery(images, size=8).last_views.shape[-2:] == (8, 8)


def test_gallery_rejects_bad_input(images):
    gallery = AugmentationGallery(images)
    with pytest.raises(ValueError, match="operation must be one of"):
        gallery.set_enabled("sharpen", True)
    with pytest.raises(ValueError, match="must be in"):
        gallery.set_strength("gray", 1.5)
    with pytest.raises(ValueError, match="n_views"):
        gallery.set_n_views(0)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        AugmentationGallery(torch.rand(3, 12, 12))


def test_operations_figure_has_one_row_per_operation(images):
    figure = operations_figure(images[0], ["crop", "color", "blur"], n_views=3)
    assert len(figure.axes) == 3 * 4
    assert [ax.get_ylabel() for ax in figure.axes[::4]] == ["random resized crop", "colour jitter", "Gaussian blur"]
    with pytest.raises(ValueError, match="unknown operation"):
        operations_figure(images[0], ["warp"])


def test_views_figure_has_one_labelled_row_per_pipeline(images):
    augments = {"none": augment_from_settings(8, {}, {}), "crop": augment_from_settings(8, {"crop": True}, {})}
    figure = views_figure(images[0], augments, n_views=2)
    assert len(figure.axes) == 2 * 3
    assert [ax.get_ylabel() for ax in figure.axes[::3]] == ["none", "crop"]
    assert figure.axes[0].get_title() == "original"
    # The identity pipeline shows the (resized) original in every column.
    first_row = [ax.get_images()[0].get_array() for ax in figure.axes[:3]]
    assert all(abs(a - first_row[0]).max() < 1e-6 for a in first_row)


def test_image_rows_accepts_ragged_rows_and_rejects_bad_images(images):
    figure = image_rows({"a": images[:3], "b": images[:1]}, ["query"])
    assert len(figure.axes) == 2 * 3 and not figure.axes[4].axison
    assert figure.axes[0].get_title() == "query"
    with pytest.raises(ValueError, match="at least one row"):
        image_rows([])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        image_rows([images * 255])
