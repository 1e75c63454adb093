"""Tests of the Sinkhorn explorer: its maths, its update method and its widgets (callbacks called directly)."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from clcourse.clustering import sinkhorn  # noqa: E402
from clcourse.viz.sinkhorn import (  # noqa: E402
    EPSILONS,
    SinkhornExplorer,
    marginal_error,
    sinkhorn_explorer,
    softmax_codes,
    status_text,
)


def skewed_scores(batch=12, prototypes=4, seed=0):
    """Most samples prefer prototype 0: the batch a plain softmax would put in one cluster."""
    torch.manual_seed(seed)
    scores = 0.3 * torch.rand(batch, prototypes)
    scores[:, 0] += 0.5
    return scores


def test_softmax_codes_are_row_softmaxes_with_unequal_totals():
    scores = skewed_scores()
    plain = softmax_codes(scores, 0.05)
    torch.testing.assert_close(plain, torch.softmax(scores.double() / 0.05, dim=1))
    assert plain.sum(0)[0] > 0.9 * len(scores)  # prototype 0 takes almost the whole batch
    assert marginal_error(plain) > 5


def test_marginal_error_is_zero_for_equal_shares():
    assert marginal_error(torch.full((6, 3), 1 / 3)) == pytest.approx(0)
    assert marginal_error(torch.eye(3)[[0, 0, 0, 1, 2, 2]]) == pytest.approx(1.0)  # totals 3, 1, 2 against 2


def test_explorer_draws_the_packages_sinkhorn_and_redraws_on_set():
    scores = skewed_scores()
    explorer = sinkhorn_explorer(scores)
    assert (explorer.epsilon, explorer.iterations) == (0.05, 3)
    torch.testing.assert_close(explorer.codes, sinkhorn(scores.double(), 0.05, 3))
    assert explorer.png.startswith(b"\x89PNG")
    assert explorer.status.value == status_text(0.05, 3)
    three = marginal_error(explorer.codes)
    explorer.set(iterations=20)
    assert explorer.iterations == 20 and explorer.epsilon == 0.05
    assert marginal_error(explorer.codes) < three  # more iterations, closer to B / K per prototype
    explorer.set(epsilon=1.0)
    torch.testing.assert_close(explorer.codes, sinkhorn(scores.double(), 1.0, 20))
    torch.testing.assert_close(explorer.plain_codes, softmax_codes(scores, 1.0))
    assert explorer.status.value == status_text(1.0, 20)


def test_sliders_drive_the_explorer_and_follow_set():
    explorer = SinkhornExplorer(skewed_scores())
    explorer.epsilon_slider.value = 0.2
    assert explorer.epsilon == 0.2
    explorer.iterations_slider.value = 7
    assert explorer.iterations == 7
    explorer.set(epsilon=0.01, iterations=2)
    assert (explorer.epsilon_slider.value, explorer.iterations_slider.value) == (0.01, 2)


def test_smaller_epsilon_gives_sharper_codes():
    explorer = SinkhornExplorer(skewed_scores(), iterations=10)
    sharp = explorer.codes.max(1).values.mean()
    explorer.set(epsilon=1.0)
    assert explorer.codes.max(1).values.mean() < sharp


@pytest.mark.parametrize("scores, options, error, message", [
    (torch.rand(5), {}, ValueError, r"\[B, K\]"),
    (torch.rand(1, 4), {}, ValueError, "B >= 2"),
    (torch.randint(0, 3, (4, 3)), {}, ValueError, "floating-point"),
    (torch.tensor([[0.1, float("nan")], [0.2, 0.3]]), {}, ValueError, "finite"),
    (torch.rand(4, 3), {"epsilon": 0.07}, ValueError, "stops"),
    (torch.rand(4, 3), {"epsilon": "0.05"}, TypeError, "number"),
    (torch.rand(4, 3), {"iterations": 0}, ValueError, "from 1 to"),
    (torch.rand(4, 3), {"iterations": 21}, ValueError, "from 1 to"),
    (torch.rand(4, 3), {"epsilons": [0.05, -1.0]}, ValueError, "epsilon"),
])
def test_bad_input_is_rejected(scores, options, error, message):
    with pytest.raises(error, match=message):
        SinkhornExplorer(scores, **options)


def test_default_stops_include_the_papers_epsilon():
    assert 0.05 in EPSILONS
