import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from clcourse.augment import BatchedAugment
from clcourse.encoders import SmallCNN, resnet18_cifar
from clcourse.evaluate import extract_features
from clcourse.lessons.heads import (
    augmented_views,
    compare_h_z,
    count_macs,
    format_layer_table,
    format_reports,
    gradient_receptive_field,
    head_features,
    layer_table,
    plot_reports,
    receptive_fields,
    support_size,
    time_forward,
    transformation_predictions,
    transformation_probe,
    view_targets,
)
from clcourse.methods.simclr import SimCLR


def test_layer_table_small_cnn_shapes_params_macs():
    model = SmallCNN(1, width=8, out_dim=16)
    rows = layer_table(model, torch.rand(3, 1, 16, 16), depth=2)
    names = [r.name for r in rows]
    assert names == ["features.0", "features.1", "features.2", "features.3", "features.4", "fc"]
    shapes = {r.name: r.out_shape for r in rows}
    assert shapes["features.0"] == (8, 16, 16) and shapes["features.2"] == (32, 4, 4) and shapes["fc"] == (16,)
    assert sum(r.params for r in rows) == sum(p.numel() for p in model.parameters())
    by_row = {r.name: r.macs for r in rows}
    assert by_row["features.1"] == 8 * 8 * 16 * (8 * 9)  # H_out W_out c_out c_in k^2
    assert by_row["fc"] == 32 * 16
    assert sum(by_row.values()) == count_macs(model, torch.rand(2, 1, 16, 16))
    assert model.training  # mode restored
    text = format_layer_table(rows)
    assert "features.1" in text and "total" in text


def test_layer_table_depth_one_and_errors():
    rows = layer_table(resnet18_cifar(), torch.rand(1, 3, 32, 32), depth=1)
    assert [r.name for r in rows] == ["net"] and rows[0].out_shape == (512,)
    with pytest.raises(ValueError, match="depth"):
        layer_table(SmallCNN(1), torch.rand(1, 1, 16, 16), depth=0)
    with pytest.raises(ValueError, match="non-empty batch"):
        layer_table(SmallCNN(1), torch.rand(0, 1, 16, 16))


def test_count_macs_linear_and_grouped_conv():
    assert count_macs(nn.Linear(5, 7), torch.rand(4, 5)) == 35
    conv = nn.Conv2d(4, 8, 3, padding=1, groups=2)
    assert count_macs(conv, torch.rand(2, 4, 6, 6)) == 6 * 6 * 8 * (2 * 9)


def test_receptive_fields_small_cnn_and_resnets():
    sizes = [(r.size, r.jump) for r in receptive_fields(SmallCNN(1))]
    assert sizes == [(3, 1), (5, 2), (9, 4)]
    cifar = receptive_fields(resnet18_cifar())
    assert len(cifar) == 17 and cifar[-1].size == 109 and cifar[-1].jump == 8
    assert all("downsample" not in r.name for r in cifar)
    imagenet = receptive_fields(torchvision.models.resnet18(weights=None))
    assert imagenet[0].kernel == 7 and imagenet[1].name == "maxpool" and imagenet[-1].size == 435


def test_receptive_field_dilation():
    rows = receptive_fields(nn.Sequential(nn.Conv2d(1, 1, 3, dilation=2), nn.Conv2d(1, 1, 3)))
    assert [r.size for r in rows] == [5, 7]


@pytest.mark.parametrize("blocks, expected", [(1, 3), (2, 5), (3, 9)])
def test_gradient_receptive_field_matches_analytic(blocks, expected):
    model = SmallCNN(1, width=8)
    grad = gradient_receptive_field(model.features[:blocks], in_channels=1, image_size=25)
    assert grad.shape == (25, 25)
    assert support_size(grad) == (expected, expected)
    assert model.training


def test_gradient_receptive_field_rejects_flat_output_and_support_size_edge_cases():
    with pytest.raises(ValueError, match="spatial map"):
        gradient_receptive_field(SmallCNN(1, width=4), 1, 16)
    assert support_size(torch.zeros(4, 4)) == (0, 0)
    m = torch.zeros(6, 6)
    m[1, 2] = m[3, 4] = 1.0
    assert support_size(m) == (3, 3)
    with pytest.raises(ValueError, match="2-D"):
        support_size(torch.zeros(2, 2, 2))


def test_time_forward_returns_positive_seconds_and_restores_mode():
    model = SmallCNN(1, width=4)
    seconds = time_forward(model, torch.rand(4, 1, 16, 16), repeats=2)
    assert seconds > 0 and model.training
    with pytest.raises(ValueError):
        time_forward(model, torch.rand(4, 1, 16, 16), repeats=0)


def _simclr(head_layers=2):
    torch.manual_seed(0)
    return SimCLR(SmallCNN(1, width=4, out_dim=12), projection_dim=6, head_layers=head_layers)


def test_head_features_match_encoder_and_projector():
    model = _simclr()
    x, y = torch.rand(10, 1, 16, 16), torch.arange(10)
    h, z, labels = head_features(model, (x, y), batch_size=4)
    assert h.shape == (10, 12) and z.shape == (10, 6) and torch.equal(labels, y)
    torch.testing.assert_close(h, extract_features(model.encoder, x)[0])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(z, model.project(x))
    h0, z0, _ = head_features(_simclr(head_layers=0), x)
    torch.testing.assert_close(h0, z0)


def test_view_targets_effective_values():
    augment = BatchedAugment.simclr(8, rotation_degrees=10)
    params = augment.sample_params(200, torch.Generator().manual_seed(0))
    t = view_targets(params, 8, 8)
    assert all(v.shape == (200,) for v in t.values())
    boxes = params.crop_boxes(8, 8)
    torch.testing.assert_close(t["crop_area"], (boxes[:, 2] * boxes[:, 3]).float() / 64)
    no_jitter = ~params.jitter
    assert no_jitter.any() and (t["brightness"][no_jitter] == 1).all() and (t["hue"][no_jitter] == 0).all()
    assert (t["blur_sigma"][~params.blur] == 0).all()
    assert set(t["gray"].unique().tolist()) <= {0.0, 1.0}
    assert t["rotation"].abs().max() <= 10


def test_augmented_views_shapes_and_determinism():
    augment = BatchedAugment.digits(16)
    images = torch.rand(6, 1, 16, 16)
    views, targets = augmented_views(images, augment, n_views=2, seed=3, targets=["rotation", "crop_area"])
    assert views.shape == (12, 1, 16, 16) and set(targets) == {"rotation", "crop_area"}
    assert targets["rotation"].shape == (12,)
    again, _ = augmented_views(images, augment, n_views=2, seed=3)
    torch.testing.assert_close(views, again)
    with pytest.raises(ValueError, match="unknown targets"):
        augmented_views(images, augment, targets=["colour"])


def test_transformation_probe_reads_linear_signal_and_not_noise():
    g = torch.Generator().manual_seed(0)
    x_train, x_test = torch.randn(400, 10, generator=g), torch.randn(200, 10, generator=g)
    w = torch.randn(10, generator=g)
    assert transformation_probe(x_train, x_train @ w, x_test, x_test @ w) > 0.99
    noise_train, noise_test = torch.randn(400, generator=g), torch.randn(200, generator=g)
    assert transformation_probe(x_train, noise_train, x_test, noise_test) < 0.1
    pred = transformation_predictions(x_train, x_train @ w, x_test)
    assert pred.shape == (200,)
    with pytest.raises(ValueError, match="constant"):
        transformation_probe(x_train, torch.zeros(400), x_test, x_test @ w)
    with pytest.raises(ValueError, match="features"):
        transformation_probe(x_train, x_train @ w, x_test[:, :5], x_test @ w)


def test_compare_h_z_format_and_plot():
    model = _simclr()
    g = torch.Generator().manual_seed(1)
    train = (torch.rand(60, 1, 16, 16, generator=g), torch.arange(60) % 3)
    test = (torch.rand(30, 1, 16, 16, generator=g), torch.arange(30) % 3)
    augment = BatchedAugment.digits(16)
    vt = augmented_views(train[0], augment, seed=1, targets=["rotation"])
    ve = augmented_views(test[0], augment, seed=2, targets=["rotation"])
    reports = compare_h_z(model, train, test, fractions=(0.1,), seeds=(0, 1), views=(*vt, *ve))
    assert [r.name for r in reports] == ["h", "z"] and [r.dim for r in reports] == [12, 6]
    assert set(reports[0].probes) == {0.1} and 0 <= reports[0].knn <= 1
    assert set(reports[1].transforms) == {"rotation"} and np.isfinite(reports[1].transforms["rotation"])
    text = format_reports({"tiny": reports})
    assert "probe 10%" in text and "R2 rotation" in text and text.count("tiny") == 2
    axes = plot_reports({"tiny": reports, "again": reports})
    assert len(axes) == 2 and axes[0].get_title().startswith("linear probe")
    import matplotlib.pyplot as plt

    plt.close("all")


def test_compare_h_z_without_head_reports_the_same_numbers_twice():
    model = _simclr(head_layers=0)
    g = torch.Generator().manual_seed(2)
    train = (torch.rand(40, 1, 16, 16, generator=g), torch.arange(40) % 2)
    test = (torch.rand(20, 1, 16, 16, generator=g), torch.arange(20) % 2)
    h, z = compare_h_z(model, train, test, fractions=(0.25,), seeds=(0,))
    assert z.name == "z" and z.dim == h.dim == 12
    assert z.probes[0.25].mean == h.probes[0.25].mean and z.knn == h.knn and z.rank == h.rank
