"""Tests of clcourse.augment: the per-sample pipelines and the batched one against torchvision."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from clcourse.augment import AugmentParams, BatchedAugment, digits_transform, simclr_transform

ATOL = 1e-5  # float32; the measured worst case is about 5e-6 (see BatchedAugment.apply)
BILINEAR = TF.InterpolationMode.BILINEAR

# Every op off: each test below switches one on.
NOTHING = dict(crop_scale=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0)
ONE_OP = {
    "crop": dict(crop_scale=(0.08, 1.0)),
    "flip": dict(flip_p=0.5),
    "brightness": dict(jitter=(0.8, 0, 0, 0), jitter_p=0.8),
    "contrast": dict(jitter=(0, 0.8, 0, 0), jitter_p=0.8),
    "saturation": dict(jitter=(0, 0, 0.8, 0), jitter_p=0.8),
    "hue": dict(jitter=(0, 0, 0, 0.5), jitter_p=0.8),
    "gray": dict(gray_p=0.5),
    "blur": dict(blur_p=0.5),
    "rotation": dict(rotation_degrees=30.0),
}


def reference(x: torch.Tensor, params: AugmentParams, aug: BatchedAugment) -> torch.Tensor:
    """The batched pipeline written with torchvision's per-image functional ops, one sample at a time."""
    _, c, h, w = x.shape
    outs = []
    for i, (top, left, height, width) in enumerate(params.crop_boxes(h, w).tolist()):
        y = TF.resized_crop(x[i], top, left, height, width, [aug.size, aug.size], interpolation=BILINEAR,
                            antialias=True)
        if params.flip[i]:
            y = TF.horizontal_flip(y)
        if aug.rotation_degrees > 0:
            # fill=0 is RandomRotation's default (and differs from rotate's fill=None at the border).
            y = TF.rotate(y, float(params.rotation[i]), interpolation=BILINEAR, fill=0)
        if params.jitter[i]:
            b, cn, s, hue = aug.jitter
            if b > 0:
                y = TF.adjust_brightness(y, float(params.brightness[i]))
            if cn > 0:
                y = TF.adjust_contrast(y, float(params.contrast[i]))
            if s > 0:
                y = TF.adjust_saturation(y, float(params.saturation[i]))
            if hue > 0:
                y = TF.adjust_hue(y, float(params.hue[i]))
        if params.gray[i]:
            y = TF.rgb_to_grayscale(y, num_output_channels=c)
        if params.blur[i]:
            sigma = float(params.blur_sigma[i])
            y = TF.gaussian_blur(y, [aug.blur_kernel] * 2, [sigma, sigma])
        outs.append(y)
    return torch.stack(outs)


def check_matches_reference(aug: BatchedAugment, x: torch.Tensor, seed: int) -> AugmentParams:
    params = aug.sample_params(len(x), torch.Generator().manual_seed(seed))
    out = aug.apply(x, params)
    expected = reference(x, params, aug)
    assert out.shape == expected.shape == (len(x), x.shape[1], aug.size, aug.size)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    return params


# --- per-sample pipelines -------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_simclr_transform_shapes_and_range(channels):
    torch.manual_seed(0)
    transform = simclr_transform(24)
    for _ in range(10):
        y = transform(torch.rand(channels, 40, 32))
        assert y.shape == (channels, 24, 24) and y.dtype == torch.float32
        assert 0 <= y.min() and y.max() <= 1 + 1e-6


def test_digits_transform_shapes_and_range():
    torch.manual_seed(0)
    transform = digits_transform(16)
    for _ in range(10):
        y = transform(torch.rand(1, 8, 8))
        assert y.shape == (1, 16, 16)
        assert 0 <= y.min() and y.max() <= 1 + 1e-6


# --- batched == per-sample torchvision ------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_matches_torchvision_all_ops(seed):
    x = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(100 + seed))
    check_matches_reference(BatchedAugment.simclr(32, rotation_degrees=20.0), x, seed)


@pytest.mark.parametrize("op", sorted(ONE_OP))
def test_batched_matches_torchvision_each_op_alone(op):
    # Quantised pixels give grey pixels and ties between channels: the hue formula's edge cases.
    x = torch.randint(0, 5, (24, 3, 32, 32), generator=torch.Generator().manual_seed(7)) / 4
    x[:4] = torch.rand(4, 3, 32, 32)
    check_matches_reference(BatchedAugment(32, **{**NOTHING, **ONE_OP[op]}), x, seed=3)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("in_size", "size"), [(32, 32), (20, 32), (48, 24)])
def test_batched_matches_torchvision_resizing(channels, in_size, size):
    # 20 -> 32 only enlarges (grid_sample path); 48 -> 24 mostly shrinks (antialiased matrix path).
    x = torch.rand(16, channels, in_size, in_size, generator=torch.Generator().manual_seed(5))
    check_matches_reference(BatchedAugment.simclr(size), x, seed=4)


def test_batched_digits_matches_torchvision():
    x = torch.rand(24, 1, 16, 16, generator=torch.Generator().manual_seed(6))
    aug = BatchedAugment.digits(16)
    assert aug.flip_p == 0 and aug.rotation_degrees == 15
    check_matches_reference(aug, x, seed=5)


def test_batched_matches_torchvision_float64_non_square():
    x = torch.rand(12, 3, 24, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    check_matches_reference(BatchedAugment.simclr(32, rotation_degrees=10.0), x, seed=6)


# --- randomness ------------------------------------------------------------------------------------


def test_reproducible_from_generator_and_seed_dependent():
    x = torch.rand(8, 3, 32, 32)
    aug = BatchedAugment.simclr(32)
    a = aug(x, generator=torch.Generator().manual_seed(0))
    b = aug(x, generator=torch.Generator().manual_seed(0))
    c = aug(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    params = aug.sample_params(8, torch.Generator().manual_seed(0))
    assert torch.equal(a, aug.apply(x, params))


def test_every_sample_gets_its_own_parameters():
    aug = BatchedAugment.simclr(32)
    params = aug.sample_params(4000, torch.Generator().manual_seed(0))
    for name in ("brightness", "contrast", "saturation", "hue", "blur_sigma"):
        assert getattr(params, name).unique().numel() > 3950, name  # float32 draws collide rarely
    for name, p in (("flip", 0.5), ("jitter", 0.8), ("gray", 0.2), ("blur", 0.5)):
        assert abs(getattr(params, name).float().mean().item() - p) < 0.03, name
    assert params.crop_boxes(32, 32).unique(dim=0).shape[0] > 1000

    one_image = torch.rand(1, 3, 32, 32).expand(16, -1, -1, -1)
    views = aug(one_image, generator=torch.Generator().manual_seed(0)).flatten(1)
    assert torch.cdist(views, views).add(torch.eye(16)).min() > 0  # no two views alike


def test_sampled_ranges():
    aug = BatchedAugment(32, jitter=(0.4, 0.3, 0.2, 0.1), blur_sigma=(0.5, 1.5), rotation_degrees=12)
    p = aug.sample_params(2000, torch.Generator().manual_seed(1))
    assert 0.6 <= p.brightness.min() and p.brightness.max() <= 1.4
    assert 0.7 <= p.contrast.min() and p.contrast.max() <= 1.3
    assert 0.8 <= p.saturation.min() and p.saturation.max() <= 1.2
    assert -0.1 <= p.hue.min() and p.hue.max() <= 0.1
    assert 0.5 <= p.blur_sigma.min() and p.blur_sigma.max() <= 1.5
    assert -12 <= p.rotation.min() and p.rotation.max() <= 12
    boxes = p.crop_boxes(32, 32)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    area = (h * w).float() / 32**2
    assert area.min() >= 0.08 * 0.8 and area.max() <= 1  # rounding to whole pixels
    assert (w / h).min() >= 3 / 4 * 0.85 and (w / h).max() <= 4 / 3 / 0.85


def test_crop_boxes_fall_back_like_torchvision():
    # A 20 x 40 image cannot hold a box of its whole area with ratio <= 4/3: torchvision then
    # takes the central crop with the ratio clamped to 4/3.
    p = BatchedAugment(32, crop_scale=(1.0, 1.0)).sample_params(5, torch.Generator().manual_seed(0))
    assert p.crop_boxes(20, 40).tolist() == [[0, 6, 20, 27]] * 5
    assert p.crop_boxes(32, 32).tolist() == [[0, 0, 32, 32]] * 5


# --- knobs, identity, input handling ---------------------------------------------------------------


def test_disabled_ops_are_identity_and_input_untouched():
    x = torch.rand(8, 3, 32, 32)
    before = x.clone()
    out = BatchedAugment(32, **NOTHING, jitter=(0.4, 0.4, 0.4, 0.1), rotation_degrees=0)(x)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    out = BatchedAugment(32, **{**NOTHING, "jitter_p": 1.0}, jitter=(0, 0, 0, 0))(x)
    assert torch.equal(out, x)
    BatchedAugment.simclr(32, rotation_degrees=10)(x)
    assert torch.equal(x, before)


def test_disabled_crop_still_resizes():
    x = torch.rand(4, 3, 16, 16)
    out = BatchedAugment(32, **NOTHING)(x)
    expected = TF.resize(x, [32, 32], interpolation=BILINEAR, antialias=True)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_non_contiguous_input():
    x = torch.rand(8, 32, 32, 3).permute(0, 3, 1, 2)  # channels-last view
    aug = BatchedAugment.simclr(32, rotation_degrees=10)
    params = aug.sample_params(8, torch.Generator().manual_seed(0))
    # the strided input may take other kernels (interpolation, blur): the same tolerance as against torchvision
    torch.testing.assert_close(aug.apply(x, params), aug.apply(x.contiguous(), params), atol=ATOL, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_views_on_gpu_as_on_cpu():
    x = torch.rand(16, 3, 40, 40)
    aug = BatchedAugment.simclr(32, rotation_degrees=10)
    on_cpu = aug(x, generator=torch.Generator().manual_seed(0))
    on_gpu = aug(x.cuda(), generator=torch.Generator().manual_seed(0))
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=ATOL, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_output_in_unit_range(channels):
    aug = BatchedAugment(32, jitter=(0.9, 0.9, 0.9, 0.5), jitter_p=1.0, blur_p=1.0, rotation_degrees=45)
    out = aug(torch.rand(64, channels, 32, 32), generator=torch.Generator().manual_seed(0))
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize(
    "bad",
    [torch.rand(3, 32, 32), torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8), torch.rand(2, 2, 8, 8)],
    ids=["3d", "uint8", "2-channels"],
)
def test_bad_input_raises_clear_error(bad):
    aug = BatchedAugment.simclr(32)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        aug(bad)


def test_bad_input_messages():
    aug = BatchedAugment.simclr(32)
    expected = r"expected images \[B, C, H, W\] as a floating-point tensor in \[0, 1\], got torch.int64"
    with pytest.raises(ValueError, match=expected):
        aug(torch.zeros(2, 3, 4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="got ndarray"):
        aug(torch.rand(2, 3, 4, 4).numpy())
    with pytest.raises(ValueError, match="params are for 3 samples but x has 2"):
        aug.apply(torch.rand(2, 3, 8, 8), aug.sample_params(3))


@pytest.mark.parametrize(
    "knobs",
    [dict(crop_scale=(0.5, 0.2)), dict(crop_ratio=(0.0, 1.0)), dict(flip_p=1.5), dict(gray_p=-0.1),
     dict(jitter=(0.4, 0.4, 0.4, 0.7)), dict(jitter=(0.4, 0.4)), dict(jitter=(-0.1, 0, 0, 0)),
     dict(blur_kernel=4), dict(blur_sigma=(0.0, 1.0)), dict(size=0)],
)
def test_bad_knobs_raise(knobs):
    with pytest.raises(ValueError):
        BatchedAugment(**{"size": 32, **knobs})
