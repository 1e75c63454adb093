"""Tests of clcourse.inspection: layer tables, MACs, receptive fields and timing."""

import pytest
import torch
import torchvision
from torch import nn

from clcourse.encoders import SmallCNN, resnet18_cifar
from clcourse.inspection import (
    count_macs,
    format_layer_table,
    gradient_receptive_field,
    layer_table,
    receptive_fields,
    support_size,
    time_forward,
)


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
