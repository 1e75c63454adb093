"""Lesson 08 checks: the references agree with the package, solutions pass, typical wrong answers get their hint."""

import math

import pytest
import torch
from wrong_answers import assert_covers, assert_rejected_with_hint, each_wrong_answer

from clcourse.clustering import sinkhorn
from clcourse.grading import evaluate, tasks
from clcourse.grading.lesson08_swav import (
    _collapsed_cases,
    _collapsed_reference,
    _sinkhorn_cases,
    _sinkhorn_variant,
)
from clcourse.methods import SwAV


def test_lesson_08_has_two_tasks():
    assert [t.id for t in tasks(8)] == ["08.sinkhorn", "08.collapsed_loss"]


@pytest.mark.parametrize("case", _sinkhorn_cases(), ids=lambda case: case.name)
def test_the_papers_algorithm_is_the_packages_sinkhorn(case):
    scores, epsilon, iterations = case.args
    torch.testing.assert_close(_sinkhorn_variant(scores.detach(), epsilon, iterations),
                               sinkhorn(scores.detach(), epsilon, iterations))


def test_collapsed_reference_is_what_swav_computes_for_a_constant_encoder():
    """A SwAV whose encoder outputs one vector for every image: its training loss is the derived closed form."""

    class Constant(torch.nn.Module):
        out_dim = 4

        def __init__(self):
            super().__init__()
            self.vector = torch.nn.Parameter(torch.tensor([[0.3, -1.0, 0.5, 2.0]]))

        def forward(self, x):
            return self.vector.expand(len(x), -1)

    torch.manual_seed(0)
    method = SwAV(Constant(), projection_dim=6, head_layers=1, num_prototypes=5, temperature=0.1, epsilon=0.05)
    views = [torch.rand(8, 1, 8, 8), torch.rand(8, 1, 8, 8)]
    loss = method.training_step((views, torch.zeros(8, dtype=torch.long))).item()
    with torch.no_grad():
        z = torch.nn.functional.normalize(method.project(views[0][:1]), dim=1)[0]
        s = (method.prototypes.weight @ z).double()
    closed_form = float(torch.logsumexp(s / 0.1, 0) - s.mean() / 0.1)
    assert loss == pytest.approx(closed_form, rel=1e-5)
    assert _collapsed_reference(s.tolist(), 0.1, 0.05, True) == pytest.approx(closed_form, rel=1e-6)
    assert closed_form >= math.log(5)  # a collapsed encoder never gets below log K with equipartition
    without = SwAV(Constant(), projection_dim=6, head_layers=1, num_prototypes=5, equipartition=False)
    without.load_state_dict(method.state_dict())
    q, log_p = torch.softmax(s / 0.05, 0), torch.log_softmax(s / 0.1, 0)
    assert without.training_step((views, None)).item() == pytest.approx(float(-(q * log_p).sum()), rel=1e-5)


def test_collapsed_cases_cover_both_settings_and_the_minimum():
    cases = _collapsed_cases()
    assert {case.args[3] for case in cases} == {True, False}
    flat = next(case for case in cases if len(set(case.args[0])) == 1)
    assert _collapsed_reference(*flat.args) == pytest.approx(math.log(len(flat.args[0])))


# --- solutions a learner might write ---------------------------------------------------------

def sinkhorn_solution(scores, epsilon=0.05, iterations=3):
    with torch.no_grad():
        q = torch.exp(scores / epsilon).t()
        q /= q.sum()
        k, b = q.shape
        for _ in range(iterations):
            q /= q.sum(dim=1, keepdim=True)
            q /= k
            q /= q.sum(dim=0, keepdim=True)
            q /= b
        return (q * b).t()


def sinkhorn_log_domain(scores, epsilon=0.05, iterations=3):
    """In the log domain, with the [B, K] layout throughout (columns are prototypes)."""
    log_q = scores.detach() / epsilon
    b, k = log_q.shape
    for _ in range(iterations):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(k)
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(b)
    return (log_q + math.log(b)).exp()


def collapsed_solution(scores, temperature, epsilon, equipartition):
    s = torch.tensor(scores, dtype=torch.float64)
    log_p = torch.log_softmax(s / temperature, dim=0)
    q = torch.full_like(s, 1 / len(s)) if equipartition else torch.softmax(s / epsilon, dim=0)
    return -(q * log_p).sum().item()


def collapsed_closed_form(scores, temperature, epsilon, equipartition):
    """The closed forms with plain Python floats."""
    logits = [x / temperature for x in scores]
    top = max(logits)
    log_z = top + math.log(sum(math.exp(v - top) for v in logits))
    if equipartition:
        return log_z - sum(logits) / len(logits)
    codes = [math.exp(x / epsilon - max(scores) / epsilon) for x in scores]
    total = sum(codes)
    return -sum(c / total * (v - log_z) for c, v in zip(codes, logits))


@pytest.mark.parametrize("task_id, answer", [
    ("08.sinkhorn", sinkhorn_solution), ("08.sinkhorn", sinkhorn_log_domain),
    ("08.collapsed_loss", collapsed_solution), ("08.collapsed_loss", collapsed_closed_form),
])
def test_correct_answers_pass(task_id, answer):
    result = evaluate(task_id, answer)
    assert result.passed, result.message


# --- typical wrong answers: each must fail with a hint naming the mistake --------------------

def sinkhorn_with_gradient(scores, epsilon=0.05, iterations=3):
    q = torch.exp(scores / epsilon).t()
    q = q / q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def samples_first(scores, epsilon=0.05, iterations=3):
    with torch.no_grad():
        q = torch.exp(scores / epsilon).t()
        q /= q.sum()
        k, b = q.shape
        for _ in range(iterations):
            q /= q.sum(dim=0, keepdim=True) * b
            q /= q.sum(dim=1, keepdim=True) * k
        return (q * b).t()


def collapsed(scores, temperature, epsilon, equipartition, *, codes="right", temp=True, sign=1.0, total=False,
              both=False):
    s = torch.tensor(scores, dtype=torch.float64)
    log_p = torch.log_softmax(s / temperature if temp else s, dim=0)
    uniform = torch.full_like(s, 1 / len(s))
    q = {"right": uniform if equipartition else torch.softmax(s / epsilon, dim=0),
         "softmax": torch.softmax(s / epsilon, dim=0),
         "prediction": uniform if equipartition else log_p.exp(),
         "one_hot": uniform if equipartition else torch.nn.functional.one_hot(s.argmax(), len(s)).double()}[codes]
    if total and equipartition:
        q = torch.ones_like(s)
    return (2.0 if both else 1.0) * sign * float(-(q * log_p).sum())


WRONG = {
    "08.sinkhorn": [
        (samples_first, "wrong order"),
        (lambda s, e=0.05, n=3: sinkhorn_solution(s, 1.0, n), "Epsilon is missing"),
        (lambda s, e=0.05, n=3: sinkhorn_solution(s * e * e, e, n), "multiplied by epsilon"),
        (lambda s, e=0.05, n=3: torch.softmax(s.detach() / e, dim=1), "Only the samples are normalised"),
        (lambda s, e=0.05, n=3: sinkhorn_solution(s, e, n).t(), "transposed"),
        (lambda s, e=0.05, n=3: sinkhorn_solution(s, e, n) / len(s), "final rescaling is missing"),
        (lambda s, e=0.05, n=3: sinkhorn_solution(s, e, 3), "iterations is ignored"),
        (lambda s, e=0.05, n=3: sinkhorn_solution(s, e, n - 1), "too few"),
        (lambda s, e=0.05, n=3: sinkhorn_solution(s, e, n + 1), "too many"),
        (sinkhorn_with_gradient, "torch.no_grad()"),
    ],
    "08.collapsed_loss": [
        (lambda s, t, e, eq: math.log(len(s)) if eq else collapsed(s, t, e, eq), "smallest the loss"),
        (lambda s, t, e, eq: collapsed(s, t, e, eq, codes="softmax"), "uniform code 1 / K"),
        (lambda s, t, e, eq: collapsed(s, t, e, eq, temp=False), "temperature is missing"),
        (lambda s, t, e, eq: collapsed(s, t, e, eq, codes="prediction"), "different sharpness"),
        (lambda s, t, e, eq: collapsed(s, t, e, eq, codes="one_hot"), "one-hot argmax"),
        (lambda s, t, e, eq: collapsed(s, t, e, eq, sign=-1.0), "sign is flipped"),
        (lambda s, t, e, eq: collapsed(s, t, e, eq, total=True), "not their sum"),
        (lambda s, t, e, eq: collapsed(s, t, e, eq, both=True), "two directions were added"),
    ],
}


def test_wrong_answers_cover_every_task():
    assert_covers(WRONG, tasks(8))


@each_wrong_answer(WRONG)
def test_wrong_answer_is_rejected_with_its_hint(task_id, answer, mistake):
    assert_rejected_with_hint(task_id, answer, mistake)
