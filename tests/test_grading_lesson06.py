"""Lesson 06 checks: the references agree with the package, solutions pass, typical wrong answers get their hint."""

import pytest
import torch
import torch.nn.functional as F

from clcourse.encoders import ProjectionHead, SmallCNN
from clcourse.evaluate import knn_accuracy
from clcourse.grading import evaluate, tasks
from clcourse.grading.lesson06_simclr import _knn_cases, _knn_reference, _simclr_step_reference, _step_cases
from clcourse.losses import nt_xent
from clcourse.methods import SimCLR

from wrong_answers import assert_covers, assert_rejected_with_hint, each_wrong_answer


def test_lesson_06_has_two_tasks():
    assert [t.id for t in tasks(6)] == ["06.simclr_step", "06.knn_predict"]


def test_simclr_step_reference_is_the_methods_training_step():
    torch.manual_seed(0)
    model = SimCLR(SmallCNN(1, width=4, out_dim=12), projection_dim=6, hidden_dim=16, temperature=0.3)
    x1, x2 = torch.rand(2, 8, 1, 8, 8)
    # float32 through two different paths (plain ops against the custom autograd NT-Xent): about 100 ulps
    torch.testing.assert_close(_simclr_step_reference(model.encoder, model.projector, x1, x2, 0.3),
                               model.training_step(([x1, x2], None)), rtol=1e-5, atol=1e-5)
    for case in _step_cases():
        encoder, projector = case.args[:2]
        assert isinstance(encoder, SmallCNN) and isinstance(projector, ProjectionHead) and encoder.training


def test_knn_reference_is_the_prediction_inside_knn_accuracy():
    for case in _knn_cases():
        train_x, train_y, test_x, k, t = case.args
        predicted = _knn_reference(*case.args)
        assert predicted.dtype == torch.int64 and predicted.shape == (len(test_x),)
        # score the reference's own predictions as if they were the truth: knn_accuracy must agree fully
        assert knn_accuracy(train_x, train_y, test_x, predicted, k=k, temperature=t) == 1.0


# --- solutions a learner might write ---------------------------------------------------------

def step_solution(encoder, projector, x1, x2, temperature=0.5):
    z1, z2 = projector(encoder(torch.cat([x1, x2]))).chunk(2)
    return nt_xent(z1, z2, temperature)


def knn_loop_solution(train_x, train_y, test_x, k=20, temperature=0.07):
    """A per-class loop instead of scatter_add_."""
    sim = F.normalize(test_x, dim=1) @ F.normalize(train_x, dim=1).T
    top, idx = sim.topk(min(k, len(train_x)), dim=1)
    weights = (top / temperature).exp()
    scores = torch.stack([(weights * (train_y[idx] == c)).sum(1) for c in range(int(train_y.max()) + 1)], 1)
    return scores.argmax(1)


@pytest.mark.parametrize("task_id, answer", [("06.simclr_step", step_solution), ("06.knn_predict", knn_loop_solution)])
def test_correct_answers_pass(task_id, answer):
    result = evaluate(task_id, answer)
    assert result.passed, result.message


# --- typical wrong answers: each must fail with a hint naming the mistake --------------------

def step(encoder, projector, x1, x2, temperature=0.5, *, head=True, together=True, second=None, mode=None,
         detach=False, t=None, norm_h=False):
    if mode == "eval":
        encoder.eval()
        projector.eval()
    x2 = x1 if second == "x1" else x2

    def g_f(x):
        h = encoder(x)
        h = F.normalize(h, dim=1) if norm_h else h
        return projector(h) if head else h

    z1, z2 = g_f(torch.cat([x1, x2])).chunk(2) if together else (g_f(x1), g_f(x2))
    if detach:
        z1, z2 = z1.detach(), z2.detach()
    return nt_xent(z1, z2, temperature if t is None else t)


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
    "06.simclr_step": [
        (lambda f, g, a, b, t=0.5: step(f, g, a, b, t, head=False), "not the projections"),
        (lambda f, g, a, b, t=0.5: step(f, g, a, b, t, together=False), "separate passes"),
        (lambda f, g, a, b, t=0.5: step(f, g, a, b, t, mode="eval"), "eval mode"),
        (lambda f, g, a, b, t=0.5: step(f, g, a, b, t, second="x1"), "first view x1"),
        (lambda f, g, a, b, t=0.5: step(f, g, a, b, t, t=0.5), "temperature argument is ignored"),
        (lambda f, g, a, b, t=0.5: step(f, g, a, b, t, norm_h=True), "normalised before the projection head"),
        (lambda f, g, a, b, t=0.5: step(f, g, a, b, t, detach=True), "cut off"),
        (lambda f, g, a, b, t=0.5: step(f, g, a, b, t).item(), "don't call .item()"),
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
