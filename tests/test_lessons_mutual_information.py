"""Tests of clcourse.lessons.mutual_information: the Gaussian MI benchmark and the InfoNCE estimator."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from clcourse.lessons.mutual_information import (  # noqa: E402
    EstimatorRun,
    SeparableCritic,
    gaussian_mi,
    infonce_estimate,
    mi_sweep,
    monte_carlo_mi,
    plot_mi_estimates,
    rho_for_mi,
    sample_correlated_gaussians,
    train_infonce_critic,
)


def test_gaussian_mi_closed_form_and_its_inverse():
    assert gaussian_mi(0.0, 5) == 0.0
    # one pair with rho^2 = 3/4: I = -1/2 log(1/4) = log 2
    assert gaussian_mi(math.sqrt(0.75), 1) == pytest.approx(math.log(2))
    assert gaussian_mi(0.5, 4) == pytest.approx(4 * gaussian_mi(0.5, 1))  # independent coordinates add
    for mi in (0.0, 0.3, 2.0, 10.0):
        assert gaussian_mi(rho_for_mi(mi, 10), 10) == pytest.approx(mi, abs=1e-9)


def test_samples_have_the_requested_correlation():
    g = torch.Generator().manual_seed(0)
    x, y = sample_correlated_gaussians(20000, 3, 0.8, g)
    assert x.shape == y.shape == (20000, 3)
    for k in range(3):
        corr = torch.corrcoef(torch.stack([x[:, k], y[:, k]]))[0, 1]
        assert corr.item() == pytest.approx(0.8, abs=0.01)
        assert y[:, k].std().item() == pytest.approx(1.0, abs=0.02)  # unit marginal variance
    assert torch.corrcoef(torch.stack([x[:, 0], y[:, 1]]))[0, 1].abs().item() < 0.03


@pytest.mark.parametrize("rho, dim", [(0.5, 1), (0.9, 4), (0.99, 10)])
def test_monte_carlo_mi_matches_closed_form(rho, dim):
    g = torch.Generator().manual_seed(1)
    x, y = sample_correlated_gaussians(50000, dim, rho, g)
    standard_error = math.sqrt(dim * rho**2 / 50000) * 2  # generous: the variance of the log ratio is ~d rho^2 (1 + rho^2)
    assert monte_carlo_mi(x, y, rho) == pytest.approx(gaussian_mi(rho, dim), abs=4 * standard_error)


def test_infonce_estimate_is_at_most_log_n_whatever_the_scores():
    g = torch.Generator().manual_seed(2)
    for n in (2, 16, 64):
        for scale in (0.1, 10.0, 1000.0):
            scores = scale * torch.randn(n, n, generator=g)
            assert infonce_estimate(scores).item() <= math.log(n) + 1e-6
        # a perfect critic (huge diagonal) reaches log N and not beyond
        assert infonce_estimate(torch.eye(n) * 1e4).item() == pytest.approx(math.log(n), abs=1e-5)
        # an uninformative critic (constant scores) gives 0
        assert infonce_estimate(torch.ones(n, n)).item() == pytest.approx(0.0, abs=1e-6)


def test_infonce_estimate_equals_log_n_minus_cross_entropy():
    scores = torch.randn(8, 8, generator=torch.Generator().manual_seed(3))
    expected = math.log(8) + torch.log_softmax(scores, dim=1).diagonal().mean()
    torch.testing.assert_close(infonce_estimate(scores), expected)


def test_separable_critic_scores_all_pairs():
    critic = SeparableCritic(3, hidden=16, embed_dim=4)
    x, y = torch.randn(5, 3), torch.randn(7, 3)
    scores = critic(x, y)
    assert scores.shape == (5, 7)
    torch.testing.assert_close(scores[2, 4], critic.g(x[2:3])[0] @ critic.h(y[4:5])[0])
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        critic(torch.randn(5, 2), y)


def test_training_gets_close_to_a_small_true_mi_and_stays_below_log_n():
    run = train_infonce_critic(1.0, 64, dim=2, steps=150, hidden=32, embed_dim=8, eval_batches=10)
    assert isinstance(run, EstimatorRun)
    assert run.true_mi == pytest.approx(1.0)
    assert 0.6 < run.estimate < 1.15  # a lower bound, in expectation; close after a short training
    assert len(run.train_estimates) == 150
    assert all(e <= math.log(64) + 1e-6 for e in run.train_estimates)


def test_large_mi_saturates_at_log_n():
    run = train_infonce_critic(10.0, 8, dim=2, steps=300, lr=3e-3, hidden=32, embed_dim=8, eval_batches=10)
    assert run.estimate <= math.log(8) + 1e-6  # 2.08 nats, far below the true 10
    assert run.estimate > math.log(8) - 0.4  # the critic finds the partner almost always


def test_training_is_deterministic_and_restores_threads():
    before = torch.get_num_threads()
    a = train_infonce_critic(2.0, 16, dim=2, steps=20, hidden=16, embed_dim=4, seed=5)
    b = train_infonce_critic(2.0, 16, dim=2, steps=20, hidden=16, embed_dim=4, seed=5)
    assert a.train_estimates == b.train_estimates and a.estimate == b.estimate
    assert torch.get_num_threads() == before


def test_sweep_and_plot():
    runs = mi_sweep([0.5, 4.0], [4, 16], dim=2, steps=5, hidden=8, embed_dim=4, eval_batches=2, progress=False)
    assert [(r.batch_size, r.true_mi) for r in runs] == [(4, pytest.approx(0.5)), (4, pytest.approx(4.0)),
                                                          (16, pytest.approx(0.5)), (16, pytest.approx(4.0))]
    ax = plot_mi_estimates(runs)
    assert len(ax.get_legend().get_texts()) == 3  # the diagonal and one curve per N
    plt.close("all")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: gaussian_mi(1.0, 2), "rho"),
        (lambda: gaussian_mi(0.5, 0), "dim"),
        (lambda: rho_for_mi(-1.0, 2), "mi"),
        (lambda: infonce_estimate(torch.randn(3, 4)), "square"),
        (lambda: train_infonce_critic(1.0, 1, steps=1), "batch_size"),
        (lambda: monte_carlo_mi(torch.randn(4, 2), torch.randn(4, 3), 0.5), r"\[n, dim\]"),
    ],
)
def test_bad_inputs_are_explained(call, match):
    with pytest.raises(ValueError, match=match):
        call()
