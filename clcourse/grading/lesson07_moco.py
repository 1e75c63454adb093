"""Lesson 07 tasks: MoCo's momentum update of the key encoder, and its FIFO queue as a pure function.

[1] He et al., Momentum Contrast for Unsupervised Visual Representation Learning (MoCo), CVPR 2020.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from clcourse.encoders import SmallCNN
from clcourse.grading.harness import (
    Case, Failure, Mistake, call_answer, compare_with_reference, describe, diagnose, first_difference, try_run,
)
from clcourse.grading.registry import task

# --- 07.momentum_update ----------------------------------------------------------------------


@torch.no_grad()
def _momentum_reference(key_net: nn.Module, query_net: nn.Module, m: float) -> None:
    """What clcourse.methods.MoCo.momentum_update does to one (key, query) pair of networks [1] (eq. 2).

    theta_k <- m theta_k + (1 - m) theta_q, in place, for every parameter and floating-point
    buffer (batch norm's running statistics); integer buffers (num_batches_tracked) are copied.
    """
    _momentum_variant(key_net, query_net, m)


@torch.no_grad()
def _momentum_variant(key_net, query_net, m, *, weight=None, params=True, buffers=True, ints="copy",
                      target="key"):
    w = 1.0 - m if weight is None else weight(m)
    pairs = []
    if params:
        pairs += list(zip(query_net.parameters(), key_net.parameters()))
    if buffers:
        pairs += list(zip(query_net.buffers(), key_net.buffers()))
    for q, k in pairs:
        if target == "query":
            q, k = k, q
        if k.is_floating_point():
            k.lerp_(q, w)
        elif ints == "copy":
            k.copy_(q)


_MOMENTUM_MISTAKES = [
    Mistake("m and 1 - m are swapped: the key network keeps the fraction m of its own weights, "
            "theta_k <- m * theta_k + (1 - m) * theta_q (with m = 0.99 it moves only 1% of the way).",
            lambda k, q, m: _momentum_variant(k, q, m, weight=lambda m: m)),
    Mistake("The query weights were copied into the key network (m ignored): MoCo's key encoder is a slowly "
            "moving average, theta_k <- m * theta_k + (1 - m) * theta_q.",
            lambda k, q, m: _momentum_variant(k, q, m, weight=lambda m: 1.0)),
    Mistake("The key network you were given is unchanged: update its tensors in place (k.mul_(m).add_(q, "
            "alpha=1 - m) or k.lerp_(q, 1 - m)). `k = m * k + (1 - m) * q` only rebinds the name k, and a new "
            "network that you build or return is ignored: MoCo keeps using its own key encoder.",
            lambda k, q, m: None),
    Mistake("Only the parameters were averaged: the buffers (batch norm's running_mean and running_var) must "
            "follow the same rule, and the integer buffer num_batches_tracked is copied, as "
            "clcourse.methods.MoCo.momentum_update does (loop over .buffers() too).",
            lambda k, q, m: _momentum_variant(k, q, m, buffers=False)),
    Mistake("Only the buffers were updated, the parameters (weights and biases) were forgotten: loop over "
            ".parameters() as well as .buffers().",
            lambda k, q, m: _momentum_variant(k, q, m, params=False)),
    Mistake("The integer buffers (num_batches_tracked) were left as they were: they cannot be averaged, "
            "copy them from the query network (k.copy_(q) when not k.is_floating_point()).",
            lambda k, q, m: _momentum_variant(k, q, m, ints="keep")),
    Mistake("The query network was moved towards the key network: the update reads theta_q and writes "
            "theta_k only (the query network is trained by the optimiser, never by the momentum update). Check the "
            "argument order: momentum_update(key_net, query_net, m).",
            lambda k, q, m: _momentum_variant(k, q, m, target="query")),
]


def _trained_copy(query: nn.Module, x: torch.Tensor, frozen_key: bool = True) -> tuple[nn.Module, nn.Module]:
    """(key, query): key a copy of query as MoCo makes it; then the query "trains" away from it.

    Its weights get noise and a few forward passes in training mode change its batch-norm
    running statistics and num_batches_tracked, so every tensor of the pair differs.
    """
    key = copy.deepcopy(query)
    if frozen_key:
        key.requires_grad_(False)
    with torch.no_grad():
        for p in query.parameters():
            p.add_(0.5 * torch.randn_like(p))
    query.train()
    with torch.no_grad():
        for _ in range(3):
            query(x + 0.3 * torch.randn_like(x))
    return key, query


def _mlp(dtype=torch.float32) -> nn.Module:
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).to(dtype)


def _momentum_cases() -> list[Case]:
    torch.manual_seed(70)  # reproducible weights (check() restores the learner's RNG)
    mlp = "nn.Sequential(Linear(5, 8), BatchNorm1d(8), ReLU(), Linear(8, 3))"
    return [
        Case(f"query_net {mlp} trained a little (new weights and batch-norm statistics) since key_net was "
             "copied from it (requires_grad False), m=0.9",
             (*_trained_copy(_mlp(), torch.randn(6, 5)), 0.9)),
        Case("query_net SmallCNN(1, width=2, out_dim=4) and key_net, its momentum copy, m=0.99",
             (*_trained_copy(SmallCNN(1, width=2, out_dim=4), torch.rand(4, 1, 8, 8)), 0.99)),
        Case(f"query_net {mlp} and its copy key_net, m=0 (key_net becomes a copy of query_net)",
             (*_trained_copy(_mlp(), torch.randn(6, 5)), 0.0)),
        Case(f"query_net {mlp} and its copy key_net, m=1 (key_net's weights stay frozen)",
             (*_trained_copy(_mlp(), torch.randn(6, 5)), 1.0)),
        Case(f"query_net {mlp} in float64 (keep the dtype) and its copy key_net, m=0.999",
             (*_trained_copy(_mlp(torch.float64), torch.randn(6, 5, dtype=torch.float64)), 0.999)),
        Case(f"query_net {mlp} and a copy key_net whose parameters still require gradients (do the update "
             "under torch.no_grad()), m=0.7",
             (*_trained_copy(_mlp(), torch.randn(6, 5), frozen_key=False), 0.7)),
    ]


def _state(net: nn.Module, which: str) -> list[tuple[str, torch.Tensor]]:
    return ([(f"{which} network's parameter {n}", p.detach().clone()) for n, p in net.named_parameters()]
            + [(f"{which} network's buffer {n}", b.detach().clone()) for n, b in net.named_buffers()])


def _observe_momentum(fn, case: Case):
    """What MoCo sees after the call: every tensor of the key network, and of the query network."""
    (key, query, m), _ = case.fresh()
    fn(key, query, m)
    return _state(key, "key") + _state(query, "query")


def _first_state_difference(got, expected) -> tuple[int, str] | None:
    for i, ((name, g), (_, e)) in enumerate(zip(got, expected)):
        diff = first_difference(g, e)
        if diff is not None:
            return i, f"the {name}: {diff}"
    return None


def _state_difference(got, expected) -> str | None:
    found = _first_state_difference(got, expected)
    return None if found is None else found[1]


_MOMENTUM_ERRORS = [
    ("leaf variable that requires grad", "Do the update under torch.no_grad() (a `with torch.no_grad():` "
                                         "block or the @torch.no_grad() decorator): it is not part of the "
                                         "gradient computation, and in-place changes to tensors that require "
                                         "gradients are refused outside it."),
    ("Long", "num_batches_tracked is an integer buffer: it cannot be averaged, copy it instead "
             "(k.copy_(q) when not k.is_floating_point())."),
]


def _updated_in_place(key_before: list[torch.Tensor], key: nn.Module, case: Case) -> None:
    """The key network must keep its own tensors, outside the autograd graph."""
    params = list(key.parameters())
    if any(a is not b for a, b in zip(key_before, params)):
        raise Failure(case.name, "the key network's parameters were replaced by new tensors",
                      hint="Write into the existing tensors (k.mul_(m).add_(q, alpha=1 - m), k.lerp_(q, 1 - m) "
                           "or k.copy_(...)): MoCo's optimiser and checkpoints hold on to them.")
    if any(p.grad_fn is not None for p in params):
        raise Failure(case.name, "the key network's parameters are now part of the autograd graph",
                      hint="Do the update under torch.no_grad() (a `with torch.no_grad():` block or the "
                           "@torch.no_grad() decorator): otherwise every step links the key encoder to the "
                           "query encoder's graph and backward() reaches it.")


@task("07.momentum_update", "MoCo's momentum update of the key network, in place, parameters and buffers", 2)
def check_momentum_update(answer) -> None:
    """Compare the key and query networks after the call with clcourse.methods.MoCo.momentum_update's rule."""
    cases = _momentum_cases()
    observed = []
    for i, case in enumerate(cases):
        (key, query, m), _ = case.fresh()
        key_before = list(key.parameters())
        call_answer(answer, (key, query, m), {}, case.name, _MOMENTUM_ERRORS)
        got = _state(key, "key") + _state(query, "query")
        observed.append(got)
        want = _observe_momentum(_momentum_reference, case)
        found = _first_state_difference(got, want)
        if found is not None:
            k, problem = found
            observed += [try_run(answer, later, _observe_momentum) for later in cases[i + 1:]]
            hint = diagnose(observed, _MOMENTUM_MISTAKES, cases, i, _observe_momentum, _state_difference) or (
                "Under torch.no_grad(): for k, q in zip(key_net.parameters(), query_net.parameters()): "
                "k.mul_(m).add_(q, alpha=1 - m); the same for .buffers(), copying the integer ones.")
            raise Failure(case.name, problem, expected=describe(want[k][1]), received=describe(got[k][1]),
                          hint=hint)
        _updated_in_place(key_before, key, case)


# --- 07.enqueue ------------------------------------------------------------------------------


def _enqueue_reference(queue: torch.Tensor, ptr, keys: torch.Tensor) -> tuple[torch.Tensor, int]:
    """What clcourse.methods.MoCo._enqueue does to its queue and queue_ptr buffers [1], as a pure function.

    Shapes: queue [K, D], ptr int or 0-d int64 tensor (the oldest row), keys [B, D] with B <= K;
    returns (a new queue [K, D] in the queue's dtype, rows (ptr + arange(B)) % K replaced by the
    detached keys, and the new pointer (ptr + B) % K as an int). The inputs are left unchanged.
    """
    k, b = queue.shape[0], keys.shape[0]
    rows = (ptr + torch.arange(b)) % k
    new = queue.clone()
    new[rows] = keys.detach().to(queue.dtype)
    return new, int((ptr + b) % k)


def _enqueue_variant(queue, ptr, keys, *, start=None, new_ptr=None, layout="ring"):
    k, b = queue.shape[0], keys.shape[0]
    keys = keys.detach().to(queue.dtype)
    if layout == "front":
        new = torch.cat([keys, queue[:k - b]])
    elif layout == "back":
        new = torch.cat([queue[b:], keys])
    else:
        first = ptr if start is None else start(ptr, b)
        new = queue.clone()
        new[(first + torch.arange(b)) % k] = keys
    return new, int((ptr + b) % k if new_ptr is None else new_ptr(ptr, b, k))


_ENQUEUE_MISTAKES = [
    Mistake("The returned pointer does not wrap around: return (ptr + B) % K, the next row to overwrite.",
            lambda q, p, k: _enqueue_variant(q, p, k, new_ptr=lambda p, b, K: p + b)),
    Mistake("The pointer was not advanced: return (ptr + B) % K, so that the next batch overwrites the "
            "oldest keys instead of the ones just written.",
            lambda q, p, k: _enqueue_variant(q, p, k, new_ptr=lambda p, b, K: p)),
    Mistake("The keys were written at row 0 instead of at row ptr: the queue must replace its oldest entries, "
            "rows ptr, ptr + 1, ... (modulo K).",
            lambda q, p, k: _enqueue_variant(q, p, k, start=lambda p, b: 0)),
    Mistake("The pointer was advanced before writing: the keys landed at rows ptr + B, ... and the oldest rows "
            "(ptr, ...) survived. Write at ptr first, then return (ptr + B) % K.",
            lambda q, p, k: _enqueue_variant(q, p, k, start=lambda p, b: p + b)),
    Mistake("The keys overwrote the B rows just before ptr: those are the newest keys (the previous batch). "
            "ptr points at the oldest row; write the keys at rows ptr, ptr + 1, ... (modulo K).",
            lambda q, p, k: _enqueue_variant(q, p, k, start=lambda p, b: p - b)),
    Mistake("The queue was shifted (new keys in front, the last rows dropped): MoCo's queue is a ring buffer, "
            "rows stay where they are and the keys overwrite rows ptr, ..., ptr + B - 1 (modulo K).",
            lambda q, p, k: _enqueue_variant(q, p, k, layout="front")),
    Mistake("The queue was shifted (first rows dropped, new keys appended at the end): MoCo's queue is a ring "
            "buffer, rows stay where they are and the keys overwrite rows ptr, ..., ptr + B - 1 (modulo K).",
            lambda q, p, k: _enqueue_variant(q, p, k, layout="back")),
]


def _enqueue_cases() -> list[Case]:
    g = torch.Generator().manual_seed(71)

    def unit(n, d=3, dtype=torch.float32):
        x = torch.randn(n, d, generator=g)
        return (x / x.norm(dim=1, keepdim=True)).to(dtype)

    def ptr(i):
        return torch.tensor(i)  # MoCo's queue_ptr buffer: a 0-d int64 tensor

    return [
        Case("queue K=8, D=3, ptr=tensor(0), B=2 keys", (unit(8), ptr(0), unit(2))),
        Case("K=8, ptr=tensor(4), B=4 keys (the batch ends exactly at the end of the queue)",
             (unit(8), ptr(4), unit(4))),
        Case("K=8, ptr=6 (a Python int), B=4 keys (the batch wraps around to the start)", (unit(8), 6, unit(4))),
        Case("K=10, ptr=tensor(9), B=3 keys (B does not divide K)", (unit(10), ptr(9), unit(3))),
        Case("K=5, ptr=tensor(3), B=5 keys (the whole queue is replaced)", (unit(5), ptr(3), unit(5))),
        Case("K=6, ptr=tensor(2), B=3 keys that require gradients", (unit(6), ptr(2), unit(3).requires_grad_())),
        Case("float32 queue K=8, ptr=tensor(5), B=2 float16 keys (from a key encoder under autocast): "
             "the queue keeps its dtype", (unit(8), ptr(5), unit(2, dtype=torch.float16))),
    ]


_ENQUEUE_ERRORS = [
    ("must match", "The batch does not fit before the end of the queue: wrap around, e.g. write rows "
                   "(ptr + torch.arange(B)) % K."),
    ("out of bounds", "An index runs past the end of the queue: take it modulo K to wrap around."),
    ("dtypes match", "The keys' dtype differs from the queue's: store keys.to(queue.dtype), as MoCo does "
                     "(the queue keeps its dtype)."),
]


def _inputs_untouched(answer, cases: list[Case]) -> None:
    """This version returns a new queue: the caller's queue and pointer must not change."""
    for case in cases:
        args, _ = case.fresh()
        call_answer(answer, args, {}, case.name, _ENQUEUE_ERRORS)
        queue, ptr = case.args[0], case.args[1]
        if not torch.equal(args[0].detach(), queue):
            raise Failure(case.name, "your function changed the queue it was given in place",
                          hint="This enqueue returns a new queue and leaves its input alone: start from a "
                               "copy, new_queue = queue.clone(), and write into the copy.")
        if isinstance(ptr, torch.Tensor) and not torch.equal(args[1], ptr):
            raise Failure(case.name, "your function changed the pointer tensor it was given in place",
                          hint="ptr += B changes the caller's tensor: compute and return a new pointer, "
                               "(ptr + B) % K.")


def _queue_is_constant(got, args, case):
    if isinstance(got, (tuple, list)) and got and isinstance(got[0], torch.Tensor) and got[0].requires_grad:
        return ("the returned queue requires gradients (it is part of the autograd graph)",
                "Store keys.detach(): the queue holds constants, and a graph through it would keep every "
                "past batch in memory.")
    return None


@task("07.enqueue", "MoCo's FIFO queue as a pure function: returns the new queue and pointer")
def check_enqueue(answer) -> None:
    """The inputs must stay unchanged; the returned (queue, pointer) must equal MoCo._enqueue's buffers."""
    cases = _enqueue_cases()
    _inputs_untouched(answer, cases)
    compare_with_reference(
        answer, cases, _enqueue_reference, _ENQUEUE_MISTAKES,
        generic_hint="new = queue.clone(); new[(ptr + torch.arange(B)) % K] = keys.detach().to(queue.dtype); "
                     "return new, (ptr + B) % K.",
        error_hints=_ENQUEUE_ERRORS,
        properties=[_queue_is_constant],
    )
