"""Tests of BatchedAugment.apply_dense / dense: masks move with their images, against torchvision."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from clcourse.augment import BatchedAugment
from clcourse.data import IGNORE_INDEX

NEAREST_EXACT = TF.InterpolationMode.NEAREST_EXACT
NOTHING = dict(crop_scale=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0)
GEOMETRY = {
    "crop": dict(crop_scale=(0.08, 1.0)),
    "flip": dict(flip_p=0.5),
    "rotation": dict(rotation_degrees=40.0),
    "all": dict(crop_scale=(0.08, 1.0), flip_p=0.5, rotation_degrees=40.0),
}


def reference_masks(masks: torch.Tensor, params, aug: BatchedAugment) -> torch.Tensor:
    """The masks moved by torchvision's functional ops, one sample at a time."""
    _, h, w = masks.shape
    outs = []
    for i, (top, left, height, width) in enumerate(params.crop_boxes(h, w).tolist()):
        y = TF.resized_crop(masks[i][None], top, left, height, width, [aug.size, aug.size],
                            interpolation=NEAREST_EXACT)
        if params.flip[i]:
            y = TF.horizontal_flip(y)
        if aug.rotation_degrees > 0:
            y = TF.rotate(y, float(params.rotation[i]), interpolation=TF.InterpolationMode.NEAREST, fill=IGNORE_INDEX)
        outs.append(y[0])
    return torch.stack(outs)


def _batch(n: int, channels: int, size: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g), torch.randint(0, classes, (n, size, size), generator=g)


@pytest.mark.parametrize("op", sorted(GEOMETRY))
@pytest.mark.parametrize(("in_size", "size"), [(32, 32), (20, 32), (48, 24), (33, 17)])
def test_masks_equal_torchvision_exactly(op, in_size, size):
    # 20 -> 32 only enlarges (the images' grid_sample path), 48 -> 24 mostly shrinks (antialiased path).
    images, masks = _batch(32, 3, in_size, 7, seed=in_size)
    aug = BatchedAugment(size, **{**NOTHING, **GEOMETRY[op]})
    params = aug.sample_params(32, torch.Generator().manual_seed(1))
    out_images, out_masks = aug.apply_dense(images, masks, params)
    assert out_masks.dtype == torch.int64 and out_masks.shape == (32, size, size)
    assert torch.equal(out_masks, reference_masks(masks, params, aug))
    assert torch.equal(out_images, aug.apply(images, params))
    assert (out_masks == IGNORE_INDEX).any() == (op in ("rotation", "all"))


@pytest.mark.parametrize("axis", ["columns", "rows"])
@pytest.mark.parametrize(("in_size", "size", "flip_p"), [(20, 32, 0.5), (48, 24, 0.5), (32, 32, 0.0)])
def test_mask_class_is_the_class_where_the_image_sampled(axis, in_size, size, flip_p):
    # Channel 0 of the image is the mask (0 or 1) as stripes along one axis, at least 5 pixels wide.
    # Each resized image pixel is a mean of the source pixels around its sample point with weights
    # symmetric about it (bilinear: 2 pixels; antialiased: up to 2 * scale + 1 <= 5), so it sees at
    # most one edge and its larger share is the class of the source pixel nearest the sample, which
    # the mask must take. The outer output pixels are left out: there the crop cuts the weights.
    g = torch.Generator().manual_seed(in_size)
    widths = torch.randint(5, 9, (64, in_size), generator=g).cumsum(1)  # stripe ends
    stripes = (torch.searchsorted(widths, torch.arange(in_size).expand(64, -1).contiguous(), right=True) % 2)
    masks = (stripes[:, None, :] if axis == "columns" else stripes[:, :, None]).expand(-1, in_size, in_size)
    masks = masks.contiguous()
    images = torch.stack([masks.float(), torch.rand(64, in_size, in_size, generator=g)], dim=1)[:, [0, 1, 1]]
    aug = BatchedAugment(size, **{**NOTHING, "crop_scale": (0.08, 1.0), "flip_p": flip_p})
    out_images, out_masks = aug.dense(images, masks, generator=torch.Generator().manual_seed(2))
    share, out_masks = out_images[:, 0, 1:-1, 1:-1], out_masks[:, 1:-1, 1:-1]
    decided = (share - 0.5).abs() > 1e-5
    assert decided.float().mean() > 0.9 and out_masks.unique().tolist() == [0, 1]
    assert torch.equal(out_masks[decided], (share[decided] > 0.5).long())


def test_colour_ops_leave_masks_unchanged():
    images, masks = _batch(16, 3, 32, 5, seed=0)
    aug = BatchedAugment(32, **{**NOTHING, "jitter": (0.8, 0.8, 0.8, 0.2), "jitter_p": 1.0, "gray_p": 0.5,
                                "blur_p": 1.0})
    out_images, out_masks = aug.dense(images, masks, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out_masks, masks) and out_masks.data_ptr() != masks.data_ptr()
    assert not torch.allclose(out_images, images)


def test_dense_draws_parameters_like_forward_and_leaves_inputs_untouched():
    images, masks = _batch(16, 1, 40, 3, seed=1)
    before_images, before_masks = images.clone(), masks.clone()
    aug = BatchedAugment.digits(16, flip_p=0.5)
    out_images, out_masks = aug.dense(images, masks, generator=torch.Generator().manual_seed(3))
    params = aug.sample_params(16, torch.Generator().manual_seed(3))
    expected_images, expected_masks = aug.apply_dense(images, masks, params)
    assert torch.equal(out_images, expected_images) and torch.equal(out_masks, expected_masks)
    assert torch.equal(out_images, aug(images, generator=torch.Generator().manual_seed(3)))
    assert out_images.shape == (16, 1, 16, 16) and out_masks.shape == (16, 16, 16)
    assert set(out_masks.unique().tolist()) <= {0, 1, 2, IGNORE_INDEX}
    assert torch.equal(images, before_images) and torch.equal(masks, before_masks)


@pytest.mark.parametrize(
    "masks, error, match",
    [
        (torch.zeros(4, 16, 16), ValueError, r"masks must be int64 class ids \[B, H, W\].*got torch.float32"),
        (torch.zeros(4, 16, 16, dtype=torch.uint8), ValueError, "int64"),
        (torch.zeros(4, 16, 15, dtype=torch.long), ValueError, r"\[B, H, W\] = \[4, 16, 16\].*got \[4, 16, 15\]"),
        (torch.zeros(4, 1, 16, 16, dtype=torch.long), ValueError, r"\[B, H, W\] = \[4, 16, 16\]"),
        (torch.zeros(3, 16, 16, dtype=torch.long), ValueError, r"got \[3, 16, 16\]"),
        (torch.zeros(4, 16, 16, dtype=torch.long).numpy(), TypeError, "got ndarray"),
    ],
    ids=["float", "uint8", "width", "4d", "batch", "ndarray"],
)
def test_bad_masks_raise_clear_errors(masks, error, match):
    aug = BatchedAugment.simclr(16)
    with pytest.raises(error, match=match):
        aug.dense(torch.rand(4, 3, 16, 16), masks)


def test_bad_images_and_params_raise():
    aug = BatchedAugment.simclr(16)
    masks = torch.zeros(2, 16, 16, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        aug.dense(torch.rand(2, 16, 16), masks)
    with pytest.raises(ValueError, match="params are for 3 samples but images has 2"):
        aug.apply_dense(torch.rand(2, 3, 16, 16), masks, aug.sample_params(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_masks_on_gpu_as_on_cpu():
    images, masks = _batch(32, 3, 40, 7, seed=5)
    aug = BatchedAugment.simclr(32, rotation_degrees=30)
    on_cpu = aug.dense(images, masks, generator=torch.Generator().manual_seed(0))
    on_gpu = aug.dense(images.cuda(), masks.cuda(), generator=torch.Generator().manual_seed(0))
    assert on_gpu[1].device.type == "cuda"
    assert torch.equal(on_gpu[1].cpu(), on_cpu[1])
    torch.testing.assert_close(on_gpu[0].cpu(), on_cpu[0], atol=1e-5, rtol=0)
