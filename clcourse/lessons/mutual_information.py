"""Lesson 04 helpers: InfoNCE as a lower bound on mutual information, on data whose MI is known.

InfoNCE [1] trains a critic f(x, y) to pick, for each x_i of a batch, its partner y_i out of the
N candidates y_1..y_N. With the critic's scores S_ij = f(x_i, y_j) the loss is

    L = -1/N sum_i log( exp(S_ii) / sum_j exp(S_ij) ),

and for every critic, in expectation over batches of N pairs drawn from p(x, y) [1, 2],

    I(X; Y) >= log N - L.

The estimate log N - L can never exceed log N (L >= 0), however large the true I(X; Y): the bound
saturates, which is why contrastive learning wants many negatives [2, Sec. 2.3].

Data with known mutual information: X ~ N(0, I_d) and Y = rho X + sqrt(1 - rho^2) E with
E ~ N(0, I_d) independent, so every coordinate pair (X_k, Y_k) is a standard bivariate Gaussian
with correlation rho and I(X; Y) = -d/2 log(1 - rho^2) nats, the benchmark of [2, Sec. 5].

[1] van den Oord, Li, Vinyals, Representation Learning with Contrastive Predictive Coding (CPC),
    arXiv:1807.03748, 2018.
[2] Poole, Ozair, van den Oord, Alemi, Tucker, On Variational Bounds of Mutual Information,
    ICML 2019.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clcourse.device import torch_threads

__all__ = [
    "gaussian_mi",
    "rho_for_mi",
    "sample_correlated_gaussians",
    "monte_carlo_mi",
    "SeparableCritic",
    "infonce_estimate",
    "EstimatorRun",
    "train_infonce_critic",
    "mi_sweep",
    "plot_mi_estimates",
]


def _check_rho(rho: float) -> float:
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not -1.0 < rho < 1.0:
        raise ValueError(f"rho must be a correlation in (-1, 1), got {rho!r}")
    return float(rho)


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def gaussian_mi(rho: float, dim: int) -> float:
    """I(X; Y) in nats of `dim` independent coordinate pairs, each a bivariate Gaussian with correlation rho.

    I = -dim/2 * log(1 - rho^2) [2, Sec. 5].
    """
    rho = _check_rho(rho)
    dim = _check_positive_int("dim", dim)
    return -0.5 * dim * math.log1p(-rho * rho)


def rho_for_mi(mi: float, dim: int) -> float:
    """The correlation rho >= 0 that gives `dim` coordinate pairs a total MI of `mi` nats (inverse of `gaussian_mi`)."""
    dim = _check_positive_int("dim", dim)
    if isinstance(mi, bool) or not isinstance(mi, (int, float)) or not 0 <= mi < math.inf:
        raise ValueError(f"mi must be a finite number of nats >= 0, got {mi!r}")
    return math.sqrt(-math.expm1(-2.0 * mi / dim))


def sample_correlated_gaussians(
    n: int, dim: int, rho: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Draw n pairs: x ~ N(0, I_dim), y = rho x + sqrt(1 - rho^2) e with e ~ N(0, I_dim).

    Returns x, y of shape [n, dim] (float32, CPU); corr(x_k, y_k) = rho for every coordinate k,
    the coordinates are independent, and I(X; Y) = `gaussian_mi(rho, dim)`.
    """
    n = _check_positive_int("n", n)
    dim = _check_positive_int("dim", dim)
    rho = _check_rho(rho)
    x = torch.randn(n, dim, generator=generator)
    noise = torch.randn(n, dim, generator=generator)
    return x, rho * x + math.sqrt(1.0 - rho * rho) * noise


def monte_carlo_mi(x: Tensor, y: Tensor, rho: float) -> float:
    """Monte-Carlo estimate of I(X; Y) = E[log p(y | x) - log p(y)] from samples [n, dim] of the model above.

    Uses the true densities: y | x ~ N(rho x, (1 - rho^2) I) and y ~ N(0, I). Converges to
    `gaussian_mi(rho, dim)` as n grows, with standard error about sqrt(dim * rho^2 / n).
    """
    rho = _check_rho(rho)
    if x.dim() != 2 or x.shape != y.shape:
        raise ValueError(f"x and y must both be [n, dim], got {list(x.shape)} and {list(y.shape)}")
    x, y = x.double(), y.double()
    var = 1.0 - rho * rho
    log_conditional = -0.5 * ((y - rho * x) ** 2 / var + math.log(var))  # the log(2 pi) terms cancel
    log_marginal = -0.5 * y**2
    return float((log_conditional - log_marginal).sum(dim=1).mean())


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    # No batch norm: it would mix the samples of a batch, and the critic must score each pair alone.
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_dim)
    )


class SeparableCritic(nn.Module):
    """The separable critic f(x, y) = g(x)^T h(y) of [2], g and h two-hidden-layer ReLU MLPs.

    Args:
        dim: size of x and y.
        hidden: width of the hidden layers.
        embed_dim: size of g(x) and h(y).

    Shapes: forward(x [N, dim], y [M, dim]) -> scores [N, M], scores[i, j] = f(x_i, y_j).
    One matrix product scores all N^2 pairs of a batch, as in contrastive learning where g and h
    are the encoders of two views.
    """

    def __init__(self, dim: int, hidden: int = 128, embed_dim: int = 32):
        super().__init__()
        dim = _check_positive_int("dim", dim)
        self.g = _mlp(dim, _check_positive_int("hidden", hidden), _check_positive_int("embed_dim", embed_dim))
        self.h = _mlp(dim, hidden, embed_dim)
        self.dim = dim

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        for name, v in (("x", x), ("y", y)):
            if v.dim() != 2 or v.shape[1] != self.dim:
                raise ValueError(f"{name} must be [N, {self.dim}], got {list(v.shape)}")
        return self.g(x) @ self.h(y).t()


def infonce_estimate(scores: Tensor) -> Tensor:
    """The InfoNCE lower bound log N - L of one batch, from its critic scores [N, N] (pairs on the diagonal) [1, 2].

    L = cross-entropy of each row with its diagonal entry as the target, i.e. InfoNCE with the
    other N - 1 y's as negatives. Returns a scalar tensor (differentiable: maximise it to train the
    critic). It is at most log N for every batch and every critic, since L >= 0.
    """
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1] or scores.shape[0] < 1:
        raise ValueError(f"scores must be a square matrix [N, N] with N >= 1, got {list(scores.shape)}")
    n = scores.shape[0]
    loss = F.cross_entropy(scores, torch.arange(n, device=scores.device))
    return math.log(n) - loss


@dataclass
class EstimatorRun:
    """One trained InfoNCE estimator.

    Attributes:
        true_mi: I(X; Y) in nats, closed form.
        batch_size: N, the candidates per query (N - 1 negatives).
        estimate: mean of log N - L over fresh evaluation batches, with the trained critic.
        estimate_std: standard deviation of log N - L over those batches.
        train_estimates: log N - L of every training step (the learning curve).
    """

    true_mi: float
    batch_size: int
    estimate: float
    estimate_std: float
    train_estimates: list[float] = field(default_factory=list, repr=False)

    @property
    def log_n(self) -> float:
        return math.log(self.batch_size)


def train_infonce_critic(
    true_mi: float,
    batch_size: int,
    *,
    dim: int = 10,
    steps: int = 400,
    lr: float = 1e-3,
    hidden: int = 128,
    embed_dim: int = 32,
    eval_batches: int = 20,
    seed: int = 0,
    num_threads: int | None = 1,
    device: torch.device | str | None = None,
) -> EstimatorRun:
    """Train a `SeparableCritic` with InfoNCE on correlated Gaussians of MI `true_mi`, then estimate the MI.

    Every step draws a fresh batch of `batch_size` pairs (the data are infinite) and takes an Adam
    step on L = log N - estimate. The estimate reported is the mean of log N - L over
    `eval_batches` fresh batches of the same N.

    Args:
        true_mi: I(X; Y) in nats; rho = `rho_for_mi(true_mi, dim)`.
        batch_size: N >= 2.
        dim: d, the size of x and y.
        steps, lr: the training budget and Adam's learning rate (Poole et al. [2] train 20k steps at 5e-4;
            a few hundred at 1e-3 get close at the MI values of the lesson).
        hidden, embed_dim: of the critic.
        seed: seeds the critic's initialisation and the data.
        num_threads: torch threads during training (1 by default: the matrices are tiny, and
            synchronising threads costs more than it saves; None keeps torch's setting).
        device: where the critic trains (default the CPU); the samples are drawn on the CPU with
            the seeded generator, so a seed gives the same data on every device.

    Returns:
        an `EstimatorRun`.
    """
    batch_size = _check_positive_int("batch_size", batch_size)
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (a positive and at least one negative), got {batch_size}")
    steps = _check_positive_int("steps", steps)
    eval_batches = _check_positive_int("eval_batches", eval_batches)
    rho = rho_for_mi(true_mi, dim)
    generator = torch.Generator().manual_seed(seed)
    device = torch.device("cpu") if device is None else torch.device(device)

    def batch() -> tuple[Tensor, Tensor]:
        x, y = sample_correlated_gaussians(batch_size, dim, rho, generator)
        return x.to(device), y.to(device)

    with torch_threads(num_threads):
        torch.manual_seed(seed)
        critic = SeparableCritic(dim, hidden, embed_dim).to(device)
        optimizer = torch.optim.Adam(critic.parameters(), lr=lr)
        estimates = []
        for _ in range(steps):
            estimate = infonce_estimate(critic(*batch()))
            optimizer.zero_grad(set_to_none=True)
            (-estimate).backward()
            optimizer.step()
            estimates.append(estimate.detach())
        train_estimates = torch.stack(estimates).tolist()  # one device sync, not one per step
        with torch.no_grad():
            evals = torch.stack([infonce_estimate(critic(*batch())) for _ in range(eval_batches)]).double().cpu()
    std = float(evals.std()) if eval_batches > 1 else 0.0
    return EstimatorRun(gaussian_mi(rho, dim), batch_size, float(evals.mean()), std, train_estimates)


def mi_sweep(
    true_mis: Sequence[float],
    batch_sizes: Sequence[int],
    *,
    progress: bool = True,
    **kwargs,
) -> list[EstimatorRun]:
    """`train_infonce_critic` for every (batch size, true MI) pair, batch sizes outermost.

    kwargs go to `train_infonce_critic` (dim, steps, lr, seed...). Returns the runs in order.
    """
    from tqdm.auto import tqdm

    pairs = [(n, mi) for n in batch_sizes for mi in true_mis]
    runs = []
    for n, mi in tqdm(pairs, desc="critics", disable=not progress):
        runs.append(train_infonce_critic(mi, n, **kwargs))
    return runs


def plot_mi_estimates(runs: Sequence[EstimatorRun], ax=None):
    """Estimate vs true MI, one curve per batch size N, with dashed lines at log N and the diagonal.

    Returns the matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4.5))
    batch_sizes = sorted({r.batch_size for r in runs})
    top = max(r.true_mi for r in runs)
    ax.plot([0, top], [0, top], color="black", lw=1, label="true MI")
    for n, color in zip(batch_sizes, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        mine = sorted((r for r in runs if r.batch_size == n), key=lambda r: r.true_mi)
        ax.errorbar(
            [r.true_mi for r in mine], [r.estimate for r in mine], yerr=[r.estimate_std for r in mine],
            marker="o", color=color, capsize=3, label=f"InfoNCE, N = {n}",
        )
        ax.axhline(math.log(n), color=color, ls="--", lw=1)
        ax.annotate(f"log {n} = {math.log(n):.2f}", (0.02 * top, math.log(n)), color=color,
                    textcoords="offset points", xytext=(0, 3), fontsize="small")
    ax.set(xlabel="true I(X; Y) (nats)", ylabel="estimate log N - L (nats)",
           title="InfoNCE saturates at log N")
    ax.legend(loc="lower right", fontsize="small")
    return ax
