"""Lesson 07 checks: the references agree with the package, solutions pass, typical wrong answers get their hint."""

import copy

import pytest
import torch

from clcourse.encoders import SmallCNN
from clcourse.grading import evaluate, tasks
from clcourse.grading.lesson07_moco import (
    _enqueue_cases, _enqueue_reference, _momentum_cases, _momentum_reference,
)
from clcourse.methods import MoCo

from wrong_answers import assert_covers, assert_rejected_with_hint, each_wrong_answer


def test_lesson_07_has_two_tasks():
    assert [t.id for t in tasks(7)] == ["07.momentum_update", "07.enqueue"]


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
    for case in _momentum_cases():
        key, query, m = case.args
        assert any(not torch.equal(a, b) for a, b in zip(query.state_dict().values(), key.state_dict().values()))


def test_enqueue_reference_is_the_methods_enqueue():
    model = _moco()
    for case in _enqueue_cases():
        queue, ptr, keys = case.fresh()[0]
        model.queue = queue.clone()
        model.queue_ptr = torch.as_tensor(ptr).clone()
        model.enqueue(keys)
        new_queue, new_ptr = _enqueue_reference(*case.fresh()[0])
        assert torch.equal(model.queue, new_queue) and new_queue.dtype == queue.dtype, case.name
        assert int(model.queue_ptr) == new_ptr and isinstance(new_ptr, int), case.name
        assert not torch.equal(new_queue, queue)


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


def enqueue_solution(queue, ptr, keys):
    rows = (ptr + torch.arange(len(keys))) % len(queue)
    new_queue = queue.clone()
    new_queue[rows] = keys.detach().to(queue.dtype)
    return new_queue, (ptr + len(keys)) % len(queue)


def enqueue_index_copy_solution(queue, ptr, keys):
    """Out-of-place index_copy, a Python-int pointer."""
    k, b = queue.shape[0], keys.shape[0]
    rows = (int(ptr) + torch.arange(b)) % k
    return queue.index_copy(0, rows, keys.detach().to(queue.dtype)), (int(ptr) + b) % k


@pytest.mark.parametrize("task_id, answer", [
    ("07.momentum_update", momentum_solution), ("07.momentum_update", momentum_state_dict_solution),
    ("07.enqueue", enqueue_solution), ("07.enqueue", enqueue_index_copy_solution),
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


def enqueue(queue, ptr, keys, *, rows=lambda p, b, k: (p + torch.arange(b)) % k, new_ptr=lambda p, b, k: (p + b) % k,
            detach=True, cast=True, in_place=False, layout="ring"):
    k, b = queue.shape[0], keys.shape[0]
    keys = keys.detach() if detach else keys
    keys = keys.to(queue.dtype) if cast else keys
    if layout == "front":
        return torch.cat([keys, queue[:k - b]]), new_ptr(ptr, b, k)
    if layout == "back":
        return torch.cat([queue[b:], keys]), new_ptr(ptr, b, k)
    new = queue if in_place else queue.clone()
    new[rows(ptr, b, k)] = keys
    return new, new_ptr(ptr, b, k)


def enqueue_in_place_like_lesson_04(queue, ptr, keys):
    rows = (ptr + torch.arange(len(keys))) % len(queue)
    queue[rows] = keys.detach().to(queue.dtype)
    return (ptr + len(keys)) % len(queue)


def enqueue_advancing_ptr_in_place(queue, ptr, keys):
    new, _ = enqueue(queue, ptr, keys)
    ptr += len(keys)
    ptr %= len(queue)
    return new, ptr


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
    "07.enqueue": [
        (lambda q, p, k: enqueue(q, p, k, new_ptr=lambda p, b, K: p + b), "does not wrap around"),
        (lambda q, p, k: enqueue(q, p, k, new_ptr=lambda p, b, K: p), "pointer was not advanced"),
        (lambda q, p, k: enqueue(q, p, k, rows=lambda p, b, K: torch.arange(b)), "written at row 0"),
        (lambda q, p, k: enqueue(q, p, k, rows=lambda p, b, K: (p + b + torch.arange(b)) % K),
         "advanced before writing"),
        (lambda q, p, k: enqueue(q, p, k, rows=lambda p, b, K: (p - b + torch.arange(b)) % K), "newest keys"),
        (lambda q, p, k: enqueue(q, p, k, rows=lambda p, b, K: slice(p, p + b)), "wrap around"),
        (lambda q, p, k: enqueue(q, p, k, layout="front"), "new keys in front"),
        (lambda q, p, k: enqueue(q, p, k, layout="back"), "appended at the end"),
        (lambda q, p, k: enqueue(q, p, k, detach=False), "keys.detach()"),
        (lambda q, p, k: enqueue(q, p, k, cast=False), "keys.to(queue.dtype)"),
        (lambda q, p, k: enqueue(q, p, k, in_place=True), "queue.clone()"),
        (enqueue_in_place_like_lesson_04, "queue.clone()"),
        (enqueue_advancing_ptr_in_place, "ptr += B"),
        (lambda q, p, k: enqueue(q, p, k)[0], "expected a tuple of 2 items"),
    ],
}


def test_wrong_answers_cover_every_task():
    assert_covers(WRONG, tasks(7))


@each_wrong_answer(WRONG)
def test_wrong_answer_is_rejected_with_its_hint(task_id, answer, mistake):
    assert_rejected_with_hint(task_id, answer, mistake)
