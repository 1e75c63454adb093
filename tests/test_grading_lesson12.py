"""Lesson 12 checks: the references agree with the package, solutions pass, typical wrong answers get their hint."""

import math

import pytest
import torch
import torch.nn.functional as F
from wrong_answers import assert_covers, assert_rejected_with_hint, each_wrong_answer

from clcourse import losses
from clcourse.grading import evaluate, tasks
from clcourse.grading.harness import call_plain, first_difference
from clcourse.grading.lesson12_pixel_contrast import (
    _FLOOR_MISTAKES,
    _PIXEL_MISTAKES,
    _loss_floor_cases,
    _loss_floor_closed_form,
    _loss_floor_measured,
    _loss_floor_reference,
    _pixel_cases,
    _pixel_contrast_reference,
    _pixel_contrast_variant,
)


def test_lesson_12_has_two_tasks():
    assert [t.id for t in tasks(12)] == ["12.pixel_contrast", "12.loss_floor"]


def loop_loss(anchors, labels, t):
    """[1] eq. 3 in float64, one anchor and one positive at a time, written independently of clcourse.losses."""
    x = F.normalize(anchors.detach().double(), dim=1)
    per_anchor = []
    for i in range(len(x)):
        positives = [p for p in range(len(x)) if p != i and labels[p] == labels[i]]
        negatives = [n for n in range(len(x)) if labels[n] != labels[i]]
        if not positives:
            continue
        negative_sum = sum(math.exp(float(x[i] @ x[n]) / t) for n in negatives)
        terms = [-math.log(math.exp(float(x[i] @ x[p]) / t) / (math.exp(float(x[i] @ x[p]) / t) + negative_sum))
                 for p in positives]
        per_anchor.append(sum(terms) / len(terms))
    return sum(per_anchor) / len(per_anchor)


@pytest.mark.parametrize("case", _pixel_cases(), ids=lambda case: case.name[:40])
def test_pixel_contrast_reference_is_the_packages_and_eq_3(case):
    anchors, labels, t = case.args
    expected = losses.pixel_contrast(anchors, labels, temperature=t)
    got = call_plain(_pixel_contrast_reference, case)
    assert torch.equal(got, expected) and got.dtype == anchors.dtype
    assert got.item() == pytest.approx(loop_loss(anchors, labels, t), rel=1e-5, abs=1e-6)
    # the grader's variant with no rule changed is the reference too (the mistakes are one change away from it)
    assert first_difference(call_plain(_pixel_contrast_variant, case), got) is None


def test_pixel_cases_hold_what_their_names_say():
    cases = _pixel_cases()
    assert sum(c.args[0].requires_grad for c in cases) == 2
    for case in cases:
        anchors, labels, t = case.args
        counts = torch.bincount(labels)
        if "appear once" in case.name:
            assert (counts == 1).sum() == 2
        if "one positive each" in case.name:
            assert set(counts[counts > 0].tolist()) == {2}
            # one positive each: SupCon's L_out and eq. 3 share their denominators
            torch.testing.assert_close(losses.supcon(anchors, labels, t, "out"), call_plain(_pixel_contrast_reference,
                                                                                          case))
        if "no negatives" in case.name:
            assert len(set(labels.tolist())) == 1 and call_plain(_pixel_contrast_reference, case).item() == 0.0
        if "float64" in case.name:
            assert anchors.dtype == torch.float64
    # some anchor has several positives: eq. 3 and SupCon's L_out differ
    anchors, labels, t = cases[0].args
    assert not torch.allclose(losses.supcon(anchors, labels, t, "out"), losses.pixel_contrast(anchors, labels,
                                                                                              temperature=t))


@pytest.mark.parametrize("case", _loss_floor_cases(), ids=lambda case: case.name[:30])
def test_loss_floor_reference_is_the_closed_form_and_the_packages_losses(case):
    closed = _loss_floor_closed_form(*case.args)
    assert call_plain(_loss_floor_reference, case) == closed
    for c, m in zip(closed, _loss_floor_measured(*case.args)):
        assert m == pytest.approx(c, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("positives, negatives, t", [(1, 1, 0.5), (3, 5, 0.2), (6, 40, 1.0), (2, 0, 0.1)])
def test_the_floors_on_a_whole_separated_batch(positives, negatives, t):
    """The public losses on a flat batch: the anchor's class with |P| + 1 rows at +u, each negative at -u with a
    class of its own (no positive, so skipped): every anchor that counts is in the task's situation."""
    u = F.normalize(torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64), dim=0)
    z = torch.cat([u.expand(positives + 1, 3), -u.expand(negatives, 3)])
    labels = torch.cat([torch.zeros(positives + 1, dtype=torch.long), torch.arange(1, negatives + 1)])
    pixel, supcon = _loss_floor_closed_form(positives, negatives, t)
    assert losses.pixel_contrast(z, labels, temperature=t).item() == pytest.approx(pixel, rel=1e-9, abs=1e-12)
    assert losses.supcon(z, labels, t, "out").item() == pytest.approx(supcon, rel=1e-9, abs=1e-12)


def test_only_eq_3_reaches_zero_and_supcons_floor_grows_with_the_positives():
    """The lesson's point: at perfect separation eq. 3 tends to 0 as t -> 0 whatever |P|; SupCon's positives share
    one softmax, so its floor stays above log |P|, whatever the temperature (log 5000 = 8.5 with [1]'s memory)."""
    for positives in (1, 10, 1000):
        pixel, supcon = _loss_floor_closed_form(positives, 500, 0.05)
        assert pixel < 1e-14 and supcon == pytest.approx(math.log(positives), abs=1e-14)
        for t in (0.1, 0.5, 2.0):
            pixel, supcon = _loss_floor_closed_form(positives, 500, t)
            assert supcon >= math.log(positives) and supcon >= pixel
    assert _loss_floor_closed_form(1, 100, 0.3)[0] == pytest.approx(_loss_floor_closed_form(1, 100, 0.3)[1])


def test_a_package_that_disagrees_with_the_closed_forms_is_a_checker_bug(monkeypatch):
    monkeypatch.setattr(losses, "pixel_contrast", lambda *a, **k: torch.tensor(1.0))
    result = evaluate("12.loss_floor", lambda p, n, t: _loss_floor_closed_form(p, n, t))
    assert not result.passed and "checker itself failed" in result.problem and "not the closed forms" in result.problem


@pytest.mark.parametrize("mistake", _PIXEL_MISTAKES + _FLOOR_MISTAKES, ids=lambda m: m.hint[:40])
def test_every_mistake_differs_from_the_reference_on_some_case(mistake):
    if mistake in _PIXEL_MISTAKES:
        cases, reference = _pixel_cases(), _pixel_contrast_reference
    else:
        cases, reference = _loss_floor_cases(), _loss_floor_reference
    assert any(first_difference(call_plain(mistake.fn, case), call_plain(reference, case)) is not None
               for case in cases)


# --- solutions a learner might write ---------------------------------------------------------

def pixel_contrast_solution(anchors, labels, temperature=0.1):
    x = F.normalize(anchors, dim=1)
    logits = x @ x.T / temperature
    same = labels[:, None] == labels[None, :]
    positives = same & ~torch.eye(len(x), dtype=torch.bool)
    log_negatives = torch.logsumexp(logits.masked_fill(same, float("-inf")), dim=1, keepdim=True)
    terms = F.softplus(log_negatives - logits)  # -log(e^l / (e^l + sum_n e^n))
    n_pos = positives.sum(1)
    has = n_pos > 0
    return (terms.masked_fill(~positives, 0).sum(1)[has] / n_pos[has]).mean()


def pixel_contrast_with_exponentials(anchors, labels, temperature=0.1):
    """The equation as printed: exponentials of cosines, one denominator per (anchor, positive) pair."""
    x = F.normalize(anchors, dim=1)
    e = torch.exp(x @ x.T / temperature)
    same = labels[:, None] == labels[None, :]
    positives = (same & ~torch.eye(len(x), dtype=torch.bool)).to(x.dtype)
    negative_sum = (e * (~same).to(x.dtype)).sum(1, keepdim=True)
    log_ratio = torch.log(e / (e + negative_sum))
    n_pos = positives.sum(1)
    has = n_pos > 0
    return (-(log_ratio * positives).sum(1)[has] / n_pos[has]).mean()


def pixel_contrast_loop(anchors, labels, temperature=0.1):
    x = F.normalize(anchors, dim=1)
    per_anchor = []
    for i in range(len(x)):
        positives = [p for p in range(len(x)) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        negatives = [n for n in range(len(x)) if labels[n] != labels[i]]
        negative_sum = torch.stack([torch.exp(x[i] @ x[n] / temperature) for n in negatives]).sum() if negatives \
            else torch.zeros((), dtype=x.dtype)
        terms = [-torch.log(torch.exp(x[i] @ x[p] / temperature) / (torch.exp(x[i] @ x[p] / temperature)
                                                                    + negative_sum)) for p in positives]
        per_anchor.append(torch.stack(terms).mean())
    return torch.stack(per_anchor).mean()


def loss_floor_solution(positives, negatives, temperature):
    tail = negatives * math.exp(-2 / temperature)
    return math.log(1 + tail), math.log(positives + tail)


def loss_floor_in_torch(positives, negatives, temperature):
    """Written out from the definitions, as tensors: e^{s/t} of the positive and the negatives."""
    t = torch.tensor(temperature, dtype=torch.float64)
    pos, neg = torch.exp(1 / t), negatives * torch.exp(-1 / t)
    return -torch.log(pos / (pos + neg)), -torch.log(pos / (positives * pos + neg))


@pytest.mark.parametrize("task_id, answer", [
    ("12.pixel_contrast", pixel_contrast_solution), ("12.pixel_contrast", pixel_contrast_with_exponentials),
    ("12.pixel_contrast", pixel_contrast_loop),
    ("12.loss_floor", loss_floor_solution), ("12.loss_floor", loss_floor_in_torch),
])
def test_correct_answers_pass(task_id, answer):
    result = evaluate(task_id, answer)
    assert result.passed, result.message


# --- typical wrong answers: each must fail with a hint naming the mistake --------------------

def pc(z, labels, t=0.1, *, norm=True, tpow=1, self_positive=False, denominator="own", per_anchor="mean",
       reduce="mean", lonely="drop", detach=False, detach_negatives=False):
    """A learner's eq. 3 with exponentials, in the embeddings' dtype, with one of the typical slips."""
    x = F.normalize(z, dim=1) if norm else z
    eye = torch.eye(len(x), dtype=torch.bool)
    e = torch.exp(x @ x.T / t ** tpow)
    same = labels[:, None] == labels[None, :]
    positives = same if self_positive else same & ~eye
    negative_sum = (e * (~same).to(x.dtype)).sum(1, keepdim=True)
    if detach_negatives:
        negative_sum = negative_sum.detach()
    if denominator == "own":
        log_ratio = torch.log(e / (e + negative_sum))
    elif denominator == "negatives":
        log_ratio = torch.log(e / negative_sum)
    else:  # SupCon's: every other row
        log_ratio = torch.log(e / (e * (~eye).to(x.dtype)).sum(1, keepdim=True))
    terms = -(log_ratio.masked_fill(~positives, 0))
    n_pos = positives.sum(1).to(x.dtype)
    if reduce == "pooled":
        out = terms.sum() / n_pos.sum()
    else:
        per = terms.sum(1)
        if per_anchor == "mean":
            per = per / (n_pos if lonely == "nan" else n_pos.clamp(min=1))
        if lonely == "drop":
            per = per[n_pos > 0]
        out = per.sum() if reduce == "sum" else per.mean()
    return out.detach() if detach else out


def floor(p, n, t, *, gap=2, tpow=1, p_term=True, extra=0, swap=False):
    tail = n * math.exp(-gap / t ** tpow)
    pixel, supcon = math.log(1 + tail), math.log((p + extra if p_term else 1) + tail)
    return (supcon, pixel) if swap else (pixel, supcon)


WRONG = {
    "12.pixel_contrast": [
        (lambda z, y, t=0.1: losses.supcon(z, y, t, "out"), "SupCon's L_out"),
        (lambda *a: pc(*a, denominator="all"), "SupCon's L_out"),
        (lambda *a: pc(*a, self_positive=True), "its own positive"),
        (lambda *a: pc(*a, norm=False), "not L2-normalised"),
        (lambda *a: pc(*a, tpow=0), "temperature is missing"),
        (lambda *a: pc(*a, tpow=-1), "multiplies"),
        (lambda *a: pc(*a, denominator="negatives"), "missing from its own denominator"),
        (lambda *a: pc(*a, reduce="pooled"), "pooled"),
        (lambda *a: pc(*a, per_anchor="sum"), "positives were summed"),
        (lambda *a: pc(*a, reduce="sum"), "anchor losses are summed"),
        (lambda *a: pc(*a, lonely="keep"), "counted with loss 0"),
        (lambda *a: pc(*a, lonely="nan"), "0 / 0"),
        (lambda *a: pc(*a, detach=True), "cut off"),
        (lambda *a: pc(*a, detach_negatives=True), "not the right gradient"),
    ],
    "12.loss_floor": [
        (lambda p, n, t: floor(p, n, t, gap=1), "gap is 2, not 1"),
        (lambda p, n, t: floor(p, n, t, p_term=False), "share one denominator"),
        (lambda p, n, t: floor(p, n, t, swap=True), "swapped"),
        (lambda p, n, t: floor(p, n, t, tpow=-1), "not e^{-2t}"),
        (lambda p, n, t: floor(p, n, t, tpow=0), "temperature is missing"),
        (lambda p, n, t: floor(p, n, t, extra=1), "counted among the candidates"),
        (lambda p, n, t: (math.log(n) - 2 / t,) * 2, "missing from its own denominator"),
        (lambda p, n, t: (0.0, math.log(p)), "does not make the loss 0"),
        (lambda p, n, t: tuple(p * v for v in floor(p, n, t)), "were summed"),
        (lambda p, n, t: floor(p, n, t)[0], "expected a tuple"),
    ],
}


def test_wrong_answers_cover_every_task():
    assert_covers(WRONG, tasks(12))


@each_wrong_answer(WRONG)
def test_wrong_answer_is_rejected_with_its_hint(task_id, answer, mistake):
    assert_rejected_with_hint(task_id, answer, mistake)
