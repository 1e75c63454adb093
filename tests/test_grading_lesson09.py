"""Lesson 09 checks: the references agree with the package, solutions pass, typical wrong answers get their hint."""

import random

import pytest
import torch
import torch.nn.functional as F
from wrong_answers import assert_covers, assert_rejected_with_hint, each_wrong_answer

from clcourse.grading import evaluate, tasks
from clcourse.grading.lesson09_nnclr import (
    _nnclr_cases,
    _nnclr_reference,
    _own_share_cases,
    _own_share_reference,
)
from clcourse.methods import NNCLR


def test_lesson_09_has_two_tasks():
    assert [t.id for t in tasks(9)] == ["09.nnclr_loss", "09.own_projection_share"]


class Flat(torch.nn.Module):
    out_dim = 64

    def forward(self, x):
        return x.flatten(1)


def test_nnclr_reference_is_the_methods_step_loss():
    """A full support set and a batch: the method's training loss equals the reference on its z, p and support."""
    torch.manual_seed(0)
    method = NNCLR(Flat(), projection_dim=6, head_layers=1, prediction_layers=1, support_size=16, temperature=0.2)
    method.update_support_set(torch.randn(16, 6))
    support = method.support_set.clone()
    x1, x2 = torch.rand(5, 1, 8, 8), torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        z1, z2 = method.project(x1), method.project(x2)
        p1, p2 = method.predictor(z1), method.predictor(z2)
        expected = _nnclr_reference(z1, z2, p1, p2, support, 0.2)
        assert method.training_step(([x1, x2], None)).item() == pytest.approx(expected.item(), rel=1e-5)


def simulated_own_share(support_size, epoch_size, batch_size, epochs=60, seed=0):
    """Shuffle the epochs, keep the FIFO support set of image ids (written after each lookup), count."""
    rng = random.Random(seed)
    support, hits, lookups = [], 0, 0
    for epoch in range(epochs):
        order = list(range(epoch_size))
        rng.shuffle(order)
        for start in range(0, epoch_size, batch_size):
            batch = order[start:start + batch_size]
            if epoch > 2:  # the support set has filled and forgotten its start
                kept = set(support)
                hits += sum(image in kept for image in batch)
                lookups += len(batch)
            support = (support + batch)[-support_size:]
    return hits / lookups


@pytest.mark.parametrize("case", _own_share_cases()[:6], ids=lambda case: case.name)
def test_own_share_reference_is_the_simulated_support_set(case):
    assert simulated_own_share(*case.args) == pytest.approx(_own_share_reference(*case.args), abs=0.02)


def test_own_share_reference_is_continuous_at_one_epoch_and_reaches_one():
    assert _own_share_reference(1024, 1024, 256) == pytest.approx(10 / 16)
    assert _own_share_reference(7 * 256, 1024, 256) == 1.0 and _own_share_reference(512, 1024, 256) == 3 / 16


# --- solutions a learner might write ---------------------------------------------------------

def nnclr_solution(z1, z2, p1, p2, support, temperature=0.1):
    def positives(z):
        return support[(F.normalize(z, dim=1) @ support.T).argmax(dim=1)]

    def loss(nn, p):
        logits = F.normalize(nn, dim=1) @ F.normalize(p, dim=1).T / temperature
        return F.cross_entropy(logits, torch.arange(len(nn)))

    return (loss(positives(z1), p2) + loss(positives(z2), p1)) / 2


def nnclr_by_distance(z1, z2, p1, p2, support, temperature=0.1):
    """The neighbour by smallest Euclidean distance between unit vectors: the same as the largest cosine."""
    nn1 = support[torch.cdist(F.normalize(z1, dim=1), support).argmin(dim=1)]
    nn2 = support[torch.cdist(F.normalize(z2, dim=1), support).argmin(dim=1)]
    loss = 0
    for nn, p in ((nn1, p2), (nn2, p1)):
        sim = F.cosine_similarity(nn[:, None], p[None], dim=2) / temperature
        loss = loss + (torch.logsumexp(sim, dim=1) - sim.diagonal()).mean() / 2
    return loss


def own_share_solution(support_size, epoch_size, batch_size):
    n, m = epoch_size // batch_size, support_size // batch_size
    pairs = sum(1 for i in range(n) for j in range(n) if n - j + i <= m)
    return pairs / n**2


def own_share_closed_form(support_size, epoch_size, batch_size):
    n, m = epoch_size / batch_size, support_size / batch_size
    if m >= 2 * n - 1:
        return 1.0
    return m * (m + 1) / (2 * n * n) if m <= n else 1 - (2 * n - m - 1) * (2 * n - m) / (2 * n * n)


@pytest.mark.parametrize("task_id, answer", [
    ("09.nnclr_loss", nnclr_solution), ("09.nnclr_loss", nnclr_by_distance),
    ("09.own_projection_share", own_share_solution), ("09.own_projection_share", own_share_closed_form),
])
def test_correct_answers_pass(task_id, answer):
    result = evaluate(task_id, answer)
    assert result.passed, result.message


# --- typical wrong answers: each must fail with a hint naming the mistake --------------------

def nnclr(z1, z2, p1, p2, support, t=0.1, *, own=False, cand="p", argmin=False, one=False, transposed=False,
          same_view=False, no_t=False):
    def positives(z):
        if own:
            return z
        scores = F.normalize(z, dim=1) @ support.T
        return support[scores.argmin(dim=1) if argmin else scores.argmax(dim=1)]

    def loss(nn, c):
        logits = F.normalize(nn, dim=1) @ F.normalize(c, dim=1).T / (1.0 if no_t else t)
        return F.cross_entropy(logits.T if transposed else logits, torch.arange(len(nn)))

    c1, c2 = (p1, p2) if cand == "p" else (z1, z2)
    if same_view:
        c1, c2 = c2, c1
    first = loss(positives(z1), c2)
    return first if one else (first + loss(positives(z2), c1)) / 2


def share(q, e, b, kind):
    n, m = e // b, q // b
    if kind == "no_cap":
        return m * (m + 1) / (2 * n * n)
    if kind == "minus":
        return m * (m - 1) / (2 * n * n) if m <= n else 1 - (2 * n - m + 1) * (2 * n - m) / (2 * n * n)
    if kind == "continuous":
        return q * q / (2 * e * e) if q <= e else 1 - (2 * e - q) ** 2 / (2 * e * e)
    raise ValueError(kind)


WRONG = {
    "09.nnclr_loss": [
        (lambda *a: nnclr(*a, own=True), "positives are the projections themselves"),
        (lambda *a: nnclr(*a, cand="z"), "candidates are the projections"),
        (lambda *a: nnclr(*a, argmin=True), "farthest row"),
        (lambda *a: nnclr(*a, one=True), "Only one direction"),
        (lambda *a: nnclr(*a, transposed=True), "wrong side"),
        (lambda *a: nnclr(*a, same_view=True), "same* view"),
        (lambda *a: nnclr(*a, no_t=True), "temperature is missing"),
    ],
    "09.own_projection_share": [
        (lambda q, e, b: min(1.0, q / e), "Q / E is the share of the epoch"),
        (lambda q, e, b: min(1.0, q / (2 * e)), "Q / (2E) is not the share"),
        (lambda q, e, b: share(q, e, b, "continuous"), "continuous approximation"),
        (lambda q, e, b: share(q, e, b, "no_cap"), "cannot exceed 1"),
        (lambda q, e, b: share(q, e, b, "minus"), "were left out"),
    ],
}


def test_wrong_answers_cover_every_task():
    assert_covers(WRONG, tasks(9))


@each_wrong_answer(WRONG)
def test_wrong_answer_is_rejected_with_its_hint(task_id, answer, mistake):
    assert_rejected_with_hint(task_id, answer, mistake)


def test_with_the_batch_as_support_set_the_positives_are_the_projections():
    """The 'predict first' of task 1: each projection's nearest row is itself, so NNCLR becomes z against p."""
    from clcourse.losses import paired_info_nce

    case = next(case for case in _nnclr_cases() if "exactly the 8 projections" in case.name)
    z1, z2, p1, p2, support, t = case.args
    expected = (paired_info_nce(z1, p2, t) + paired_info_nce(z2, p1, t)) / 2
    torch.testing.assert_close(_nnclr_reference(*case.args), expected)
