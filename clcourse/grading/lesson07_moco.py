"""Lesson 07 tasks: MoCo's momentum update of the key encoder, and a derivation of how old its negatives are.

[1] He et al., Momentum Contrast for Unsupervised Visual Representation Learning (MoCo), CVPR 2020.
"""

from __future__ import annotations

import copy
import random

import torch
from torch import nn

from clcourse.encoders import SmallCNN
from clcourse.grading.harness import (
    RAISED,
    Case,
    Failure,
    Mistake,
    call_answer,
    case_seed,
    compare_with_reference,
    describe,
    diagnose,
    first_difference,
    probe,
    run_probe,
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


def _momentum_cases(seed: int) -> list[Case]:
    torch.manual_seed(seed)  # reproducible weights (check() restores the learner's RNG)
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


@probe
def _momentum_trace(answer, seed: int, index: int) -> dict:
    """Run ``answer`` on case ``index`` of ``_momentum_cases(seed)``: every tensor of both networks after the
    call, whether the key network's parameters were replaced, and whether they joined the autograd graph."""
    case = _momentum_cases(seed)[index]
    (key, query, m), _ = case.fresh()
    key_before = list(key.parameters())
    call_answer(answer, (key, query, m), {}, case.name, _MOMENTUM_ERRORS)
    params = list(key.parameters())
    return {"state": _state(key, "key") + _state(query, "query"),
            "replaced": any(a is not b for a, b in zip(key_before, params)),
            "in_graph": any(p.grad_fn is not None for p in params)}


def _try_trace(answer, seed: int, index: int):
    try:
        return run_probe(answer, _momentum_trace, seed, index)["state"]
    except Exception:  # an answer that fails on this case matches no mistake there
        return RAISED


def _updated_in_place(trace: dict, case: Case) -> None:
    """The key network must keep its own tensors, outside the autograd graph."""
    if trace["replaced"]:
        raise Failure(case.name, "the key network's parameters were replaced by new tensors",
                      hint="Write into the existing tensors (k.mul_(m).add_(q, alpha=1 - m), k.lerp_(q, 1 - m) "
                           "or k.copy_(...)): MoCo's optimiser and checkpoints hold on to them.")
    if trace["in_graph"]:
        raise Failure(case.name, "the key network's parameters are now part of the autograd graph",
                      hint="Do the update under torch.no_grad() (a `with torch.no_grad():` block or the "
                           "@torch.no_grad() decorator): otherwise every step links the key encoder to the "
                           "query encoder's graph and backward() reaches it.")


@task("07.momentum_update", "MoCo's momentum update of the key network, in place, parameters and buffers", 2, answer="momentum_update")
def check_momentum_update(answer) -> None:
    """Compare the key and query networks after the call with clcourse.methods.MoCo.momentum_update's rule."""
    seed = case_seed(70)
    cases = _momentum_cases(seed)
    observed = []
    for i, case in enumerate(cases):
        trace = run_probe(answer, _momentum_trace, seed, i)
        got = trace["state"]
        observed.append(got)
        want = _observe_momentum(_momentum_reference, case)
        found = _first_state_difference(got, want)
        if found is not None:
            k, problem = found
            observed += [_try_trace(answer, seed, j) for j in range(i + 1, len(cases))]
            hint = diagnose(observed, _MOMENTUM_MISTAKES, cases, i, _observe_momentum, _state_difference) or (
                "Under torch.no_grad(): for k, q in zip(key_net.parameters(), query_net.parameters()): "
                "k.mul_(m).add_(q, alpha=1 - m); the same for .buffers(), copying the integer ones.")
            raise Failure(case.name, problem, expected=describe(want[k][1]), received=describe(got[k][1]),
                          hint=hint)
        _updated_in_place(trace, case)


# --- 07.key_age ------------------------------------------------------------------------------


def _key_age_reference(queue_size: int, batch_size: int, momentum: float) -> float:
    """Mean age, in optimiser steps, of the query-encoder weights behind the negatives of one step [1].

    Long after the start, the key encoder of step t is theta_k(t) = sum_s (1 - m) m^s theta_q(t - s): its
    weights are on average m / (1 - m) steps old. The queue holds the keys of steps t - 1 ... t - K/B (the
    current step's keys are the positives), so its keys add on average (K/B + 1) / 2 steps.
    """
    return (queue_size // batch_size + 1) / 2 + momentum / (1 - momentum)


def _key_age_variant(k, b, m, *, queue="mean", lag="ema"):
    queue_part = {"mean": (k // b + 1) / 2, "none": 0.0, "half": k / (2 * b), "keys": (k + 1) / 2,
                  "oldest": k // b, "with_current": (k // b - 1) / 2}[queue]
    lag_part = {"ema": m / (1 - m), "none": 0.0, "window": 1 / (1 - m)}[lag]
    return queue_part + lag_part


_KEY_AGE_MISTAKES = [
    Mistake("Only the queue's age: the key encoder itself lags the query encoder. theta_k(t) = sum over s of "
            "(1 - m) m^s theta_q(t - s), whose mean age is sum s (1 - m) m^s = m / (1 - m) steps; add it.",
            lambda k, b, m: _key_age_variant(k, b, m, lag="none")),
    Mistake("Only the key encoder's lag: the negatives are keys from earlier steps too. The queue holds the keys "
            "of steps t - 1, ..., t - K/B, on average (K/B + 1) / 2 steps old; add it.",
            lambda k, b, m: _key_age_variant(k, b, m, queue="none")),
    Mistake("1 / (1 - m) is the length of the averaging window, not the mean age of the average: the newest "
            "weights (age 0) carry the largest weight 1 - m, so the mean age is sum s (1 - m) m^s = m / (1 - m) "
            "(0 when m = 0: the key encoder is the query encoder).",
            lambda k, b, m: _key_age_variant(k, b, m, lag="window")),
    Mistake("The queue's mean age is off by a half step: its newest keys are 1 step old (written at the end of "
            "the previous step), its oldest K/B steps, so the mean is (K/B + 1) / 2, not K / (2B).",
            lambda k, b, m: _key_age_variant(k, b, m, queue="half")),
    Mistake("The age was counted in keys, not steps: the queue advances by B keys per step, so it holds the keys "
            "of the last K / B steps.",
            lambda k, b, m: _key_age_variant(k, b, m, queue="keys")),
    Mistake("That is the age of the oldest negative, K / B steps; the task asks for the mean over the queue, "
            "(K/B + 1) / 2.",
            lambda k, b, m: _key_age_variant(k, b, m, queue="oldest")),
    Mistake("The current step's keys were counted as negatives (age 0): they are the positives, and they enter "
            "the queue only after the loss. The negatives are the keys of steps t - 1 ... t - K/B.",
            lambda k, b, m: _key_age_variant(k, b, m, queue="with_current")),
]


def _key_age_cases() -> list[Case]:
    return [
        Case("K = 12, B = 4, m = 0.5", (12, 4, 0.5)),
        Case("K = 64, B = 64 (one batch in the queue), m = 0 (the key encoder is the query encoder)", (64, 64, 0.0)),
        Case("K = 1024, B = 64, m = 0.9", (1024, 64, 0.9)),
        Case("K = 4096, B = 256, m = 0.99 (MoCo v2 on CIFAR-10)", (4096, 256, 0.99)),
        Case("K = 65536, B = 256, m = 0.999 (MoCo on ImageNet)", (65536, 256, 0.999)),
        _random_key_age_case(random.Random(case_seed(71))),
    ]


def _random_key_age_case(rng: random.Random) -> Case:
    batch = rng.choice([16, 32, 64, 128, 256])
    queue, momentum = batch * rng.randint(1, 64), round(rng.uniform(0.0, 0.999), 4)
    return Case(f"K = {queue}, B = {batch}, m = {momentum}", (queue, batch, momentum))


@task("07.key_age", "derive: how many steps old, on average, are the weights behind MoCo's negatives", 2, answer="mean_key_age")
def check_key_age(answer) -> None:
    """Compare the learner's formula with the derivation on settings the lesson does not print."""
    compare_with_reference(
        answer, _key_age_cases(), _key_age_reference, _KEY_AGE_MISTAKES,
        generic_hint="Two ages add up: the queue's keys come from steps t - 1 ... t - K/B, and each key was made "
                     "by a key encoder that is an exponential moving average of past query encoders (weights "
                     "(1 - m) m^s on the one s steps older).",
        error_hints=[("division by zero", "m / (1 - m) is finite for every m < 1: check for a 1 - m that became 0 "
                                          "or a K / B written the wrong way round.")],
        hint_needs_every_case=True,  # single numbers coincide by chance on one setting
    )
