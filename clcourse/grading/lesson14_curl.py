"""Lesson 14 tasks: CURL's crops of a frame stack, and a derivation of its bilinear loss in closed form.

[1] Srinivas, Laskin, Abbeel, CURL: Contrastive Unsupervised Representations for Reinforcement Learning, ICML 2020.
"""

from __future__ import annotations

import math
import numbers
import random

import torch
import torch.nn.functional as F

from clcourse.grading.harness import Case, Mistake, case_seed, compare_with_reference, describe, first_difference
from clcourse.grading.registry import task
from clcourse.losses import bilinear_info_nce
from clcourse.methods.curl import center_crop

# --- 14.crop ---------------------------------------------------------------------------------


def _crop_reference(frames: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """Row b's window frames[b, :, top[b]:top[b] + size, left[b]:left[b] + size], every channel of the stack cut
    at the same place. Shapes: frames [B, C, H, W], top and left int64 [B]; returns [B, C, size, size] of the
    frames' dtype (what clcourse.methods.curl.random_crop returns once it has drawn the corners)."""
    return torch.stack([f[:, t:t + size, l:l + size] for f, t, l in zip(frames, top.tolist(), left.tolist())])


def _crop_variant(frames, top, left, size, *, slip):
    """The crop with one slip; see _CROP_MISTAKES for each ``slip``."""
    b, c, h, w = frames.shape
    t, l_ = top.tolist(), left.tolist()
    if slip == "one_window":
        return torch.stack([f[:, t[0]:t[0] + size, l_[0]:l_[0] + size] for f in frames])
    if slip == "swapped":
        return torch.stack([f[:, lc:lc + size, tr:tr + size] for f, tr, lc in zip(frames, t, l_)])
    if slip == "transposed":
        return _crop_reference(frames, top, left, size).transpose(-1, -2)
    if slip == "short":
        return torch.stack([f[:, tr:tr + size - 1, lc:lc + size - 1] for f, tr, lc in zip(frames, t, l_)])
    if slip == "newest_only":
        return _crop_reference(frames, top, left, size)[:, -3:]
    if slip == "centred":
        half = size // 2
        return torch.stack([f[:, max(tr - half, 0):max(tr - half, 0) + size, max(lc - half, 0):max(lc - half, 0) + size]
                            for f, tr, lc in zip(frames, t, l_)])
    if slip == "first_row":
        return torch.stack([frames[0, :, tr:tr + size, lc:lc + size] for tr, lc in zip(t, l_)])
    if slip == "resized":
        return F.interpolate(frames.float(), size=(size, size), mode="nearest").to(frames.dtype)
    if slip == "centre_crop":
        return center_crop(frames, size)
    if slip == "float":
        return _crop_reference(frames, top, left, size).float()
    raise ValueError(slip)


_CROP_MISTAKES = [
    Mistake("Every row was cut with the first row's corner (top[0], left[0]): each observation of the batch has its "
            "own window, row b at (top[b], left[b]). One window for the whole batch would make every crop move the "
            "picture the same way, and the augmentation would teach nothing.",
            lambda *a: _crop_variant(*a, slip="one_window")),
    Mistake("Rows and columns are swapped: top is the first index of the window along H (the rows, dimension 2), "
            "left along W (the columns, dimension 3): frames[b, :, top:top + size, left:left + size].",
            lambda *a: _crop_variant(*a, slip="swapped")),
    Mistake("The window came out transposed (its rows are the frame's columns): cut it with slices, "
            "frames[b, :, top:top + size, left:left + size], and do not permute its last two dimensions.",
            lambda *a: _crop_variant(*a, slip="transposed")),
    Mistake("The window is one pixel too small: Python slices exclude their end, so top:top + size already holds "
            "exactly size rows; do not subtract 1.", lambda *a: _crop_variant(*a, slip="short")),
    Mistake("Only the newest frame (the last 3 channels) was kept: CURL crops the whole stack, every frame at the "
            "same place, so that the crop still shows the motion from frame to frame. Keep all C channels.",
            lambda *a: _crop_variant(*a, slip="newest_only")),
    Mistake("(top, left) were read as the window's centre: they are its top-left corner, and the window covers "
            "rows top .. top + size - 1 and columns left .. left + size - 1.",
            lambda *a: _crop_variant(*a, slip="centred")),
    Mistake("Every window was cut from the first observation (frames[0]): row b's window comes from row b's frames.",
            lambda *a: _crop_variant(*a, slip="first_row")),
    Mistake("The frames were resized to size x size, not cut: a crop keeps the pixels' scale and drops the border; "
            "resizing keeps everything and changes the scale.", lambda *a: _crop_variant(*a, slip="resized")),
    Mistake("The central window was taken whatever the corners: that is what the agent sees when it acts, not the "
            "random crop of the updates. Use each row's (top[b], left[b]).",
            lambda *a: _crop_variant(*a, slip="centre_crop")),
    Mistake("The crops were converted to float: cut the frames as they are, a crop is a window of the same values in "
            "the same dtype (the agent crops its stored uint8 frames and converts only the crop).",
            lambda *a: _crop_variant(*a, slip="float")),
]


def _crop_cases() -> list[Case]:
    g = torch.Generator().manual_seed(case_seed(140))

    def case(batch, channels, side, size, dtype=torch.uint8, corners=None):
        if dtype == torch.uint8:
            frames = torch.randint(0, 256, (batch, channels, side, side), generator=g, dtype=torch.uint8)
        else:  # every value distinct: any wrong pixel shows
            frames = torch.randperm(batch * channels * side * side, generator=g).to(dtype).view(batch, channels, side,
                                                                                                 side)
        if corners is None:
            top = torch.randint(0, side - size + 1, (batch,), generator=g)
            left = torch.randint(0, side - size + 1, (batch,), generator=g)
        else:
            top, left = (torch.tensor(v, dtype=torch.long) for v in corners)
        return frames, top, left, size

    return [
        Case("B=2 stacks of 3 RGB frames (C=9) of 6 x 6 float32 pixels, size 4, corners top (0, 2), left (1, 0)",
             case(2, 9, 6, 4, torch.float32, corners=([0, 2], [1, 0]))),
        Case("B=4 stacks (C=9) of 12 x 12 uint8 frames, size 9, random corners (keep the dtype)", case(4, 9, 12, 9)),
        Case("B=3 stacks of 2 RGB frames (C=6) of 10 x 10 float64 pixels, size 7, corners at the far edges "
             "(top 3, left 3)", case(3, 6, 10, 7, torch.float64, corners=([3, 3, 0], [3, 0, 3]))),
        Case("B=5, C=9, 8 x 8 float32, size 8 (the whole frame: every corner is 0)",
             case(5, 9, 8, 8, torch.float32, corners=([0] * 5, [0] * 5))),
        Case("B=6, C=9, 24 x 24 uint8 (the lesson's frames), size 23, random corners", case(6, 9, 24, 23)),
        Case("B=2, C=3 (one frame), 9 x 9 float32, size 1", case(2, 3, 9, 1, torch.float32)),
    ]


@task("14.crop", "CURL's crops: one window per observation, the same for every frame of its stack", 2,
      answer="crop_windows")
def check_crop(answer) -> None:
    """Compare with the windows random_crop cuts, on stacks of distinct values so that any wrong pixel shows."""
    compare_with_reference(
        answer, _crop_cases(), _crop_reference, _CROP_MISTAKES,
        generic_hint="For each row b: frames[b, :, top[b]:top[b] + size, left[b]:left[b] + size] (all C channels, "
                     "so every frame of the stack is cut at the same place); stack the B windows into "
                     "[B, C, size, size].",
        error_hints=[(r"only integer tensors of a single element|only one element tensors",
                      "top and left are tensors of B corners, one per row: index them per row, e.g. "
                      "zip(frames, top.tolist(), left.tolist())."),
                     (r"stack expects each tensor to be equal size",
                      "The windows came out of different sizes: one ran past the frame's edge, where a slice stops "
                      "short. Python slices exclude their end: top:top + size holds exactly size rows, and a corner "
                      "is at most H - size, so no window of the right size leaves the frame.")],
    )


# --- 14.closed_form --------------------------------------------------------------------------


def _closed_form(batch: int, diagonal: float) -> float:
    """CURL's loss when the B queries are orthonormal, each key is its query and W = diagonal * I: every logit
    q_i^T W k_j is diagonal on the diagonal and 0 off it, so l_i = -log(e^c / (e^c + (B - 1))) =
    log(1 + (B - 1) e^{-c}), the same for every row (log1p and the exponent kept apart, so that huge batches and
    diagonals stay exact)."""
    return math.log1p(math.exp(math.log(batch - 1) - diagonal)) if diagonal < 700 else (batch - 1) * math.exp(-diagonal)


def _closed_form_reference(batch: int, diagonal: float) -> float:
    """The closed form, after checking it against clcourse.losses.bilinear_info_nce on one-hot codes when the
    batch is small enough to build."""
    value = _closed_form(batch, diagonal)
    if batch <= 512:
        codes = torch.eye(batch, dtype=torch.float64)
        loss = bilinear_info_nce(codes, codes, diagonal * torch.eye(batch, dtype=torch.float64)).item()
        if not math.isclose(loss, value, rel_tol=1e-9, abs_tol=1e-12):
            raise RuntimeError(f"the closed form {value} differs from bilinear_info_nce's {loss} at B={batch}, "
                               f"c={diagonal}")
    return value


def _closed_variant(batch, diagonal, *, slip):
    b, c = batch, diagonal
    return {
        "no_weight": lambda: math.log(b),
        "positive_counted_twice": lambda: math.log1p(b * math.exp(-c)),
        "no_positive_below": lambda: math.log(b - 1) - c,
        "simclr_negatives": lambda: math.log1p((2 * b - 2) * math.exp(-c)),
        "summed": lambda: b * math.log1p((b - 1) * math.exp(-c)),
        "no_exponential": lambda: math.log(b) - c,
        "sign": lambda: math.log1p((b - 1) * math.exp(c)),
        "probability": lambda: math.exp(c) / (math.exp(c) + b - 1),
    }[slip]()


_CLOSED_MISTAKES = [
    Mistake("log B is the loss when every logit is equal (W = 0, or all codes alike): here the positive's logit is c "
            "and the others 0, so the softmax is not uniform.", lambda *a: _closed_variant(*a, slip="no_weight")),
    Mistake("The positive was counted among the negatives too: the denominator sums over the B keys once, e^c for "
            "the positive and e^0 = 1 for each of the B - 1 others: log(1 + (B - 1) e^-c).",
            lambda *a: _closed_variant(*a, slip="positive_counted_twice")),
    Mistake("The positive is missing from the denominator: InfoNCE's softmax runs over all B keys, the positive "
            "included, so the loss is log((e^c + B - 1) / e^c), never below 0.",
            lambda *a: _closed_variant(*a, slip="no_positive_below")),
    Mistake("That is NT-Xent's count (lesson 03), 2B - 2 negatives from both views: CURL's query i is compared with "
            "the B keys only (the momentum encoder's codes of the other crops), so B - 1 negatives.",
            lambda *a: _closed_variant(*a, slip="simclr_negatives")),
    Mistake("That is the sum over the batch: CURL's loss is the mean of the B rows' losses (every row has the same "
            "one here).", lambda *a: _closed_variant(*a, slip="summed")),
    Mistake("The logits go through the exponential: the positive weighs e^c in the denominator, not c. "
            "l = -log(e^c / (e^c + (B - 1) e^0)).", lambda *a: _closed_variant(*a, slip="no_exponential")),
    Mistake("The sign of c is flipped: a larger diagonal makes the positive's logit larger and the loss smaller: "
            "log(1 + (B - 1) e^-c).", lambda *a: _closed_variant(*a, slip="sign")),
    Mistake("That is the probability of the positive, e^c / (e^c + B - 1): the loss is minus its log.",
            lambda *a: _closed_variant(*a, slip="probability")),
]


def _closed_cases() -> list[Case]:
    rng = random.Random(case_seed(141))
    drawn = round(rng.uniform(0.3, 4.0), 3)
    return [
        Case("B=2, c=0", (2, 0.0)),
        Case("B=32, c=0 (W = 0)", (32, 0.0)),
        Case("B=32, c=1", (32, 1.0)),
        Case(f"B=64, c={drawn}", (64, drawn)),
        Case("B=256, c=5", (256, 5.0)),
        Case("B=4, c=-2 (W = -2 I: the positive scores below the negatives)", (4, -2.0)),
        Case("B=10**6, c=10 (too large a batch to build: use the closed form)", (10**6, 10.0)),
        Case("B=10**12, c=30", (10**12, 30.0)),
    ]


def _closed_compare(got, expected) -> str | None:
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    elif hasattr(got, "item") and getattr(got, "ndim", None) == 0:  # a NumPy scalar
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, numbers.Real):
        return f"expected a number (the loss), got {describe(got)}"
    if not math.isfinite(got):
        return f"expected a finite loss, got {got}"
    return first_difference(float(got), expected, rtol=1e-6, atol=1e-9)


@task("14.closed_form", "derive: CURL's loss when the codes are orthonormal and W = c I", 2,
      answer="loss_if_orthonormal")
def check_closed_form(answer) -> None:
    """The answer's number on batches up to 10**12 (too large to build a logit matrix for) against the closed form,
    checked against the package's loss where the batch is small."""
    compare_with_reference(
        answer, _closed_cases(), _closed_form_reference, _CLOSED_MISTAKES,
        generic_hint="Write the B x B logits q_i^T W k_j: with orthonormal codes and k_i = q_i they are c on the "
                     "diagonal and 0 elsewhere. Each row's loss is -log(softmax of its row at the diagonal); every row "
                     "gives the same number, so the mean is that number. For huge B, math.log1p and exponents "
                     "combined before math.exp keep it finite.",
        error_hints=[(r"out of memory|can't allocate|not enough memory|DefaultCPUAllocator",
                      "B goes up to 10**12: no logit matrix fits. Derive the loss as a formula of B and c.")],
        compare=_closed_compare,
        autograd=False,
    )
