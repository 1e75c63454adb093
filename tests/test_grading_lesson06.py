"""Lesson 06 checks: the references agree with the package, solutions pass, typical wrong answers get their hint."""

import pytest
import torch
import torch.nn.functional as F
from wrong_answers import assert_covers, assert_rejected_with_hint, each_wrong_answer

from clcourse.evaluate import knn_accuracy
from clcourse.grading import evaluate, tasks
from clcourse.grading.lesson06_simclr import (
    _knn_cases,
    _knn_reference,
    _pair_cases,
    _pair_gradient_reference,
)
from clcourse.losses import nt_xent


def test_lesson_06_has_two_tasks():
    assert [t.id for t in tasks(6)] == ["06.pair_gradient", "06.knn_predict"]


@pytest.mark.parametrize("case", _pair_cases(), ids=lambda case: case.name)
def test_pair_gradient_is_autograd_through_the_packages_nt_xent(case):
    """One variable per pair: the autograd gradient of nt_xent with respect to S, plus its transpose."""
    z1, z2, t = case.args
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    similarities = (z @ z.T).requires_grad_()
    n2 = len(z)
    logits = (similarities / t).masked_fill(torch.eye(n2, dtype=torch.bool), float("-inf"))
    loss = F.cross_entropy(logits, (torch.arange(n2) + n2 // 2) % n2)
    torch.testing.assert_close(loss, nt_xent(z1, z2, t))
    (gradient,) = torch.autograd.grad(loss, similarities)
    torch.testing.assert_close(_pair_gradient_reference(*case.args), (gradient + gradient.T).fill_diagonal_(0))


def test_knn_reference_is_the_prediction_inside_knn_accuracy():
    for case in _knn_cases():
        train_x, train_y, test_x, k, t = case.args
        predicted = _knn_reference(*case.args)
        assert predicted.dtype == torch.int64 and predicted.shape == (len(test_x),)
        # score the reference's own predictions as if they were the truth: knn_accuracy must agree fully
        assert knn_accuracy(train_x, train_y, test_x, predicted, k=k, temperature=t) == 1.0


# --- solutions a learner might write ---------------------------------------------------------

def pair_solution(z1, z2, temperature=0.5):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    p = (z @ z.T / temperature).fill_diagonal_(-torch.inf).softmax(1)
    y = torch.eye(2 * n).roll(n, dims=1)
    g = (p - y) / (2 * n * temperature)
    return (g + g.T).fill_diagonal_(0)


def knn_loop_solution(train_x, train_y, test_x, k=20, temperature=0.07):
    """A per-class loop instead of scatter_add_."""
    sim = F.normalize(test_x, dim=1) @ F.normalize(train_x, dim=1).T
    top, idx = sim.topk(min(k, len(train_x)), dim=1)
    weights = (top / temperature).exp()
    scores = torch.stack([(weights * (train_y[idx] == c)).sum(1) for c in range(int(train_y.max()) + 1)], 1)
    return scores.argmax(1)


@pytest.mark.parametrize("task_id, answer", [("06.pair_gradient", pair_solution), ("06.knn_predict", knn_loop_solution)])
def test_correct_answers_pass(task_id, answer):
    result = evaluate(task_id, answer)
    assert result.passed, result.message


# --- typical wrong answers: each must fail with a hint naming the mistake --------------------

def pair(z1, z2, t=0.5, *, both=True, mean=True, tpow=1, sign=1, pull=True, mask=True, by_autograd=False):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = len(z)
    if by_autograd:
        s = (z @ z.T).requires_grad_()
        logits = (s / t).masked_fill(torch.eye(n2, dtype=torch.bool), float("-inf"))
        (g,) = torch.autograd.grad(F.cross_entropy(logits, (torch.arange(n2) + n2 // 2) % n2), s)
        return (g + g.T).fill_diagonal_(0)
    logits = z @ z.T / t
    p = (logits.fill_diagonal_(-torch.inf) if mask else logits).softmax(1)
    y = torch.eye(n2, dtype=p.dtype).roll(n2 // 2, dims=1)
    g = sign * (p - (y if pull else 0)) / t**tpow / (n2 if mean else 1)
    g = g + g.T if both else g
    return g.fill_diagonal_(0) if mask else g


def knn(train_x, train_y, test_x, k=20, temperature=0.07, *, norm=True, weight="exp", largest=True, clamp=True,
        n_classes="max", skip_nearest=False):
    a, b = (F.normalize(test_x, dim=1), F.normalize(train_x, dim=1)) if norm else (test_x, train_x)
    sim = a @ b.T
    k = min(k, len(train_x)) if clamp else k
    top, idx = sim.topk(k + skip_nearest, dim=1, largest=largest)
    top, idx = top[:, int(skip_nearest):], idx[:, int(skip_nearest):]
    w = {"exp": (top / temperature).exp(), "count": torch.ones_like(top), "sim": top,
         "times": (top * temperature).exp()}[weight]
    c = int(train_y.max()) + 1 if n_classes == "max" else len(train_y.unique())
    return torch.zeros(len(test_x), c, dtype=w.dtype).scatter_add_(1, train_y[idx], w).argmax(1)


WRONG = {
    "06.pair_gradient": [
        (lambda *a: pair(*a, both=False), "Only anchor i's row"),
        (lambda *a: pair(*a, mean=False), "1/(2N) of the mean"),
        (lambda *a: pair(*a, tpow=0), "1/t is missing"),
        (lambda *a: pair(*a, tpow=2), "appears twice"),
        (lambda *a: pair(*a, sign=-1), "sign is flipped"),
        (lambda *a: pair(*a, pull=False), "pull is missing"),
        (lambda *a: pair(*a, mask=False), "anchor itself was left"),
        (lambda *a: pair(*a, by_autograd=True), "autograd switched off"),
    ],
    "06.knn_predict": [
        (lambda *a: knn(*a, norm=False), "not L2-normalised"),
        (lambda *a: knn(*a, weight="count"), "one vote"),
        (lambda *a: knn(*a, weight="sim"), "similarity s itself"),
        (lambda *a: knn(*a, weight="times"), "multiplies"),
        (lambda *a: knn(*a, largest=False), "least similar"),
        (lambda *a: knn(*a, skip_nearest=True), "nearest neighbour was dropped"),
        (lambda *a: knn(*a, clamp=False), "min(k, len(train_x))"),
        (lambda *a: knn(*a, n_classes="unique"), "train_y.max() + 1"),
        (lambda *a: knn(*a).float(), "wrong dtype"),
    ],
}


def test_wrong_answers_cover_every_task():
    assert_covers(WRONG, tasks(6))


@each_wrong_answer(WRONG)
def test_wrong_answer_is_rejected_with_its_hint(task_id, answer, mistake):
    assert_rejected_with_hint(task_id, answer, mistake)
