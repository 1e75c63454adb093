import pytest
import torch

from clcourse.encoders import MLP, PredictionHead, ProjectionHead, ResNet18, SmallCNN, resnet18_cifar


@pytest.mark.parametrize("channels, size", [(1, 16), (3, 32)])
def test_small_cnn_shapes(channels, size):
    enc = SmallCNN(channels, width=8, out_dim=24)
    out = enc(torch.rand(5, channels, size, size))
    assert out.shape == (5, 24) and enc.out_dim == 24


@pytest.mark.parametrize("size", [8, 16])
def test_small_cnn_pool_size_keeps_a_grid(size):
    enc = SmallCNN(1, width=8, out_dim=24, pool_size=2)
    assert enc.features(torch.rand(3, 1, size, size)).shape == (3, 4 * 8 * 2 * 2)
    assert enc(torch.rand(3, 1, size, size)).shape == (3, 24)


def test_small_cnn_rejects_bad_pool_size():
    with pytest.raises(ValueError, match="pool_size must be >= 1"):
        SmallCNN(1, pool_size=0)


def test_small_cnn_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r"expected images \[B, 1, H, W\]"):
        SmallCNN(1)(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="floating-point"):
        SmallCNN(1)(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))


def test_resnet18_cifar_stem():
    enc = resnet18_cifar()
    assert enc.net.conv1.kernel_size == (3, 3) and enc.net.conv1.stride == (1, 1)
    assert isinstance(enc.net.maxpool, torch.nn.Identity)
    assert enc(torch.rand(2, 3, 32, 32)).shape == (2, 512) and enc.out_dim == 512


def test_resnet18_imagenet_stem_downsamples_and_takes_any_channels():
    enc = ResNet18(in_channels=1, stem="imagenet")
    assert enc.net.conv1.kernel_size == (7, 7) and enc.net.conv1.stride == (2, 2)
    assert not isinstance(enc.net.maxpool, torch.nn.Identity)
    assert enc(torch.rand(2, 1, 96, 96)).shape == (2, 512)
    assert ResNet18(stem="imagenet").net.conv1.in_channels == 3
    with pytest.raises(ValueError, match="stem must be one of"):
        ResNet18(stem="tiny")
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        enc(torch.rand(2, 3, 96, 96))


def test_mlp_flattens_images():
    mlp = MLP(64, (32,), 10)
    assert mlp(torch.rand(4, 1, 8, 8)).shape == (4, 10)
    with pytest.raises(ValueError, match="64 features"):
        mlp(torch.rand(4, 65))


@pytest.mark.parametrize("layers, n_linear, out", [(0, 0, 16), (1, 1, 8), (2, 2, 8), (3, 3, 8)])
def test_projection_head_depths(layers, n_linear, out):
    head = ProjectionHead(16, hidden_dim=32, out_dim=8, num_layers=layers)
    assert sum(isinstance(m, torch.nn.Linear) for m in head.modules()) == n_linear
    assert head(torch.rand(4, 16)).shape == (4, out) and head.out_dim == out


def test_projection_head_ends_without_activation():
    head = ProjectionHead(16, out_dim=8)
    assert isinstance(head.net[-1], torch.nn.Linear)
    # a nonlinear head maps -h to something other than -g(h) (up to bias), a linear one does not
    h = torch.randn(6, 16)
    head.eval()
    bias = head.net[-1].bias
    assert not torch.allclose(head(-h) - bias, -(head(h) - bias), atol=1e-4)


def test_prediction_head_keeps_dimension():
    assert PredictionHead(8, 16)(torch.rand(3, 8)).shape == (3, 8)


def test_projection_head_output_batch_norm_ends_in_a_plain_batch_norm_after_a_linear_without_bias():
    head = ProjectionHead(16, out_dim=8, output_batch_norm=True)
    linear, norm = head.net[-2], head.net[-1]
    assert linear.bias is None and isinstance(norm, torch.nn.BatchNorm1d) and not norm.affine
    z = head(torch.randn(32, 16))
    assert torch.allclose(z.mean(dim=0), torch.zeros(8), atol=1e-5)
