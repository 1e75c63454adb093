"""Lesson 06 tasks: NT-Xent's gradient with respect to every pair's similarity (a derivation), and weighted kNN."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clcourse.grading.harness import Case, Mistake, case_seed, compare_with_reference
from clcourse.grading.registry import task

# --- 06.pair_gradient ------------------------------------------------------------------------


def _pair_gradient_reference(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """dL/ds_ij of NT-Xent for every pair of the 2N views, s_ij = s_ji the cosine similarity of views i and j.

    With P the row-softmax of the masked logits s / t and Y the positives (j = i + N mod 2N), anchor i's loss
    gives (P_ij - Y_ij) / (2N t) to s_ij and anchor j's gives (P_ji - Y_ji) / (2N t): the similarity appears in
    both rows, so G = R + R^T with R = (P - Y) / (2N t); the diagonal (no pair) is 0. Returns [2N, 2N].
    """
    return _pair_variant(z1, z2, temperature)


def _pair_variant(z1, z2, t=0.5, *, symmetric=True, mean=True, t_power=1, sign=1, pull=True, mask_self=True):
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n2 = len(z)
    logits = z @ z.T / t
    if mask_self:
        logits = logits.masked_fill(torch.eye(n2, dtype=torch.bool), float("-inf"))
    p = logits.softmax(dim=1)
    y = torch.zeros(n2, n2, dtype=torch.float64)
    y[torch.arange(n2), (torch.arange(n2) + n2 // 2) % n2] = 1.0
    rows = sign * (p - (y if pull else 0)) / t**t_power
    if mean:
        rows = rows / n2
    gradient = rows + rows.T if symmetric else rows
    return gradient.fill_diagonal_(0.0) if mask_self else gradient


_PAIR_MISTAKES = [
    Mistake("Only anchor i's row was counted: the similarity s_ij = s_ji appears in the loss of anchor i *and* in "
            "the loss of anchor j, so its gradient is the sum of both, G = R + R^T.",
            lambda z1, z2, t=0.5: _pair_variant(z1, z2, t, symmetric=False)),
    Mistake("The 1/(2N) of the mean is missing: NT-Xent averages the 2N anchors' losses, so every term carries "
            "1/(2N).",
            lambda z1, z2, t=0.5: _pair_variant(z1, z2, t, mean=False)),
    Mistake("The factor 1/t is missing: the logits are s / t, so the chain rule brings 1/t.",
            lambda z1, z2, t=0.5: _pair_variant(z1, z2, t, t_power=0)),
    Mistake("The temperature appears twice (1/t^2): the softmax already uses s / t and the chain rule adds one "
            "1/t, not two.",
            lambda z1, z2, t=0.5: _pair_variant(z1, z2, t, t_power=2)),
    Mistake("The sign is flipped: the loss falls when a positive pair's similarity rises, so the positives' "
            "entries are negative (the softmax weight minus the pull of 1).",
            lambda z1, z2, t=0.5: _pair_variant(z1, z2, t, sign=-1)),
    Mistake("The positives' pull is missing: -log p_pos contributes -1 at the positive besides the softmax's "
            "+p to every candidate; without it every entry is a push.",
            lambda z1, z2, t=0.5: _pair_variant(z1, z2, t, pull=False)),
    Mistake("The anchor itself was left among the candidates: mask the diagonal (-inf) before the softmax; a "
            "view's similarity with itself is always 1 and is not a pair, its entry is 0.",
            lambda z1, z2, t=0.5: _pair_variant(z1, z2, t, mask_self=False)),
]


def _pair_cases() -> list[Case]:
    g = torch.Generator().manual_seed(case_seed(66))

    def views(n, d=6, noise=0.5):
        base = torch.randn(n, d, generator=g, dtype=torch.float64)
        return (base + noise * torch.randn(n, d, generator=g, dtype=torch.float64),
                base + noise * torch.randn(n, d, generator=g, dtype=torch.float64))

    return [
        Case("N = 3 pairs, D = 6, t = 0.5", (*views(3), 0.5)),
        Case("N = 2 (the smallest batch), t = 1.0", (*views(2), 1.0)),
        Case("N = 8 pairs, t = 0.1", (*views(8), 0.1)),
        Case("N = 5 pairs with norms around 5 (normalise first), t = 0.2", (*(5 * v for v in views(5)), 0.2)),
    ]


@task("06.pair_gradient", "derive: NT-Xent's gradient with respect to the similarity of every pair of views", 2, answer="pair_gradient")
def check_pair_gradient(answer) -> None:
    """Compare with the derived [2N, 2N] gradient on batches the lesson does not print, without autograd."""
    compare_with_reference(
        answer, _pair_cases(), _pair_gradient_reference, _PAIR_MISTAKES,
        generic_hint="Anchor i's loss is -log softmax(s_i / t)[pos(i)]; its derivative with respect to s_ij is "
                     "(P_ij - 1[j = pos(i)]) / t, times 1/(2N) for the mean; then add anchor j's share.",
        hint_needs_every_case=True,
        autograd=False,
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
    g = torch.Generator().manual_seed(case_seed(62))
    rows = []
    for label, cos in points:
        phi = torch.rand((), generator=g) * 2 * torch.pi
        sin = (1 - cos**2) ** 0.5
        length = 0.5 + 3 * torch.rand((), generator=g)
        rows.append(torch.stack([torch.tensor(cos), sin * phi.cos(), sin * phi.sin()]) * length)
    test_x = torch.tensor([[2.0, 0.0, 0.0]])
    return torch.stack(rows), torch.tensor([label for label, _ in points]), test_x


def _knn_cases() -> list[Case]:
    g = torch.Generator().manual_seed(case_seed(61))

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


@task("06.knn_predict", "weighted kNN prediction on frozen features (cosine top-k, votes exp(s / t))", 2, answer="knn_predict")
def check_knn_predict(answer) -> None:
    """Compare with the prediction inside clcourse.evaluate.knn_accuracy."""
    compare_with_reference(
        answer, _knn_cases(), _knn_reference, _KNN_MISTAKES,
        generic_hint="s = normalize(test_x) @ normalize(train_x).T; sim, idx = s.topk(min(k, N), dim=1); "
                     "votes[m, train_y[idx[m, j]]] += exp(sim[m, j] / t) (scatter_add_); return votes.argmax(1).",
        error_hints=[
            ("out of range", "k is larger than the number of training points here: use min(k, len(train_x))."),
            (r"RuntimeError: index \d+ is out of bounds", "The vote matrix needs one column per label value, train_y.max() + 1 of them: a "
                              "class may be missing from the training set, so counting distinct labels is too few."),
        ],
    )
