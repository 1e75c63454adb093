"""Lesson 01 tasks: a batched colour jitter, and views designed so that no shortcut is left (checked by training)."""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as TF

from clcourse.grading.harness import (
    Case,
    Failure,
    Mistake,
    call_answer,
    case_seed,
    compare_with_reference,
    describe,
)
from clcourse.grading.registry import task

# ITU-R 601-2 luma, the weights torchvision's rgb_to_grayscale uses.
_LUMA = (0.2989, 0.587, 0.114)


# --- 01.color_jitter -------------------------------------------------------------------------

def _jitter_reference(x, brightness, saturation):
    """torchvision's per-sample brightness then saturation: the definition the batched version must match."""
    return torch.stack([
        TF.adjust_saturation(TF.adjust_brightness(img, float(b)), float(s))
        for img, b, s in zip(x, brightness, saturation)
    ])


def _per_sample(f):
    return f.to(torch.float64).view(-1, 1, 1, 1)


def _gray(x, weights=_LUMA):
    w = torch.tensor(weights, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _jitter_variant(x, brightness, saturation, *, clamp_brightness=True, clamp_end=True,
                    gray=_gray, factor=_per_sample, reverse_blend=False):
    y = x * factor(brightness).to(x.dtype)
    if clamp_brightness:
        y = y.clamp(0, 1)
    s = factor(saturation).to(x.dtype)
    g = gray(y)
    y = s * g + (1 - s) * y if reverse_blend else s * y + (1 - s) * g
    return y.clamp(0, 1) if clamp_end else y


_JITTER_MISTAKES = [
    Mistake("No clamping: torchvision clamps the image to [0, 1] after the brightness step and "
            "after the saturation blend (.clamp(0, 1)).",
            lambda x, b, s: _jitter_variant(x, b, s, clamp_brightness=False, clamp_end=False)),
    Mistake("Clamp after the brightness step too, not only at the end: the grayscale image of the "
            "saturation step is computed from the clamped, brightened image.",
            lambda x, b, s: _jitter_variant(x, b, s, clamp_brightness=False)),
    Mistake("The grayscale image uses the plain channel mean; torchvision uses the luma weights "
            "0.2989 R + 0.587 G + 0.114 B.",
            lambda x, b, s: _jitter_variant(x, b, s, gray=lambda y: y.mean(dim=1, keepdim=True))),
    Mistake("That blends towards the *mean* gray level of the image (a contrast change). Saturation "
            "blends each pixel with its own grayscale value.",
            lambda x, b, s: _jitter_variant(x, b, s, gray=lambda y: _gray(y).mean(dim=(1, 2, 3), keepdim=True))),
    Mistake("The saturation blend is reversed: the result is s * image + (1 - s) * gray, so that "
            "s = 1 keeps the image and s = 0 gives gray.",
            lambda x, b, s: _jitter_variant(x, b, s, reverse_blend=True)),
    Mistake("The factors broadcast along the image width instead of the batch: reshape a [B] "
            "factor to [B, 1, 1, 1] so that sample i gets factor i.",
            lambda x, b, s: _jitter_variant(x, b, s, factor=lambda f: f.to(torch.float64).view(1, 1, 1, -1))),
    Mistake("Every sample got the first sample's factors: each sample has its own factors.",
            lambda x, b, s: _jitter_variant(x, b, s, factor=lambda f: f[:1].to(torch.float64).view(1, 1, 1, 1))),
]


def _jitter_cases() -> list[Case]:
    g = torch.Generator().manual_seed(case_seed(1))

    def rand(*shape, low=0.0, high=1.0, dtype=torch.float32):
        return (low + (high - low) * torch.rand(*shape, generator=g, dtype=torch.float64)).to(dtype)

    bright = rand(6, 3, 5, 5, low=0.5, high=1.0)
    return [
        Case("B=4 random 3x5x7 images, random factors", (rand(4, 3, 5, 7), rand(4, low=0.3, high=1.7),
                                                         rand(4, low=0.0, high=2.0))),
        Case("B=3, brightness and saturation factors all 1 (the image must not change)",
             (rand(3, 3, 4, 4), torch.ones(3), torch.ones(3))),
        Case("B=2, saturation 0 (the result must be gray)", (rand(2, 3, 4, 4), rand(2, low=0.5, high=1.5),
                                                             torch.zeros(2))),
        Case("B=6 bright images, brightness 1.2..1.9 and saturation 1.5..2 (clamping matters)",
             (bright, rand(6, low=1.2, high=1.9), rand(6, low=1.5, high=2.0))),
        Case("B=8 images of width 8 (factors must follow the batch dimension)",
             (rand(8, 3, 6, 8), rand(8, low=0.3, high=1.7), rand(8, low=0.0, high=2.0))),
        Case("B=1, float64 image (the dtype must be kept)",
             (rand(1, 3, 3, 3, dtype=torch.float64), rand(1, low=0.5, high=1.5), rand(1, low=0.0, high=2.0))),
    ]


@task("01.color_jitter", "batched brightness + saturation jitter, one factor pair per sample, by broadcasting", 2, answer="color_jitter")
def check_color_jitter(answer) -> None:
    """Compare with torchvision.transforms.v2.functional, sample by sample."""
    compare_with_reference(
        answer, _jitter_cases(), _jitter_reference, _JITTER_MISTAKES,
        generic_hint="Per sample i: y = clamp(b_i * x_i); then clamp(s_i * y + (1 - s_i) * gray(y)).",
        error_hints=[("must match the size", "A [B] factor does not broadcast against [B, C, H, W]: "
                                             "reshape it with f.view(-1, 1, 1, 1).")],
    )


# --- 01.shortcut_free_views ------------------------------------------------------------------

# The design check trains the learner's views on data the lesson does not use (other seeds), at a scale a check
# can afford: 2,000 instance-coloured 16-px shapes, 300 SimCLR steps of 128 (about 10 s on one thread).
# Measured on this setting (shape probe, 6 classes, chance 16.7%): untrained 30.9%, crops alone 31.5%, colour
# alone 36.2-38.7%, crop + colour 45.4-46.4% (two seeds), so the threshold sits between the single shortcuts and
# their composition.
SHAPE_THRESHOLD = 0.42
_DESIGN_DATA = dict(train=(2000, 5), test=(1000, 6))  # (images, seed)
_DESIGN_TRAINING = dict(steps=300, width=16, batch_size=128, temperature=0.2, lr=2e-3, seed=0)


def _design_data():
    from clcourse.data import make_shapes
    from clcourse.lessons.augmentations import instance_colors

    (n_train, seed_train), (n_test, seed_test) = _DESIGN_DATA["train"], _DESIGN_DATA["test"]
    train = instance_colors(make_shapes(n_train, image_size=16, seed=seed_train), seed=seed_train)
    test = instance_colors(make_shapes(n_test, image_size=16, seed=seed_test), seed=seed_test)
    return train, test


def _is_batched_augment(augment) -> bool:
    """A BatchedAugment, here or in the grading worker (whose plain settings were copied)."""
    from clcourse.augment import BatchedAugment

    return isinstance(augment, BatchedAugment) or getattr(augment, "type_name", "") == "clcourse.augment.BatchedAugment"


def _keeps_a_shortcut(augment) -> tuple[str, str] | None:
    """(problem, hint) when a BatchedAugment leaves a shortcut that lesson 01 measured, else None.

    When grading, the settings come from the submission's worker: a pipeline that misreports them is not
    turned down here, and is then trained and measured like any other.
    """
    if not _is_batched_augment(augment):
        return None
    changes_colour = (augment.jitter_p > 0 and any(j > 0 for j in augment.jitter)) or augment.gray_p > 0
    moves_content = tuple(augment.crop_scale) != (1.0, 1.0) or augment.rotation_degrees > 0
    if not changes_colour and not moves_content:
        return ("two views of an image differ at most by a flip or a blur: they share colour, position and size",
                "An image is recognised by its colour and its layout without looking at the shape. Combine a "
                "random resized crop (it moves and rescales the content) with colour jitter and grayscale.")
    if not changes_colour:
        return ("the views keep their colours: every view of an image has the image's own colours",
                "With instance colours, colour identifies an image: crops alone let the encoder match views by "
                "colour, and lesson 01 measured its shape probe at the untrained level. Add colour jitter "
                "(jitter_p, jitter) and random grayscale (gray_p).")
    if not moves_content:
        return ("the views keep the shape's position and size: without crops both views show it at the same place",
                "Colour alone leaves the layout as a shortcut: lesson 01 measured only a few points of shape "
                "accuracy for it. Add a random resized crop (crop_scale below 1).")
    return None


def _design_hint(augment) -> str:
    if _is_batched_augment(augment) and augment.crop_scale[0] < 0.15:
        return ("Your crops can cover less than 15% of a 16-px image: a few pixels of a shape do not show which "
                "shape it is. Keep the smallest crop larger (lesson 01 used 30%).")
    if _is_batched_augment(augment) and augment.jitter_p < 0.5 and augment.gray_p < 0.3:
        return ("Colour changes too rarely: with jitter_p and gray_p small, most pairs of views still share the "
                "image's colours. Lesson 01 used jitter with p = 0.8 at strength 2 and grayscale with p = 0.5.")
    return ("Both shortcuts must go in the same pair of views: a crop that moves and rescales the shape, and a "
            "colour distortion strong and frequent enough that colour no longer identifies the image.")


@task("01.shortcut_free_views", "design: views whose shortcuts are gone, accepted when the shape probe rises", 2, answer="augment_for_shapes")
def check_shortcut_free_views(answer) -> None:
    """Train SimCLR on the learner's views (unprinted data) and accept when the shape probe clears the threshold."""
    from clcourse.lessons.augmentations import train_and_probe

    case = "your augment_for_shapes(16), 300 SimCLR steps on 2,000 instance-coloured shapes"
    augment = call_answer(answer, (16,), {}, case)
    if not callable(augment):
        raise Failure(case, f"augment_for_shapes(16) must return a batched augmentation (a callable), got "
                            f"{type(augment).__name__}",
                      hint="Return a clcourse.augment.BatchedAugment(16, ...), or any function "
                           "views = f(images, generator=g) over a batch [B, 3, H, W].")
    shortcut = _keeps_a_shortcut(augment)
    if shortcut:
        raise Failure(case, shortcut[0] + " (a shortcut lesson 01 measured; not trained again here)",
                      hint=shortcut[1])
    train, test = _design_data()
    probe = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    views = call_answer(lambda x: augment(x, generator=torch.Generator().manual_seed(1)), (probe,), {}, case)
    if not isinstance(views, torch.Tensor) or views.shape != (4, 3, 16, 16):
        raise Failure(case, f"the views must be a tensor [B, 3, 16, 16]; for a batch [4, 3, 16, 16] got "
                            f"{describe(views)}",
                      hint="Build the pipeline for the size you are given: BatchedAugment(size, ...).")
    result = train_and_probe(train, test, augment, factors=("shape", "color"), **_DESIGN_TRAINING)
    shape, colour = result.accuracy["shape"], result.accuracy["color"]
    if shape < SHAPE_THRESHOLD:
        raise Failure(case, f"the shape probe reached {100 * shape:.1f}% (colour probe {100 * colour:.1f}%); "
                            f"accepted from {100 * SHAPE_THRESHOLD:.0f}%",
                      expected=f"shape probe >= {100 * SHAPE_THRESHOLD:.0f}% (untrained encoder about 31%, crops "
                               f"alone about 32%, colour alone about 37%, lesson 01's crop + colour about 46%)",
                      received=f"shape {100 * shape:.1f}%, colour {100 * colour:.1f}%",
                      hint=_design_hint(augment))
