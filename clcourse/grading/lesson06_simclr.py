"""Lesson 06 tasks: one SimCLR training step (views -> encoder -> head -> NT-Xent), and weighted kNN prediction."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clcourse import losses
from clcourse.encoders import ProjectionHead, SmallCNN
from clcourse.grading.harness import Case, Mistake, compare_with_reference
from clcourse.grading.registry import task

# --- 06.simclr_step --------------------------------------------------------------------------


def _simclr_step_reference(encoder, projector, x1, x2, temperature=0.5):
    """What clcourse.methods.SimCLR.training_step computes: one pass over both views, then NT-Xent."""
    z1, z2 = projector(encoder(torch.cat([x1, x2]))).chunk(2)
    return losses.nt_xent(z1, z2, temperature)


def _step_variant(encoder, projector, x1, x2, temperature=0.5, *, head=True, one_pass=True, train=True,
                  second=None, normalize_h=False, t=None):
    encoder.train(train)
    projector.train(train)
    x2 = x1 if second == "x1" else x2

    def project(x):
        h = encoder(x)
        if normalize_h:
            h = F.normalize(h, dim=1)
        return projector(h) if head else h

    if one_pass:
        z1, z2 = project(torch.cat([x1, x2])).chunk(2)
    else:
        z1, z2 = project(x1), project(x2)
    return losses.nt_xent(z1, z2, temperature if t is None else t)


_STEP_MISTAKES = [
    Mistake("The loss sees the representations h = f(x), not the projections z = g(h): pass the encoder's "
            "output through the projection head first (the head exists for the loss; it is dropped afterwards).",
            lambda f, g, x1, x2, t=0.5: _step_variant(f, g, x1, x2, t, head=False)),
    Mistake("The two views went through the networks in two separate passes, so BatchNorm normalised each view "
            "with its own statistics. SimCLR encodes both in one pass, torch.cat([x1, x2]), so that BatchNorm "
            "sees all 2N images (as clcourse.methods.SimCLR does); then split z with .chunk(2).",
            lambda f, g, x1, x2, t=0.5: _step_variant(f, g, x1, x2, t, one_pass=False)),
    Mistake("The networks ran in eval mode (BatchNorm used its running statistics): a training step runs "
            "in training mode. Do not call .eval() inside the step.",
            lambda f, g, x1, x2, t=0.5: _step_variant(f, g, x1, x2, t, train=False)),
    Mistake("Both projections come from the first view x1: the positive pairs must be (view 1, view 2) "
            "of the same image.",
            lambda f, g, x1, x2, t=0.5: _step_variant(f, g, x1, x2, t, second="x1")),
    Mistake("The temperature argument is ignored (0.5 was used): pass `temperature` on to the loss.",
            lambda f, g, x1, x2, t=0.5: _step_variant(f, g, x1, x2, t, t=0.5)),
    Mistake("h was L2-normalised before the projection head: the head takes the raw representation, "
            "and only z is normalised (nt_xent does that itself).",
            lambda f, g, x1, x2, t=0.5: _step_variant(f, g, x1, x2, t, normalize_h=True)),
]


def _networks(seed: int) -> tuple[SmallCNN, ProjectionHead]:
    torch.manual_seed(seed)  # reproducible weights (check() restores the learner's RNG)
    return SmallCNN(1, width=4, out_dim=12), ProjectionHead(12, hidden_dim=16, out_dim=6)


def _step_cases() -> list[Case]:
    g = torch.Generator().manual_seed(60)

    def views(n):
        x = torch.rand(n, 1, 8, 8, generator=g)
        return x, (x + 0.2 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)

    x = torch.rand(4, 1, 8, 8, generator=g)
    return [
        Case("encoder SmallCNN(1, width=4, out_dim=12), projector ProjectionHead(12, 16, 6) in training mode, "
             "N=8 views [8, 1, 8, 8], temperature=0.2", (*_networks(0), *views(8), 0.2)),
        Case("the same kind of networks, N=4 views, temperature=0.1", (*_networks(1), *views(4), 0.1)),
        Case("N=2 views (the smallest batch), temperature=1.0", (*_networks(2), *views(2), 1.0)),
        Case("N=4 identical views x1 == x2, temperature=0.3", (*_networks(3), x, x.clone(), 0.3)),
    ]


def _trains_both_networks(got, args, case):
    """The loss must carry gradients to the encoder's and the projector's parameters."""
    encoder, projector = args[0], args[1]
    if not got.requires_grad:
        return ("the loss is cut off from the networks' parameters",
                "Training calls loss.backward() to update the encoder and the head: no torch.no_grad(), "
                ".detach(), .item() or torch.tensor(...) of intermediate values.")
    params = [p for p in [*encoder.parameters(), *projector.parameters()] if p.requires_grad]
    grads = torch.autograd.grad(got, params, allow_unused=True)
    if any(gr is None for gr in grads):
        return ("some parameters of the encoder or the projector get no gradient",
                "Compute z = projector(encoder(x)) with the networks you were given, for both views.")
    return None


@task("06.simclr_step", "one SimCLR step: both views through encoder and head in one pass, then NT-Xent", 2)
def check_simclr_step(answer) -> None:
    """Compare with clcourse.methods.SimCLR.training_step (one pass over cat[x1, x2], nt_xent of the halves)."""
    compare_with_reference(
        answer, _step_cases(), _simclr_step_reference, _STEP_MISTAKES,
        generic_hint="z = projector(encoder(torch.cat([x1, x2]))); z1, z2 = z.chunk(2); "
                     "return nt_xent(z1, z2, temperature).",
        properties=[_trains_both_networks],
    )


# --- 06.knn_predict --------------------------------------------------------------------------


def _knn_reference(train_x, train_y, test_x, k=20, temperature=0.07):
    """The prediction inside clcourse.evaluate.knn_accuracy: cosine top-k, votes exp(s / t), argmax."""
    return _knn_variant(train_x, train_y, test_x, k, temperature)


def _knn_variant(train_x, train_y, test_x, k=20, temperature=0.07, *, normalize=True, weight="exp",
                 largest=True, skip_first=False, clamp_k=True):
    if clamp_k:
        k = min(k, len(train_x))
    a, b = (F.normalize(test_x, dim=1), F.normalize(train_x, dim=1)) if normalize else (test_x, train_x)
    sim, idx = (a @ b.T).topk(k + skip_first, dim=1, largest=largest)
    sim, idx = sim[:, int(skip_first):], idx[:, int(skip_first):]
    w = {"exp": (sim / temperature).exp(), "one": torch.ones_like(sim), "sim": sim,
         "times_t": (sim * temperature).exp()}[weight]
    votes = torch.zeros(len(test_x), int(train_y.max()) + 1, dtype=w.dtype).scatter_add_(1, train_y[idx], w)
    return votes.argmax(1)


_KNN_MISTAKES = [
    Mistake("The features are not L2-normalised: the neighbours must be found by cosine similarity, "
            "F.normalize both sets before the matrix product (a long vector is not a more similar one).",
            lambda *a: _knn_variant(*a, normalize=False)),
    Mistake("Every neighbour has one vote: in the weighted kNN each neighbour votes with weight exp(s / t), "
            "so close neighbours count more.",
            lambda *a: _knn_variant(*a, weight="one")),
    Mistake("The vote weight is the similarity s itself: it must be exp(s / t) (the temperature sharpens it).",
            lambda *a: _knn_variant(*a, weight="sim")),
    Mistake("The temperature multiplies the similarity: the weight is exp(s / t), divide by t.",
            lambda *a: _knn_variant(*a, weight="times_t")),
    Mistake("Those are the k least similar training points: topk(k, dim=1) returns the largest similarities "
            "by default (largest=True).",
            lambda *a: _knn_variant(*a, largest=False)),
    Mistake("The nearest neighbour was dropped (as when a point is left out of its own neighbourhood): "
            "test points are not in the training set here, keep all k.",
            lambda *a: _knn_variant(*a, skip_first=True)),
]


def _neighbourhood(points: list[tuple[int, float]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training points (label, cosine similarity to the one test point e1), at random lengths, in 3-d."""
    g = torch.Generator().manual_seed(62)
    rows = []
    for label, cos in points:
        phi = torch.rand((), generator=g) * 2 * torch.pi
        sin = (1 - cos**2) ** 0.5
        length = 0.5 + 3 * torch.rand((), generator=g)
        rows.append(torch.stack([torch.tensor(cos), sin * phi.cos(), sin * phi.sin()]) * length)
    test_x = torch.tensor([[2.0, 0.0, 0.0]])
    return torch.stack(rows), torch.tensor([label for label, _ in points]), test_x


def _knn_cases() -> list[Case]:
    g = torch.Generator().manual_seed(61)

    def blobs(n, n_classes=3, dim=8, classes=None, dtype=torch.float32):
        centres = torch.randn(n_classes, dim, generator=g)
        y = torch.randint(0, n_classes, (n,), generator=g) if classes is None else \
            torch.tensor(classes)[torch.randint(0, len(classes), (n,), generator=g)]
        x = centres[y] + 0.8 * torch.randn(n, dim, generator=g)
        # random lengths: only the direction may matter (cosine similarity)
        x = x * torch.empty(n, 1).uniform_(0.2, 5.0, generator=g)
        return x.to(dtype), y

    def split(n_train, n_test, **kw):
        x, y = blobs(n_train + n_test, **kw)
        return x[:n_train], y[:n_train], x[n_train:]

    return [
        Case("60 training points of 3 classes in 8-d with random lengths, 40 test points, k=5, temperature=0.07",
             (*split(60, 40), 5, 0.07)),
        Case("one test point whose 6 nearest neighbours are 1 of class 0 (cosine 0.99), 2 of class 1 (0.8) and "
             "3 of class 2 (0.5); 3 more points of class 2 are far; k=6, temperature=0.1",
             (*_neighbourhood([(0, 0.99), (1, 0.8), (1, 0.8), (2, 0.5), (2, 0.5), (2, 0.5),
                               (2, -0.2), (2, -0.5), (2, -0.9)]), 6, 0.1)),
        Case("one test point whose 3 nearest neighbours are 1 of class 0 (cosine 1.0) and 2 of class 1 (0.3); "
             "2 more points of class 2 are far; k=3, temperature=2.0",
             (*_neighbourhood([(0, 1.0), (1, 0.3), (1, 0.3), (2, -0.4), (2, -0.8)]), 3, 2.0)),
        Case("80 training points, 30 test points, k=20, temperature=0.5", (*split(80, 30), 20, 0.5)),
        Case("50 training points, 30 test points, k=1", (*split(50, 30), 1, 0.1)),
        Case("12 training points, 10 test points, k=50 (more than there are training points), temperature=0.07",
             (*split(12, 10), 50, 0.07)),
        Case("40 training points with labels 0, 1, 3 (class 2 absent), 20 test points, k=7, temperature=0.2",
             (*split(40, 20, n_classes=4, classes=[0, 1, 3]), 7, 0.2)),
        Case("float64 features, 30 training and 20 test points, k=9, temperature=1.0",
             (*split(30, 20, dtype=torch.float64), 9, 1.0)),
    ]


@task("06.knn_predict", "weighted kNN prediction on frozen features (cosine top-k, votes exp(s / t))", 2)
def check_knn_predict(answer) -> None:
    """Compare with the prediction inside clcourse.evaluate.knn_accuracy."""
    compare_with_reference(
        answer, _knn_cases(), _knn_reference, _KNN_MISTAKES,
        generic_hint="s = normalize(test_x) @ normalize(train_x).T; sim, idx = s.topk(min(k, N), dim=1); "
                     "votes[m, train_y[idx[m, j]]] += exp(sim[m, j] / t) (scatter_add_); return votes.argmax(1).",
        error_hints=[
            ("out of range", "k is larger than the number of training points here: use min(k, len(train_x))."),
            ("out of bounds", "The vote matrix needs one column per label value, train_y.max() + 1 of them: a "
                              "class may be missing from the training set, so counting distinct labels is too few."),
        ],
    )
