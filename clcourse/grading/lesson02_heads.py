"""Lesson 02 tasks: the SimCLR projection head, and how much of the features a linear head cannot see (a derivation)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from clcourse.encoders import ProjectionHead
from clcourse.grading.harness import (
    Case,
    Failure,
    Mistake,
    call_answer,
    case_seed,
    compare_with_reference,
    describe,
    first_difference,
    probe,
    run_probe,
)
from clcourse.grading.registry import task

# --- 02.projection_head ----------------------------------------------------------------------

_HEAD_ORDER = "Linear(in_dim, hidden_dim) -> BatchNorm1d(hidden_dim) -> ReLU -> Linear(hidden_dim, out_dim)"


def _build_head(answer, dims: tuple[int, int, int]) -> nn.Module:
    case = f"projection_head(in_dim={dims[0]}, hidden_dim={dims[1]}, out_dim={dims[2]})"
    torch.manual_seed(0)  # same weights every run, so the feedback is reproducible (check() restores the RNG)
    head = call_answer(answer, dims, {}, case)
    if not isinstance(head, nn.Module):
        raise Failure(case, f"expected an nn.Module, got {type(head).__name__}",
                      hint=f"Return an nn.Module, e.g. an nn.Sequential with the layers {_HEAD_ORDER}.")
    return head


def _forward(head: nn.Module, x: torch.Tensor, case: str, train: bool) -> torch.Tensor:
    head.train(train)
    with torch.no_grad():
        return call_answer(head, (x,), {}, case)


def _with_weights(kind: str, linears: list[nn.Linear], bn: nn.BatchNorm1d) -> nn.Module:
    """The package's head (or a mis-ordered variant) carrying the learner's parameters."""
    first, bn, last = copy.deepcopy(linears[0]), copy.deepcopy(bn), copy.deepcopy(linears[1])
    if kind == "relu_before_bn":
        return nn.Sequential(first, nn.ReLU(), bn, last)
    head = ProjectionHead(first.in_features, first.out_features, last.out_features, num_layers=2)
    with torch.no_grad():
        head.net[0].weight.copy_(first.weight)  # the package omits this bias: BatchNorm cancels it
        head.net[1].load_state_dict(bn.state_dict())
        head.net[3].load_state_dict(last.state_dict())
    return head


@probe
def _head_trace(answer, dims: tuple, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, other: torch.Tensor) -> dict:
    """Everything the check reads from ``answer(*dims)``, as plain data.

    The head's output on ``x`` (training mode); on ``a``, ``b``, ``a + b`` and 0 (evaluation mode); on ``other``
    (training mode, ``x`` with all rows but the first replaced); and the weights of its Linear and BatchNorm1d
    layers, in module order.
    """
    in_dim, hidden, out_dim = dims
    case = f"in_dim={in_dim}, hidden_dim={hidden}, out_dim={out_dim}, a batch of 64 random vectors"
    head = _build_head(answer, tuple(dims))
    trace = {"y": _forward(head, x, case, train=True)}
    try:
        trace["eval"] = [_forward(head, v, case, train=False) for v in (a, b, a + b, torch.zeros_like(a))]
        trace["y_other"] = _forward(head, other, case, train=True)
    except Failure as f:  # reported only if the first output passes its checks, as in a step-by-step check
        trace["later_failure"] = [f.case, f.problem, f.hint]
    trace["linears"] = [[m.weight.detach(), None if m.bias is None else m.bias.detach()]
                        for m in head.modules() if isinstance(m, nn.Linear)]
    trace["norms"] = [{"config": [m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats],
                       "state": dict(m.state_dict())} for m in head.modules() if isinstance(m, nn.BatchNorm1d)]
    return trace


@task("02.projection_head", "SimCLR's nonlinear projection head: Linear-BN-ReLU-Linear", 2, answer="projection_head")
def check_projection_head(answer) -> None:
    """Shape, nonlinearity, no final activation, batch dependence, then clcourse.encoders.ProjectionHead."""
    g = torch.Generator().manual_seed(case_seed(3))
    for dims in [(16, 32, 8), (12, 12, 20)]:
        in_dim, hidden, out_dim = dims
        case = f"in_dim={in_dim}, hidden_dim={hidden}, out_dim={out_dim}, a batch of 64 random vectors"
        x = torch.randn(64, in_dim, generator=g)
        a, b = torch.randn(2, 64, in_dim, generator=g)
        other = x.clone()
        other[1:] = torch.randn(63, in_dim, generator=g) * 3 + 1
        trace = run_probe(answer, _head_trace, dims, x, a, b, other)
        y = trace["y"]
        if not isinstance(y, torch.Tensor) or y.shape != (64, out_dim):
            raise Failure(case, "wrong output: expected a [batch, out_dim] tensor",
                          expected=f"a tensor of shape [64, {out_dim}]", received=describe(y),
                          hint=f"The layers must be {_HEAD_ORDER}.")
        if bool((y >= 0).all()):
            raise Failure(case, "no output is negative", received=describe(y),
                          hint="There is an activation after the last layer. The head ends with a Linear "
                               "layer: the loss normalises z, and a final ReLU would throw away half the space.")
        if "later_failure" in trace:
            raise Failure(*trace["later_failure"][:2], hint=trace["later_failure"][2])
        outputs = [*trace["eval"], trace["y_other"]]
        if not all(isinstance(o, torch.Tensor) and o.shape == y.shape for o in outputs):
            raise Failure(case, "the head's output changes type or shape between calls",
                          received="; ".join(describe(o, 2) for o in outputs),
                          hint=f"The layers must be {_HEAD_ORDER}, with nothing that depends on the call.")
        fa, fb, fab, f0 = trace["eval"]
        if torch.allclose(fa + fb, fab + f0, atol=1e-4):
            raise Failure(case, "the head is an affine map: f(a) + f(b) = f(a + b) + f(0)",
                          hint="There is no ReLU between the layers, and stacked linear layers collapse "
                               "into one linear map. Put nn.ReLU() after the BatchNorm.")
        if torch.allclose(trace["y_other"][0], y[0], atol=1e-5):
            raise Failure(case, "in training mode a sample's output does not depend on the rest of the batch",
                          hint="There is no BatchNorm1d after the first Linear layer.")
        _compare_with_package(trace, x, y, case)


def _layers(trace: dict) -> tuple[list[nn.Linear], list[nn.BatchNorm1d]]:
    """The learner's Linear and BatchNorm1d layers, rebuilt from their weights."""
    linears = []
    for weight, bias in trace["linears"]:
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        linears.append(linear)
    norms = []
    for norm in trace["norms"]:
        features, eps, momentum, affine, track = norm["config"]
        layer = nn.BatchNorm1d(features, eps=eps, momentum=momentum, affine=affine, track_running_stats=track)
        layer.load_state_dict(norm["state"])
        norms.append(layer)
    return linears, norms


def _compare_with_package(trace: dict, x: torch.Tensor, y: torch.Tensor, case: str) -> None:
    linears, norms = _layers(trace)
    if len(linears) != 2 or len(norms) != 1:
        raise Failure(case, f"found {len(linears)} nn.Linear and {len(norms)} nn.BatchNorm1d modules",
                      hint=f"The head has exactly two Linear layers and one BatchNorm1d: {_HEAD_ORDER}.")
    expected = _forward(_with_weights("package", linears, norms[0]), x, case, train=True)
    diff = first_difference(y, expected, atol=1e-4)
    if diff:
        wrong = _forward(_with_weights("relu_before_bn", linears, norms[0]), x, case, train=True)
        hint = (f"The ReLU comes after the BatchNorm: {_HEAD_ORDER}."
                if first_difference(y, wrong, atol=1e-4) is None else f"The layers must be {_HEAD_ORDER}.")
        raise Failure(case, f"differs from clcourse.encoders.ProjectionHead with your weights: {diff}",
                      expected=describe(expected), received=describe(y), hint=hint)


# --- 02.unseen_variance -----------------------------------------------------------------------


def _row_space_projector(weight: torch.Tensor) -> torch.Tensor:
    """[in, in] orthogonal projector onto the row space of ``weight`` [out, in] (rank-deficient allowed)."""
    u, singular, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    rank = int((singular > singular.max() * max(weight.shape) * torch.finfo(torch.float64).eps).sum())
    basis = vh[:rank]
    return basis.T @ basis


def _unseen_variance_reference(weight: torch.Tensor, features: torch.Tensor) -> float:
    """Share of the centred features' total variance that a linear head z = W h cannot see.

    z depends on h only through its projection onto the row space of W [out, in]; the rest of h, its part in
    W's null space, changes nothing in z. Returns ||H_c (I - P)||_F^2 / ||H_c||_F^2 for the centred features
    H_c [N, in] and P the orthogonal projector onto the row space: 0 when the head sees everything, 1 when nothing.
    """
    centred = features.double() - features.double().mean(dim=0)
    unseen = centred - centred @ _row_space_projector(weight)
    return float(unseen.pow(2).sum() / centred.pow(2).sum())


def _unseen_variant(weight, features, *, centre=True, seen=False, projector="orthogonal", squared=True,
                    by_dimension=False):
    w, h = weight.double(), features.double()
    if by_dimension:
        rank = torch.linalg.matrix_rank(w)
        return float(1 - rank / w.shape[1])
    h = h - h.mean(dim=0) if centre else h
    p = _row_space_projector(w) if projector == "orthogonal" else w.T @ w
    part = h @ p if seen else h - h @ p
    power = 2 if squared else 1
    return float(part.norm() ** power / h.norm() ** power)


_UNSEEN_MISTAKES = [
    Mistake("That is the share the head *sees* (the part in W's row space); the task asks for what it cannot "
            "see: 1 minus that.",
            lambda w, h: _unseen_variant(w, h, seen=True)),
    Mistake("The features were not centred: variance is measured around the mean, and the mean feature (a "
            "direction every image shares) is not variance.",
            lambda w, h: _unseen_variant(w, h, centre=False)),
    Mistake("W^T W is not a projector unless W's rows are orthonormal: project onto the row space with an "
            "orthonormal basis of it (from torch.linalg.svd or qr of W^T).",
            lambda w, h: _unseen_variant(w, h, projector="gram")),
    Mistake("1 - rank(W) / in_dim counts dimensions, not variance: the answer depends on where the features "
            "vary, not only on how many directions the head keeps.",
            lambda w, h: _unseen_variant(w, h, by_dimension=True)),
    Mistake("A ratio of norms, not of variances: variance is the *squared* norm, ||H_c (I - P)||^2 / ||H_c||^2.",
            lambda w, h: _unseen_variant(w, h, squared=False)),
]


def _unseen_cases() -> list[Case]:
    g = torch.Generator().manual_seed(case_seed(22))

    def features(n, d, scales):
        return torch.randn(n, d, generator=g, dtype=torch.float64) * torch.tensor(scales, dtype=torch.float64) + 3.0

    w_narrow = torch.randn(3, 8, generator=g, dtype=torch.float64)
    w_rank_deficient = torch.cat([w_narrow[:2], w_narrow[:1] + w_narrow[1:2]])  # 3 rows, rank 2
    in_row_space = torch.randn(50, 3, generator=g, dtype=torch.float64) @ w_narrow + 1.0
    eye = torch.eye(6, dtype=torch.float64)
    return [
        Case("head W [3, 8] (a bottleneck), 200 features with unequal variances, mean 3",
             (w_narrow, features(200, 8, [3, 1, 1, 0.5, 0.5, 2, 1, 1]))),
        Case("W [3, 8] of rank 2 (a row is the sum of the others)", (w_rank_deficient, features(100, 8, [1] * 8))),
        Case("features that vary only inside W's row space", (w_narrow, in_row_space)),
        Case("W keeps coordinates 0 and 1 of 6; the features vary only along coordinates 4 and 5",
             (eye[:2] * 2.0, torch.cat([torch.full((40, 4), 5.0, dtype=torch.float64),
                                       torch.randn(40, 2, generator=g, dtype=torch.float64)], dim=1))),
        Case("W [10, 6], wider than the features (full column rank)",
             (torch.randn(10, 6, generator=g, dtype=torch.float64), features(60, 6, [1, 2, 3, 1, 2, 3]))),
    ]


@task("02.unseen_variance", "derive: how much of the features' variance a linear head cannot see", 2, answer="variance_the_head_ignores")
def check_unseen_variance(answer) -> None:
    """Compare with the orthogonal projection onto the head's row space, on heads and features the lesson does not print."""
    compare_with_reference(
        answer, _unseen_cases(), _unseen_variance_reference, _UNSEEN_MISTAKES,
        generic_hint="z = W h changes only with the part of h in W's row space: project the centred features onto "
                     "an orthonormal basis of that space (torch.linalg.svd(W).Vh[:rank]) and compare the squared "
                     "norms of what is left over and of the whole.",
        compare=lambda got, expected: first_difference(float(got) if isinstance(got, torch.Tensor) else got,
                                                       expected, rtol=1e-6, atol=1e-9),
        hint_needs_every_case=True,
    )
