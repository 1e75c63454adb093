"""Lesson 11 checks: the references agree with the package, solutions pass, typical wrong answers get their hint."""

import pytest
import torch
import torch.nn.functional as F
from wrong_answers import assert_covers, assert_rejected_with_hint, each_wrong_answer

from clcourse.grading import evaluate, tasks
from clcourse.grading.lesson11_supcon import (
    _gradient_cases,
    _supcon_cases,
    _supcon_gradients_reference,
    _supcon_out_reference,
)
from clcourse.losses import supcon


def test_lesson_11_has_two_tasks():
    assert [t.id for t in tasks(11)] == ["11.supcon_out", "11.supcon_gradients"]


def test_supcon_reference_is_the_packages_l_out():
    for case in _supcon_cases():
        z, labels, t = case.args
        # float32 through two different paths: about 100 ulps of the loss
        torch.testing.assert_close(_supcon_out_reference(z, labels, t), supcon(z, labels, t, variant="out"),
                                   rtol=1e-5, atol=1e-5)
    # the cases tell L_out from L_in: some anchor has more than one positive
    z, labels, t = _supcon_cases()[0].args
    assert not torch.allclose(supcon(z, labels, t, "out"), supcon(z, labels, t, "in"))


def _loss_from_mask(z_flat, mask, t):
    """L_out from a mask of positives, written independently of clcourse.losses."""
    x = F.normalize(z_flat, dim=1)
    eye = torch.eye(len(x), dtype=torch.bool)
    log_prob = (x @ x.T / t).masked_fill(eye, float("-inf")).log_softmax(dim=1)
    has = mask.any(1)
    per = -log_prob.masked_fill(~mask, 0).sum(1)[has] / mask.sum(1)[has]
    return per.mean()


@pytest.mark.parametrize("case", _gradient_cases(), ids=lambda case: case.name)
def test_gradient_reference_is_autograd_of_both_losses(case):
    similarities, positives, t = case.args
    s = similarities.clone().requires_grad_()
    l_out = -(s / t).log_softmax(0)[positives].mean()
    l_in = -(s / t).softmax(0)[positives].mean().log()
    expected = [torch.autograd.grad(loss, s, retain_graph=True)[0] for loss in (l_out, l_in)]
    for ours, theirs in zip(_supcon_gradients_reference(*case.args), expected):
        torch.testing.assert_close(ours, theirs)


def test_with_one_positive_both_gradients_are_nt_xents():
    similarities, positives, t = _gradient_cases()[1].args
    assert positives.sum() == 1
    grad_out, grad_in = _supcon_gradients_reference(similarities, positives, t)
    torch.testing.assert_close(grad_out, grad_in)


# --- solutions a learner might write ---------------------------------------------------------

def supcon_solution(z, labels, temperature=0.1):
    z = F.normalize(z, dim=1)
    m = len(z)
    self_mask = torch.eye(m, dtype=torch.bool)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = positives.sum(1)
    has = n_pos > 0
    return (-log_prob.masked_fill(~positives, 0).sum(1)[has] / n_pos[has]).mean()


def supcon_loop_solution(z, labels, temperature=0.1):
    """Anchor by anchor, with the exponentials written out."""
    z = F.normalize(z, dim=1)
    losses = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        denominator = torch.stack([(z[i] @ z[a] / temperature).exp() for a in others]).sum()
        losses.append(-torch.stack([(z[i] @ z[p] / temperature).exp() / denominator for p in positives]).log().mean())
    return torch.stack(losses).mean()


def gradients_solution(similarities, positives, temperature=0.1):
    p = (similarities / temperature).softmax(0)
    m = positives.double()
    return (p - m / m.sum()) / temperature, (p - m * p / (m * p).sum()) / temperature


def gradients_by_autograd(similarities, positives, temperature=0.1):
    """Returns what autograd says instead of the derivation: the check runs answers in inference mode."""
    s = similarities.detach().clone().requires_grad_()
    l_out = -(s / temperature).log_softmax(0)[positives].mean()
    l_in = -(s / temperature).softmax(0)[positives].mean().log()
    return tuple(torch.autograd.grad(loss, s, retain_graph=True)[0] for loss in (l_out, l_in))


@pytest.mark.parametrize("task_id, answer", [
    ("11.supcon_out", supcon_solution), ("11.supcon_out", supcon_loop_solution),
    ("11.supcon_gradients", gradients_solution),
])
def test_correct_answers_pass(task_id, answer):
    result = evaluate(task_id, answer)
    assert result.passed, result.message


# --- typical wrong answers: each must fail with a hint naming the mistake --------------------

def sc(z, labels, t=0.1, *, norm=True, tpow=1, self_denominator=False, self_positive=False, l_in=False,
       pooled=False, reduce="mean", lonely="drop", positives_in_denominator=True, detach=False):
    z = F.normalize(z, dim=1) if norm else z
    eye = torch.eye(len(z), dtype=torch.bool)
    logits = z @ z.T / t ** tpow
    positives = labels[:, None] == labels[None, :]
    if not self_positive:
        positives = positives & ~eye
    excluded = eye.clone() if not self_denominator else torch.zeros_like(eye)
    if not positives_in_denominator:
        excluded |= positives
    exp = logits.exp().masked_fill(excluded, 0)
    log_prob = logits - exp.sum(1, keepdim=True).log()
    if self_positive and not self_denominator:
        log_prob = log_prob.masked_fill(eye, float("-inf"))
    n_pos = positives.sum(1)
    if pooled:
        return -(log_prob * positives).nan_to_num(neginf=0.0).sum() / n_pos.sum()
    if l_in:
        per = -((log_prob.exp() * positives).sum(1) / n_pos).log()
    else:
        per = -log_prob.masked_fill(~positives, 0).sum(1) / (n_pos if lonely == "nan" else n_pos.clamp(min=1))
    if lonely == "drop":
        per = per[n_pos > 0]
    out = per.sum() if reduce == "sum" else per.mean()
    return out.detach() if detach else out


def grads(s, positives, t=0.1, *, tpow=1, sign=1, out_pull="mean", in_pull="share", swap=False):
    p = (s / t).softmax(0)
    m = positives.double()
    pull_out = m / m.sum() if out_pull == "mean" else m
    pull_in = m * p / (m * p).sum() if in_pull == "share" else m / m.sum()
    out, in_ = sign * (p - pull_out) / t**tpow, sign * (p - pull_in) / t**tpow
    return (in_, out) if swap else (out, in_)


WRONG = {
    "11.supcon_out": [
        (lambda *a: sc(*a, self_denominator=True), "anchor itself is in the denominator"),
        (lambda *a: sc(*a, self_positive=True, self_denominator=True), "its own positive"),
        (lambda *a: sc(*a, self_positive=True), "its own positive"),
        (lambda *a: sc(*a, l_in=True), "L_in"),
        (lambda *a: sc(*a, norm=False), "not L2-normalised"),
        (lambda *a: sc(*a, tpow=0), "temperature is missing"),
        (lambda *a: sc(*a, tpow=-1), "multiplies"),
        (lambda *a: sc(*a, positives_in_denominator=False), "left out of the denominator"),
        (lambda *a: sc(*a, pooled=True), "pooled"),
        (lambda *a: sc(*a, reduce="sum"), "summed"),
        (lambda *a: sc(*a, lonely="nan"), "0 / 0"),
        (lambda *a: sc(*a, lonely="keep"), "counted with loss 0"),
        (lambda *a: sc(*a, detach=True), "cut off"),
    ],
    "11.supcon_gradients": [
        (lambda *a: grads(*a, in_pull="mean"), "given as equal"),
        (lambda *a: grads(*a, out_pull="sum"), "summed, not averaged"),
        (lambda *a: grads(*a, tpow=0), "1/t is missing"),
        (lambda *a: grads(*a, tpow=2), "appears twice"),
        (lambda *a: grads(*a, sign=-1), "sign is flipped"),
        (lambda *a: grads(*a, swap=True), "swapped"),
        (lambda s, m, t=0.1: grads(s, m, t)[0], "expected a tuple"),
        (gradients_by_autograd, "autograd switched off"),
    ],
}


def test_wrong_answers_cover_every_task():
    assert_covers(WRONG, tasks(11))


@each_wrong_answer(WRONG)
def test_wrong_answer_is_rejected_with_its_hint(task_id, answer, mistake):
    assert_rejected_with_hint(task_id, answer, mistake)
