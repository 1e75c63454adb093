"""Lesson 07 checks: the references agree with the package, solutions pass, typical wrong answers get their hint."""

import copy

import pytest
import torch
from wrong_answers import assert_covers, assert_rejected_with_hint, each_wrong_answer

from clcourse.encoders import SmallCNN
from clcourse.grading import evaluate, tasks
from clcourse.grading.lesson07_moco import (
    _key_age_cases,
    _key_age_reference,
    _momentum_cases,
    _momentum_reference,
)
from clcourse.methods import MoCo


def test_lesson_07_has_two_tasks():
    assert [t.id for t in tasks(7)] == ["07.momentum_update", "07.key_age"]


def _moco(momentum=0.9):
    torch.manual_seed(0)
    return MoCo(SmallCNN(1, width=4, out_dim=12), projection_dim=6, hidden_dim=8, queue_size=16,
                momentum=momentum, shuffle_bn_groups=1)


def test_momentum_reference_is_the_methods_update():
    model = _moco(0.9)
    with torch.no_grad():  # the query network trains away from its copy: weights and BN statistics
        for p in [*model.encoder.parameters(), *model.projector.parameters()]:
            p.add_(0.3 * torch.randn_like(p))
        model.encoder(torch.rand(6, 1, 8, 8))
    key_encoder, key_projector = copy.deepcopy(model.key_encoder), copy.deepcopy(model.key_projector)
    _momentum_reference(key_encoder, model.encoder, 0.9)
    _momentum_reference(key_projector, model.projector, 0.9)
    model.momentum_update()
    for mine, theirs in ((key_encoder, model.key_encoder), (key_projector, model.key_projector)):
        for (name, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
            torch.testing.assert_close(a, b, msg=name)
    assert any(not torch.equal(a, b) for a, b in zip(key_encoder.state_dict().values(),
                                                     model.encoder.state_dict().values()))
    for case in _momentum_cases(70):
        key, query, m = case.args
        assert any(not torch.equal(a, b) for a, b in zip(query.state_dict().values(), key.state_dict().values()))


def simulated_key_age(queue_size, batch_size, momentum, steps=20_000):
    """Run MoCo's bookkeeping on ages instead of weights: each network is a distribution over query-encoder steps."""
    key_encoder = torch.zeros(steps, dtype=torch.float64)
    queue = []  # per enqueued batch: the age distribution of the key encoder that made it
    for t in range(steps):
        fresh = torch.zeros(steps, dtype=torch.float64)
        fresh[t] = 1.0
        key_encoder = momentum * key_encoder + (1 - momentum) * fresh if t else fresh
        if t == steps - 1:
            ages = t - torch.arange(steps, dtype=torch.float64)
            return sum(float((weights * ages).sum()) for weights in queue) / len(queue)
        queue = (queue + [key_encoder.clone()])[-(queue_size // batch_size):]


@pytest.mark.parametrize("case", _key_age_cases()[:4], ids=lambda case: case.name)
def test_key_age_reference_is_the_simulated_bookkeeping(case):
    assert simulated_key_age(*case.args) == pytest.approx(_key_age_reference(*case.args), rel=1e-6)


# --- solutions a learner might write ---------------------------------------------------------

def momentum_solution(key_net, query_net, m):
    with torch.no_grad():
        for k, q in zip(key_net.parameters(), query_net.parameters()):
            k.lerp_(q, 1 - m)
        for k, q in zip(key_net.buffers(), query_net.buffers()):
            k.lerp_(q, 1 - m) if k.is_floating_point() else k.copy_(q)


@torch.no_grad()
def momentum_state_dict_solution(key_net, query_net, m):
    """Through the state dicts (their tensors share storage with the networks), mul_ and add_."""
    for k, q in zip(key_net.state_dict().values(), query_net.state_dict().values()):
        if k.is_floating_point():
            k.mul_(m).add_(q, alpha=1 - m)
        else:
            k.copy_(q)


def key_age_solution(queue_size, batch_size, momentum):
    return (queue_size / batch_size + 1) / 2 + momentum / (1 - momentum)


def key_age_by_summing(queue_size, batch_size, momentum):
    """The two means written as the sums they are (truncated far out), as a learner might check them."""
    lag = sum(s * (1 - momentum) * momentum**s for s in range(200_000))
    batches = queue_size // batch_size
    return sum(j + lag for j in range(1, batches + 1)) / batches


@pytest.mark.parametrize("task_id, answer", [
    ("07.momentum_update", momentum_solution), ("07.momentum_update", momentum_state_dict_solution),
    ("07.key_age", key_age_solution), ("07.key_age", key_age_by_summing),
])
def test_correct_answers_pass(task_id, answer):
    result = evaluate(task_id, answer)
    assert result.passed, result.message


# --- typical wrong answers: each must fail with a hint naming the mistake --------------------

def momentum(key_net, query_net, m, *, w=lambda m: 1 - m, params=True, buffers=True, ints="copy",
             no_grad=True, rebind=False, reverse=False):
    pairs = []
    if params:
        pairs += list(zip(query_net.parameters(), key_net.parameters()))
    if buffers:
        pairs += list(zip(query_net.buffers(), key_net.buffers()))
    with torch.set_grad_enabled(not no_grad):
        for q, k in pairs:
            if reverse:
                q, k = k, q
            if rebind:
                k = m * k + (1 - m) * q  # noqa: F841 - the mistake: only the name changes
            elif k.is_floating_point():
                k.mul_(1 - w(m)).add_(q, alpha=w(m))
            elif ints == "copy":
                k.copy_(q)
            elif ints == "average":
                k.mul_(m).add_(q, alpha=1 - m)


def new_key_network(key_net, query_net, m):
    """Builds the averaged network and returns it: the caller's key network is unchanged."""
    new = copy.deepcopy(key_net)
    momentum(new, query_net, m)
    return new


WRONG = {
    "07.momentum_update": [
        (lambda k, q, m: momentum(k, q, m, w=lambda m: m), "m and 1 - m are swapped"),
        (lambda k, q, m: momentum(k, q, m, w=lambda m: 1.0), "query weights were copied"),
        (lambda k, q, m: momentum(k, q, m, rebind=True), "only rebinds the name"),
        (new_key_network, "network you were given is unchanged"),
        (lambda k, q, m: momentum(k, q, m, buffers=False), "Only the parameters were averaged"),
        (lambda k, q, m: momentum(k, q, m, params=False), "Only the buffers were updated"),
        (lambda k, q, m: momentum(k, q, m, ints="keep"), "integer buffers (num_batches_tracked) were left"),
        (lambda k, q, m: momentum(k, q, m, ints="average"), "cannot be averaged"),
        (lambda k, q, m: momentum(k, q, m, reverse=True), "query network was moved"),
        (lambda key_net, query_net, m: momentum(query_net, key_net, m), "argument order"),
        (lambda k, q, m: momentum(k, q, m, no_grad=False), "torch.no_grad()"),
    ],
    "07.key_age": [
        (lambda k, b, m: (k // b + 1) / 2, "Only the queue's age"),
        (lambda k, b, m: m / (1 - m), "Only the key encoder's lag"),
        (lambda k, b, m: (k // b + 1) / 2 + 1 / (1 - m), "length of the averaging window"),
        (lambda k, b, m: k / (2 * b) + m / (1 - m), "off by a half step"),
        (lambda k, b, m: (k + 1) / 2 + m / (1 - m), "counted in keys, not steps"),
        (lambda k, b, m: k / b + m / (1 - m), "oldest negative"),
        (lambda k, b, m: (k / b - 1) / 2 + m / (1 - m), "current step's keys were counted"),
        (lambda k, b, m: (k // b + 1) / 2 + m / (1 - m) ** 2, "exponential moving average"),
    ],
}


def test_wrong_answers_cover_every_task():
    assert_covers(WRONG, tasks(7))


@each_wrong_answer(WRONG)
def test_wrong_answer_is_rejected_with_its_hint(task_id, answer, mistake):
    assert_rejected_with_hint(task_id, answer, mistake)
