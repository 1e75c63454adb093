"""Lesson 14 checks: the references agree with the package, solutions pass, wrong and hostile answers fail with a
hint."""

import math

import numpy as np
import pytest
import torch
from wrong_answers import (
    assert_covers,
    assert_each_mistake_told_by_its_own_hint,
    assert_mistake_differs_somewhere,
    assert_rejected_with_hint,
    assert_solution_passes_and_student_hides_it,
    each_wrong_answer,
    exits_on_purpose,
    raises_on_purpose,
)

from clcourse.grading import evaluate, tasks
from clcourse.grading.harness import call_plain
from clcourse.grading.lesson14_curl import (
    _CLOSED_MISTAKES,
    _CROP_MISTAKES,
    _closed_cases,
    _closed_form,
    _closed_form_reference,
    _crop_cases,
    _crop_reference,
)
from clcourse.losses import bilinear_info_nce
from clcourse.methods.curl import random_crop


def test_lesson_14_has_two_tasks():
    assert [t.id for t in tasks(14)] == ["14.crop", "14.closed_form"]


# --- 14.crop: the reference is random_crop's cut ---------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crop_reference_cuts_what_random_crop_cuts(seed):
    """random_crop draws top, then left, from its generator: the same draws given to the reference cut the same."""
    frames = torch.randint(0, 256, (6, 9, 13, 13), dtype=torch.uint8)
    g = torch.Generator().manual_seed(seed)
    top, left = torch.randint(0, 4, (6,), generator=g), torch.randint(0, 4, (6,), generator=g)
    expected = random_crop(frames, 10, torch.Generator().manual_seed(seed))
    assert torch.equal(_crop_reference(frames, top, left, 10), expected)


@pytest.mark.parametrize("case", _crop_cases(), ids=lambda case: case.name[:40])
def test_crop_cases_hold_what_their_names_say(case):
    frames, top, left, size = case.args
    b, c, h, w = frames.shape
    assert f"B={b}" in case.name and f"C={c}" in case.name or f"C={c}" in case.name.replace(" (one frame)", "")
    assert f"size {size}" in case.name and f"{h} x {w}" in case.name
    assert int(top.max()) <= h - size and int(left.max()) <= w - size and top.dtype == left.dtype == torch.long
    if frames.dtype != torch.uint8:  # distinct values: any wrong pixel shows
        assert frames.unique().numel() == frames.numel()
    out = call_plain(_crop_reference, case)
    assert out.shape == (b, c, size, size) and out.dtype == frames.dtype


# --- 14.closed_form: the formula is the package's loss ----------------------------------------

@pytest.mark.parametrize("batch, c", [(2, 0.0), (5, 1.5), (32, 0.0), (32, 5.0), (100, -3.0), (300, 40.0)])
def test_the_closed_form_is_bilinear_info_nce_on_one_hot_codes(batch, c):
    codes = torch.eye(batch, dtype=torch.float64)
    loss = bilinear_info_nce(codes, codes, c * torch.eye(batch, dtype=torch.float64)).item()
    assert _closed_form(batch, c) == pytest.approx(loss, rel=1e-9, abs=1e-12)
    assert _closed_form_reference(batch, c) == _closed_form(batch, c)
    if c == 0:
        assert _closed_form(batch, c) == pytest.approx(math.log(batch))  # W = 0: log B


def test_the_closed_form_stays_exact_for_huge_batches_and_diagonals():
    assert _closed_form(10**12, 30.0) == pytest.approx(math.log1p((10**12 - 1) * math.exp(-30.0)), rel=1e-12)
    assert 0 < _closed_form(10, 800.0) < 1e-300 or _closed_form(10, 800.0) == 0.0
    assert _closed_form(10**6, -50.0) == pytest.approx(math.log(10**6 - 1) + 50, rel=1e-9)


def test_a_package_that_disagrees_with_the_closed_form_is_a_checker_bug(monkeypatch):
    import clcourse.grading.lesson14_curl as lesson

    monkeypatch.setattr(lesson, "bilinear_info_nce", lambda q, k, w: torch.tensor(0.0))  # a broken loss
    result = evaluate("14.closed_form", _closed_form)
    assert not result.passed and "checker itself failed" in result.problem and "closed form" in result.problem


@pytest.mark.parametrize("mistake", _CROP_MISTAKES + _CLOSED_MISTAKES, ids=lambda m: m.hint[:40])
def test_every_mistake_differs_from_the_reference_on_some_case(mistake):
    if mistake in _CROP_MISTAKES:
        cases, reference = _crop_cases(), _crop_reference
    else:
        cases, reference = _closed_cases(), _closed_form_reference
    assert_mistake_differs_somewhere(mistake, cases, reference)


@pytest.mark.parametrize("mistakes", [_CROP_MISTAKES, _CLOSED_MISTAKES], ids=["crop", "closed_form"])
def test_every_mistake_is_told_by_its_own_hint(mistakes):
    """Each known mistake, given as the answer, fails with its own hint (no other mistake shadows it)."""
    task_id = "14.crop" if mistakes is _CROP_MISTAKES else "14.closed_form"
    assert_each_mistake_told_by_its_own_hint(task_id, mistakes)


# --- solutions a learner might write ---------------------------------------------------------

def crop_solution(frames, top, left, size):
    return torch.stack([f[:, t:t + size, l:l + size] for f, t, l in zip(frames, top.tolist(), left.tolist())])


def crop_by_unfold(frames, top, left, size):
    windows = frames.unfold(2, size, 1).unfold(3, size, 1)
    return windows[torch.arange(len(frames)), :, top, left]


def crop_by_index(frames, top, left, size):
    """Advanced indexing with broadcast index tensors, as random_crop once did."""
    offsets = torch.arange(size)
    rows = (top[:, None] + offsets)[:, None, :, None]
    cols = (left[:, None] + offsets)[:, None, None, :]
    return frames[torch.arange(len(frames))[:, None, None, None], torch.arange(frames.shape[1])[None, :, None, None],
                  rows, cols]


def crop_into_empty(frames, top, left, size):
    out = frames.new_empty(frames.shape[0], frames.shape[1], size, size)
    for b in range(frames.shape[0]):
        out[b] = frames[b, :, int(top[b]):int(top[b]) + size, int(left[b]):int(left[b]) + size]
    return out


def closed_solution(batch, c):
    return math.log1p(math.exp(math.log(batch - 1) - c))


def closed_softplus(batch, c):
    """log(1 + e^x) as torch's softplus, returned as a 0-d tensor."""
    return torch.nn.functional.softplus(torch.tensor(math.log(batch - 1) - c, dtype=torch.float64))


def closed_logaddexp(batch, c):
    """-log(e^c / (e^c + B - 1)) = logaddexp(c, log(B - 1)) - c, as a NumPy float."""
    return np.logaddexp(c, np.log(batch - 1)) - c


@pytest.mark.parametrize("task_id, answer", [
    ("14.crop", crop_solution), ("14.crop", crop_by_unfold), ("14.crop", crop_by_index),
    ("14.crop", crop_into_empty),
    ("14.closed_form", closed_solution), ("14.closed_form", closed_softplus), ("14.closed_form", closed_logaddexp),
])
def test_correct_answers_pass(task_id, answer):
    result = evaluate(task_id, answer)
    assert result.passed, result.message


def test_the_solution_notebook_passes_and_the_student_notebook_holds_no_solution():
    assert_solution_passes_and_student_hides_it("14_curl.ipynb", "14", ["14.closed_form", "14.crop"],
                                                ["zip(frames, top.tolist(), left.tolist())])",
                                                 "math.log1p(math.exp(math.log(batch - 1) - c))"])


# --- typical wrong answers: each must fail with a hint naming the mistake --------------------

def cr(frames, top, left, size, *, slip=None):
    """A learner's crop with one of the typical slips, written as a learner would."""
    rows = []
    for b in range(frames.shape[0]):
        t, l_ = int(top[b]), int(left[b])
        if slip == "one_window":
            t, l_ = int(top[0]), int(left[0])
        if slip == "swapped":
            t, l_ = l_, t
        if slip == "centred":
            t, l_ = max(t - size // 2, 0), max(l_ - size // 2, 0)
        source = frames[0] if slip == "first_row" else frames[b]
        end = {"inclusive": size + 1, "short": size - 1}.get(slip, size)
        window = source[:, t:t + end, l_:l_ + end]
        if slip == "transposed":
            window = window.transpose(1, 2)
        if slip == "newest_only":
            window = window[-3:]
        rows.append(window)
    return torch.stack(rows)


def resized(frames, top, left, size):
    return torch.nn.functional.interpolate(frames.double(), size=(size, size)).to(frames.dtype)


def centre(frames, top, left, size):
    margin = (frames.shape[-1] - size) // 2
    return frames[..., margin:margin + size, margin:margin + size]


def as_float(frames, top, left, size):
    return cr(frames, top, left, size).float()


WRONG = {
    "14.crop": [
        (lambda *a: cr(*a, slip="one_window"), "first row's corner"),
        (lambda *a: cr(*a, slip="swapped"), "Rows and columns are swapped"),
        (lambda *a: cr(*a, slip="transposed"), "came out transposed"),
        (lambda *a: cr(*a, slip="short"), "one pixel too small"),
        (lambda *a: cr(*a, slip="inclusive"), "ran past the frame's edge"),
        (lambda *a: cr(*a, slip="newest_only"), "Only the newest frame"),
        (lambda *a: cr(*a, slip="centred"), "window's centre"),
        (lambda *a: cr(*a, slip="first_row"), "cut from the first observation"),
        (resized, "resized"),
        (centre, "central window"),
        (as_float, "a crop is a window of the same values"),
    ],
    "14.closed_form": [
        (lambda b, c: math.log(b), "log B is the loss when every logit is equal"),
        (lambda b, c: math.log(1 + b * math.exp(-c)), "counted among the negatives"),
        (lambda b, c: math.log(b - 1) - c, "missing from the denominator"),
        (lambda b, c: math.log(1 + (2 * b - 2) * math.exp(-c)), "NT-Xent's count"),
        (lambda b, c: b * math.log1p((b - 1) * math.exp(-c)), "sum over the batch"),
        (lambda b, c: math.log(b) - c, "go through the exponential"),
        (lambda b, c: math.log1p((b - 1) * math.exp(min(c, 700))), "sign of c is flipped"),
        (lambda b, c: 1 / (1 + (b - 1) * math.exp(-c)), "probability of the positive"),
    ],
}


def test_wrong_answers_cover_every_task():
    assert_covers(WRONG, tasks(14))


@each_wrong_answer(WRONG)
def test_wrong_answer_is_rejected_with_its_hint(task_id, answer, mistake):
    assert_rejected_with_hint(task_id, answer, mistake)


# --- hostile and broken answers: failures with a reason, never a crash or a checker error ----

def _builds_the_matrix(batch, c):
    """A numerical answer: fine for small batches, out of memory for 10**6."""
    codes = torch.eye(batch, dtype=torch.float64)
    return bilinear_info_nce(codes, codes, c * torch.eye(batch, dtype=torch.float64)).item()


def _modifies_frames(frames, top, left, size):
    out = crop_solution(frames, top, left, size).clone()
    frames.zero_()
    return out


@pytest.mark.parametrize("task_id, answer, problem", [
    ("14.crop", raises_on_purpose, "ValueError: broken on purpose"),
    ("14.crop", exits_on_purpose, "SystemExit"),
    ("14.crop", lambda *a: None, "expected a tensor"),
    ("14.crop", lambda f, t, l, s: crop_solution(f, t, l, s).numpy(), "expected a tensor"),
    ("14.crop", _modifies_frames, "in place"),
    ("14.crop", 42, "must be a function"),
    ("14.closed_form", raises_on_purpose, "ValueError: broken on purpose"),
    ("14.closed_form", lambda b, c: None, "expected a number"),
    ("14.closed_form", lambda b, c: "0.5", "expected a number"),
    ("14.closed_form", lambda b, c: float("nan"), "expected a finite loss"),
    ("14.closed_form", lambda b, c: True, "expected a number"),
    ("14.closed_form", lambda b, c: torch.ones(2), "expected a number"),
])
def test_hostile_and_broken_answers_fail_with_a_reason(task_id, answer, problem):
    result = evaluate(task_id, answer)
    assert result.status == "failed" and result.points == 0, result.message
    assert "checker itself failed" not in result.problem, result.message
    assert result.case and problem in result.problem, result.message


def test_a_numerical_answer_fails_on_the_batch_no_matrix_holds():
    result = evaluate("14.closed_form", _builds_the_matrix)
    assert not result.passed and "10**6" in result.case, result.message
