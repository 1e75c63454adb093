"""Lesson 18 checks: the references agree with clip_loss and the filterbank, solutions pass, wrong and hostile
answers fail with a hint."""

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

from clcourse.audio import mel_filterbank
from clcourse.grading import evaluate, tasks
from clcourse.grading.lesson18_beyond import (
    _CLIP_FLOOR_MISTAKES,
    _MEL_BAND_MISTAKES,
    _clip_floor_built,
    _clip_floor_cases,
    _clip_floor_closed_form,
    _clip_floor_reference,
    _mel_band_cases,
    _mel_band_reference,
)


def test_lesson_18_has_two_tasks():
    assert [t.id for t in tasks(18)] == ["18.clip_floor", "18.mel_band"]


# --- 18.clip_floor: the closed form is clip_loss at the configuration it assumes -------------

@pytest.mark.parametrize("case", _clip_floor_cases(), ids=lambda case: case.name[:30])
def test_clip_floor_closed_form_is_clip_loss_where_it_can_be_built(case):
    batch, classes, temperature = case.args
    assert batch % classes == 0 and temperature > 0 and f"B={batch:,}" in case.name or f"B={batch}" in case.name
    closed = _clip_floor_closed_form(batch, classes, temperature)
    if batch <= 256:
        assert math.isclose(_clip_floor_built(batch, classes, temperature), closed, rel_tol=1e-9)
    assert _clip_floor_reference(batch, classes, temperature) == closed


def test_no_embedding_goes_below_the_floor():
    """Random embeddings of C classes, however they are trained towards their class, never beat the floor."""
    from clcourse.losses import clip_loss

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 10
    centres = torch.randn(10, 16, generator=g, dtype=torch.float64)
    for spread in (0.0, 0.1, 1.0):
        images = centres[labels] + spread * torch.randn(60, 16, generator=g, dtype=torch.float64)
        texts = centres[labels] + spread * torch.randn(60, 16, generator=g, dtype=torch.float64)
        for t in (0.07, 0.5):
            assert clip_loss(images, texts, t).item() >= _clip_floor_closed_form(60, 10, t) - 1e-9


def test_clip_floor_limits():
    assert math.isclose(_clip_floor_closed_form(64, 64, 1e-3), 0.0, abs_tol=1e-12)  # one pair per class, cold
    assert math.isclose(_clip_floor_closed_form(64, 8, 1e-3), math.log(8))  # cold: log(B/C)
    assert _clip_floor_closed_form(64, 8, 1e3) < math.log(64) and math.isclose(
        _clip_floor_closed_form(64, 8, 1e6), math.log(64), rel_tol=1e-5)  # hot: log B


def test_a_clip_loss_that_disagrees_is_a_checker_bug(monkeypatch):
    import clcourse.grading.lesson18_beyond as lesson

    monkeypatch.setattr(lesson, "_clip_floor_built", lambda b, c, t: math.log(b))
    result = evaluate("18.clip_floor", _clip_floor_closed_form)
    assert not result.passed and "checker itself failed" in result.problem and "closed form" in result.problem


# --- 18.mel_band: the cases avoid the crossings, where the nearest centre in mel is ambiguous --

@pytest.mark.parametrize("case", _mel_band_cases(), ids=lambda case: case.name)
def test_mel_band_reference_is_the_filter_that_responds_most(case):
    frequency, sample_rate, n_mels = case.args
    filters = mel_filterbank(sample_rate, sample_rate, n_mels)
    column = filters[:, frequency]
    band = _mel_band_reference(*case.args)
    assert column[band] == column.max() and column[band] > 0.6  # near a centre: clear of the crossings at 1/2
    assert band_solution(*case.args) == band


@pytest.mark.parametrize("mistake", _CLIP_FLOOR_MISTAKES + _MEL_BAND_MISTAKES, ids=lambda m: m.hint[:40])
def test_every_mistake_differs_from_the_reference_on_some_case(mistake):
    if mistake in _CLIP_FLOOR_MISTAKES:
        cases, reference = _clip_floor_cases(), _clip_floor_reference
    else:
        cases, reference = _mel_band_cases(), _mel_band_reference
    assert_mistake_differs_somewhere(mistake, cases, reference)


@pytest.mark.parametrize("mistakes", [_CLIP_FLOOR_MISTAKES, _MEL_BAND_MISTAKES], ids=["clip_floor", "mel_band"])
def test_every_mistake_is_told_by_its_own_hint(mistakes):
    task_id = "18.clip_floor" if mistakes is _CLIP_FLOOR_MISTAKES else "18.mel_band"
    assert_each_mistake_told_by_its_own_hint(task_id, mistakes)


# --- solutions a learner might write ---------------------------------------------------------

def floor_solution(batch_size, classes, temperature):
    per_class = batch_size / classes
    return math.log(per_class + (batch_size - per_class) * math.exp(-1 / temperature))


def floor_logsumexp(batch_size, classes, temperature):
    """-log softmax of the positive, written with the row's logits (numerically stable, NumPy)."""
    per_class = batch_size // classes
    row = np.array([1 / temperature] * per_class + [0.0] * (batch_size - per_class))
    return float(np.logaddexp.reduce(row) - 1 / temperature)


def floor_tensor(batch_size, classes, temperature):
    """As a 0-d float64 tensor."""
    b, c = torch.tensor(float(batch_size), dtype=torch.float64), float(classes)
    return torch.log(b / c + (b - b / c) * torch.exp(torch.tensor(-1 / temperature, dtype=torch.float64)))


def band_solution(frequency, sample_rate, n_mels):
    mel = 2595 * math.log10(1 + frequency / 700)
    spacing = 2595 * math.log10(1 + sample_rate / 2 / 700) / (n_mels + 1)
    return min(max(round(mel / spacing) - 1, 0), n_mels - 1)


def band_natural_log(frequency, sample_rate, n_mels):
    """Any logarithm does: the ratio mel(f) / mel(f_s / 2) is the same in every base."""
    ratio = math.log1p(frequency / 700) / math.log1p(sample_rate / 2 / 700)
    return int(np.clip(np.rint(ratio * (n_mels + 1)) - 1, 0, n_mels - 1))


def band_search(frequency, sample_rate, n_mels):
    """The centres in Hz, the nearest in mel found by search."""
    top = 2595 * math.log10(1 + sample_rate / 2 / 700)
    centres = [top * (m + 1) / (n_mels + 1) for m in range(n_mels)]
    mel = 2595 * math.log10(1 + frequency / 700)
    return min(range(n_mels), key=lambda m: abs(centres[m] - mel))


@pytest.mark.parametrize("task_id, answer", [
    ("18.clip_floor", floor_solution), ("18.clip_floor", floor_logsumexp), ("18.clip_floor", floor_tensor),
    ("18.mel_band", band_solution), ("18.mel_band", band_natural_log), ("18.mel_band", band_search),
])
def test_correct_answers_pass(task_id, answer):
    result = evaluate(task_id, answer)
    assert result.passed, result.message


def test_the_solution_notebook_passes_and_the_student_notebook_holds_no_solution():
    assert_solution_passes_and_student_hides_it("18_beyond.ipynb", "18", ["18.clip_floor", "18.mel_band"],
                                                ["(batch_size - per_class) * math.exp(-1 / temperature)",
                                                 "round(mel / spacing) - 1"])


# --- typical wrong answers: each must fail with a hint naming the mistake --------------------

def _band(frequency, sample_rate, n_mels, *, mel=True, top=0.5, intervals=1, offset=1, rounding=round):
    scale = (lambda f: 2595 * math.log10(1 + f / 700)) if mel else (lambda f: f)
    spacing = scale(top * sample_rate) / (n_mels + intervals)
    return min(max(int(rounding(scale(frequency) / spacing)) - offset, 0), n_mels - 1)


WRONG = {
    "18.clip_floor": [
        (lambda b, c, t: math.log(b), "every similarity is equal"),
        (lambda b, c, t: math.log(b / c), "leaves out the other classes"),
        (lambda b, c, t: math.log(1 + (b - 1) * math.exp(-1 / t)), "one positive per row"),
        (lambda b, c, t: floor_solution(b, c, t) - 1 / t, "subtracted again"),
        (lambda b, c, t: 2 * floor_solution(b, c, t), "directions were added"),
        (lambda b, c, t: math.log(2 * b / c + (2 * b - 2 * b / c) * math.exp(-1 / t)), "NT-Xent's count"),
        (lambda b, c, t: math.log(b / c + (b - b / c) * math.exp(-1)), "lost its temperature"),
    ],
    "18.mel_band": [
        (lambda f, sr, m: _band(f, sr, m, mel=False), "evenly in Hz"),
        (lambda f, sr, m: _band(f, sr, m, offset=0), "Off by one"),
        (lambda f, sr, m: _band(f, sr, m, rounding=math.floor), "Floor, not round"),
        (lambda f, sr, m: _band(f, sr, m, intervals=0), "intervals between 0 and mel"),
        (lambda f, sr, m: _band(f, sr, m, top=1.0), "Nyquist"),
        (lambda f, sr, m: _band(f, sr, m, intervals=2), "not M + 2"),
    ],
}


def test_wrong_answers_cover_every_task():
    assert_covers(WRONG, tasks(18))


@each_wrong_answer(WRONG)
def test_wrong_answer_is_rejected_with_its_hint(task_id, answer, mistake):
    assert_rejected_with_hint(task_id, answer, mistake)


# --- hostile and broken answers: failures with a reason, never a crash or a checker error ----

@pytest.mark.parametrize("task_id, answer, problem", [
    ("18.clip_floor", raises_on_purpose, "ValueError: broken on purpose"),
    ("18.clip_floor", exits_on_purpose, "SystemExit"),
    ("18.clip_floor", lambda b, c, t: None, "expected a number"),
    ("18.clip_floor", lambda b, c, t: float("nan"), "got nan"),
    ("18.clip_floor", 42, "must be a function"),
    ("18.mel_band", raises_on_purpose, "ValueError: broken on purpose"),
    ("18.mel_band", lambda f, sr, m: "3", "expected"),
    ("18.mel_band", lambda f, sr, m: None, "expected"),
])
def test_hostile_and_broken_answers_fail_with_a_reason(task_id, answer, problem):
    result = evaluate(task_id, answer)
    assert result.status == "failed" and result.points == 0, result.message
    assert "checker itself failed" not in result.problem, result.message
    assert result.case and problem in result.problem + result.hint, result.message
