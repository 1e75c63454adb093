"""Lesson 04 tasks: InfoNCE against a queue of negatives, and MoCo's FIFO queue update."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clcourse import losses
from clcourse.grading.harness import (
    Case, Failure, Mistake, call_answer, compare_with_reference, describe, diagnose,
    first_difference, keeps_gradient, try_run,
)
from clcourse.grading.registry import task

# --- 04.info_nce -----------------------------------------------------------------------------


def _info_nce_variant(query, positive, queue, temperature=0.1, *, normalize=True, t_power=1,
                      target="zero", neg_from="query", reduction="mean", positive_in_denominator=True):
    q, p, k = (F.normalize(x, dim=1) for x in (query, positive, queue)) if normalize else (query, positive, queue)
    t = temperature ** t_power
    pos = (q * p).sum(dim=1, keepdim=True) / t
    neg = (p if neg_from == "positive" else q) @ k.t() / t
    if not positive_in_denominator:
        return (torch.logsumexp(neg, dim=1) - pos.squeeze(1)).mean()
    logits = torch.cat([pos, neg], dim=1)
    labels = torch.zeros(len(q), dtype=torch.long) if target == "zero" else torch.arange(len(q))
    return F.cross_entropy(logits, labels, reduction=reduction)


def _in_batch_only(query, positive, queue, temperature=0.1):
    """The queue ignored: the other positives of the batch serve as negatives."""
    q, p = F.normalize(query, dim=1), F.normalize(positive, dim=1)
    return F.cross_entropy(q @ p.t() / temperature, torch.arange(len(q)))


_INFO_NCE_MISTAKES = [
    Mistake("The embeddings are not L2-normalised: normalise query, positive and queue "
            "(F.normalize(x, dim=1)) so that the logits are cosines / t.",
            lambda *a: _info_nce_variant(*a, normalize=False)),
    Mistake("Wrong target: the positive logit sits in column 0 of [N, 1 + K], so the targets are "
            "torch.zeros(N, dtype=torch.long), not arange(N).",
            lambda *a: _info_nce_variant(*a, target="arange")),
    Mistake("The temperature is applied twice (logits divided by t^2).",
            lambda *a: _info_nce_variant(*a, t_power=2)),
    Mistake("The temperature is missing: the logits are cos / t.",
            lambda *a: _info_nce_variant(*a, t_power=0)),
    Mistake("The negatives were compared with the positive (key) instead of the query: every logit is "
            "a similarity to the query q.",
            lambda *a: _info_nce_variant(*a, neg_from="positive")),
    Mistake("The queue is ignored: this uses the other positives of the batch as negatives. With a "
            "queue, the negatives are its K rows (logits q @ queue.T).",
            _in_batch_only),
    Mistake("The positive is missing from the denominator: InfoNCE is a (1 + K)-way softmax, "
            "-log(exp(s_pos / t) / (exp(s_pos / t) + sum_k exp(s_k / t))).",
            lambda *a: _info_nce_variant(*a, positive_in_denominator=False)),
    Mistake("The query losses are summed: InfoNCE takes their mean.",
            lambda *a: _info_nce_variant(*a, reduction="sum")),
]


def _info_nce_cases() -> list[Case]:
    g = torch.Generator().manual_seed(7)

    def batch(n, k, d, noise=0.5, dtype=torch.float32):
        q = torch.randn(n, d, generator=g, dtype=torch.float64)
        p = q + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
        return q.to(dtype), p.to(dtype), torch.randn(k, d, generator=g, dtype=torch.float64).to(dtype) * 2

    q, p, k = batch(4, 16, 8)
    same_q = torch.randn(3, 6, generator=g)
    return [
        Case("N=4 queries that require gradients, a queue of K=16, D=8, temperature=0.1",
             (q.requires_grad_(), p, k, 0.1)),
        Case("N=8, K=64, D=16, temperature=0.07", (*batch(8, 64, 16), 0.07)),
        Case("N=1 query and K=1 negative, temperature=0.5", (*batch(1, 1, 4), 0.5)),
        Case("N=3, query == positive, K=5, temperature=0.2", (same_q, same_q.clone(), torch.randn(5, 6, generator=g), 0.2)),
        Case("N=5, K=7, D=4 in float64 (keep the dtype), temperature=0.3", (*batch(5, 7, 4, dtype=torch.float64), 0.3)),
    ]


@task("04.info_nce", "InfoNCE with a shared queue of K negatives (MoCo), positive at logit 0", 2)
def check_info_nce(answer) -> None:
    """Compare with clcourse.losses.info_nce(query, positive, negatives=queue [K, D], temperature)."""
    compare_with_reference(
        answer, _info_nce_cases(), losses.info_nce, _INFO_NCE_MISTAKES,
        generic_hint="logits = [q.p, q @ queue.T] / t on normalised vectors ([N, 1 + K]); "
                     "cross-entropy with target 0 for every query; mean over queries.",
        properties=[keeps_gradient],
    )


# --- 04.enqueue ------------------------------------------------------------------------------


def _enqueue_reference(queue, ptr, keys):
    """Write ``keys`` into ``queue`` rows ptr, ptr+1, ... (wrapping around); return the next write position."""
    idx = (ptr + torch.arange(len(keys))) % len(queue)
    queue[idx] = keys.detach()
    return (ptr + len(keys)) % len(queue)


def _enqueue_variant(queue, ptr, keys, *, new_ptr=None, start=None, in_place=True):
    if in_place:
        first = ptr if start is None else start
        queue[(first + torch.arange(len(keys))) % len(queue)] = keys.detach()
    return (ptr + len(keys)) % len(queue) if new_ptr is None else new_ptr(ptr, len(keys), len(queue))


_ENQUEUE_MISTAKES = [
    Mistake("The returned pointer does not wrap around: return (ptr + B) % K, the next row to overwrite.",
            lambda q, p, k: _enqueue_variant(q, p, k, new_ptr=lambda p, b, K: p + b)),
    Mistake("The pointer was not advanced: return (ptr + B) % K, so that the next batch overwrites the "
            "oldest keys instead of the ones just written.",
            lambda q, p, k: _enqueue_variant(q, p, k, new_ptr=lambda p, b, K: p)),
    Mistake("The keys were written at row 0 instead of at row ptr: the queue must replace its oldest entries.",
            lambda q, p, k: _enqueue_variant(q, p, k, start=0)),
    Mistake("The queue was not changed in place: write into the given tensor (queue[idx] = keys); a new "
            "tensor made inside the function is lost when it returns.",
            lambda q, p, k: _enqueue_variant(q, p, k, in_place=False)),
]


def _enqueue_cases() -> list[Case]:
    g = torch.Generator().manual_seed(8)

    def q(k, d=3):
        return torch.randn(k, d, generator=g)

    return [
        Case("K=8, ptr=0, B=2 keys", (q(8), 0, q(2))),
        Case("K=8, ptr=4, B=4 keys (the batch ends exactly at the end of the queue)", (q(8), 4, q(4))),
        Case("K=8, ptr=6, B=4 keys (the batch wraps around to the start)", (q(8), 6, q(4))),
        Case("K=5, ptr=3, B=5 keys (the whole queue is replaced)", (q(5), 3, q(5))),
        Case("K=6, ptr=2, B=3 keys that require gradients (from the key encoder)", (q(6), 2, q(3).requires_grad_())),
    ]


def _observe_enqueue(fn, case: Case):
    """What the caller sees: the queue after the call, and the returned pointer."""
    (queue, ptr, keys), _ = case.fresh()
    new_ptr = fn(queue, ptr, keys)
    return queue, new_ptr


_ENQUEUE_ERRORS = [
    ("must match", "The batch does not fit before the end of the queue: wrap around, e.g. write rows "
                   "(ptr + torch.arange(B)) % K."),
    ("out of bounds", "An index runs past the end of the queue: take it modulo K to wrap around."),
]


@task("04.enqueue", "MoCo's FIFO queue update: a ring buffer written in place, pointer returned")
def check_enqueue(answer) -> None:
    """Compare the queue contents and the returned pointer with a reference ring buffer."""
    cases = _enqueue_cases()
    observed = []
    for i, case in enumerate(cases):
        queue, new_ptr = _observe_enqueue(
            lambda *a: call_answer(answer, a, {}, case.name, _ENQUEUE_ERRORS), case)
        observed.append((queue, new_ptr))
        want_queue, want_ptr = _observe_enqueue(_enqueue_reference, case)
        problem = None
        if (diff := first_difference(queue, want_queue)) is not None:
            problem, expected, received = f"the queue after the call: {diff}", describe(want_queue), describe(queue)
        elif (diff := first_difference(new_ptr, want_ptr)) is not None:
            problem, expected, received = f"the returned pointer: {diff}", repr(want_ptr), repr(new_ptr)
        if problem:
            observed += [try_run(answer, later, _observe_enqueue) for later in cases[i + 1:]]
            hint = diagnose(observed, _ENQUEUE_MISTAKES, cases, i, _observe_enqueue) or (
                "Rows (ptr + arange(B)) % K get the keys, in place; return (ptr + B) % K.")
            raise Failure(case.name, problem, expected=expected, received=received, hint=hint)
        if queue.requires_grad:
            raise Failure(case.name, "the queue now requires gradients (it is part of the autograd graph)",
                          hint="Store keys.detach(): the queue holds constants, and a graph through it "
                               "would keep every past batch in memory.")

