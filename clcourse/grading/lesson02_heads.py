"""Lesson 02 tasks: the SimCLR projection head, and features taken before the head."""

from __future__ import annotations

import copy

import torch
from torch import nn

from clcourse.encoders import MLP, ProjectionHead
from clcourse.evaluate import extract_features
from clcourse.grading.harness import (
    Case, Failure, Mistake, call_answer, compare_with_reference, describe, first_difference,
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


@task("02.projection_head", "SimCLR's nonlinear projection head: Linear-BN-ReLU-Linear", 2)
def check_projection_head(answer) -> None:
    """Shape, nonlinearity, no final activation, batch dependence, then clcourse.encoders.ProjectionHead."""
    g = torch.Generator().manual_seed(3)
    for dims in [(16, 32, 8), (12, 12, 20)]:
        in_dim, hidden, out_dim = dims
        case = f"in_dim={in_dim}, hidden_dim={hidden}, out_dim={out_dim}, a batch of 64 random vectors"
        head = _build_head(answer, dims)
        x = torch.randn(64, in_dim, generator=g)
        y = _forward(head, x, case, train=True)
        if not isinstance(y, torch.Tensor) or y.shape != (64, out_dim):
            raise Failure(case, "wrong output: expected a [batch, out_dim] tensor",
                          expected=f"a tensor of shape [64, {out_dim}]", received=describe(y),
                          hint=f"The layers must be {_HEAD_ORDER}.")
        if bool((y >= 0).all()):
            raise Failure(case, "no output is negative", received=describe(y),
                          hint="There is an activation after the last layer. The head ends with a Linear "
                               "layer: the loss normalises z, and a final ReLU would throw away half the space.")
        a, b = torch.randn(2, 64, in_dim, generator=g)
        fa, fb, fab, f0 = (_forward(head, v, case, train=False) for v in (a, b, a + b, torch.zeros_like(a)))
        if torch.allclose(fa + fb, fab + f0, atol=1e-4):
            raise Failure(case, "the head is an affine map: f(a) + f(b) = f(a + b) + f(0)",
                          hint="There is no ReLU between the layers, and stacked linear layers collapse "
                               "into one linear map. Put nn.ReLU() after the BatchNorm.")
        other = x.clone()
        other[1:] = torch.randn(63, in_dim, generator=g) * 3 + 1
        if torch.allclose(_forward(head, other, case, train=True)[0], y[0], atol=1e-5):
            raise Failure(case, "in training mode a sample's output does not depend on the rest of the batch",
                          hint="There is no BatchNorm1d after the first Linear layer.")
        _compare_with_package(head, x, y, case)


def _compare_with_package(head: nn.Module, x: torch.Tensor, y: torch.Tensor, case: str) -> None:
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in head.modules() if isinstance(m, nn.BatchNorm1d)]
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


# --- 02.features -----------------------------------------------------------------------------

class _EncoderWithHead(nn.Module):
    """The shape of a SimCLR model: ``.encoder`` (f) and ``.projector`` (g); ``project`` = g(f(x))."""

    def __init__(self, in_dim: int = 10, rep_dim: int = 12, proj_dim: int = 4):
        super().__init__()
        self.encoder = MLP(in_dim, (16,), rep_dim)
        self.projector = ProjectionHead(rep_dim, rep_dim, proj_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))


def _trained_model(training: bool) -> _EncoderWithHead:
    """A model whose BatchNorm running statistics differ clearly from one batch's statistics."""
    g = torch.Generator().manual_seed(4)
    torch.manual_seed(4)  # reproducible weights (check() restores the learner's RNG)
    model = _EncoderWithHead()
    with torch.no_grad():
        for _ in range(20):
            model.project(torch.randn(32, 10, generator=g) * 2 + 1)
    return model.train(training)


def _features_reference(model, images, batch_size):
    return extract_features(model.encoder, images, batch_size=batch_size)[0]


def _features_variant(model, images, batch_size, *, fn="encoder", train=False, drop_last=False):
    model.train(train)
    n = len(images) - len(images) % batch_size if drop_last else len(images)
    with torch.no_grad():
        parts = [getattr(model, fn)(images[i:i + batch_size]) for i in range(0, n, batch_size)]
    return torch.cat(parts) if parts else images.new_zeros(0, model.encoder.out_dim)


_FEATURE_MISTAKES = [
    Mistake("Those are projections z = g(f(x)), after the head. The features for downstream tasks are "
            "the encoder's output h = f(x) (model.encoder, or model(x)).",
            lambda m, x, bs: _features_variant(m, x, bs, fn="project")),
    Mistake("The model ran in training mode, so BatchNorm used each batch's statistics. "
            "Call model.eval() before encoding.",
            lambda m, x, bs: _features_variant(m, x, bs, train=True)),
    Mistake("The last, partial batch is missing: loop over range(0, N, batch_size) and keep the remainder.",
            lambda m, x, bs: _features_variant(m, x, bs, drop_last=True)),
]


def _features_cases() -> list[Case]:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(10, 10, generator=g) * 2 + 1
    return [
        Case("a model in training mode, N=10 inputs, batch_size=4", (_trained_model(True), x, 4)),
        Case("a model in eval mode, N=8 inputs, batch_size=8", (_trained_model(False), x[:8], 8)),
        Case("a model in training mode, N=5 inputs, batch_size=64", (_trained_model(True), x[:5], 64)),
    ]


def _no_gradients(got, args, case):
    if got.requires_grad:
        return ("the features require gradients",
                "Wrap the loop in `with torch.no_grad():` (frozen features need no graph, and keeping "
                "it costs memory).")
    return None


def _mode_restored(got, args, case):
    before = case.args[0].training
    if args[0].training != before:
        return (f"the model was in {'training' if before else 'eval'} mode and was not put back",
                "Remember `was_training = model.training` and call model.train(was_training) at the end: "
                "the caller may be in the middle of training.")
    return None


@task("02.features", "representations before the projection head: eval mode, no gradients, batched")
def check_features(answer) -> None:
    """Compare with clcourse.evaluate.extract_features on the encoder, then check gradients and mode."""
    compare_with_reference(
        answer, _features_cases(), _features_reference, _FEATURE_MISTAKES,
        generic_hint="Encode with model.encoder in eval mode under torch.no_grad(), batch by batch, "
                     "and concatenate.",
        properties=[_no_gradients, _mode_restored],
    )
