"""Tests of lesson 03's helpers: the lockstep temperature sweep, tolerance, and the measurements."""

import copy

import numpy as np
import pytest
import torch

from clcourse.data import ImageData
from clcourse.encoders import SmallCNN
from clcourse.lessons.temperature import (
    Scores,
    TemperatureSweep,
    fit_circle_head,
    mean_std,
    measure,
    measure_pixels,
    results_table,
    separated,
    spread_table,
    tolerance,
)
from clcourse.losses import nt_xent


def tiny_data(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ImageData(torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 3)


def shift(x, generator=None):
    """A cheap stand-in for an augmentation: a random brightness shift per image."""
    return (x + 0.1 * torch.rand(len(x), 1, 1, 1, generator=generator)).clamp(0, 1)


@pytest.fixture
def sweep():
    torch.manual_seed(0)
    return TemperatureSweep(SmallCNN(1, width=4, out_dim=8), [0.1, 0.5], projection_dim=6)


def batch(seed=1, n=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    return [x, shift(x, g)], torch.zeros(n, dtype=torch.long)


def test_models_start_identical_and_differ_only_in_temperature(sweep):
    a, b = sweep.models
    assert (a.temperature, b.temperature) == (0.1, 0.5)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb)
    assert sweep.model(0.5) is b
    with pytest.raises(ValueError, match="no model was trained at temperature 0.3"):
        sweep.model(0.3)


def test_each_model_gets_exactly_the_gradient_of_its_own_loss(sweep):
    views, labels = batch()
    alone = copy.deepcopy(sweep.model(0.5))  # the same model trained on its own
    alone.train()
    sweep.train()
    total = sweep.training_step((views, labels))
    total.backward()
    z1, z2 = alone.project(torch.cat(views)).chunk(2)
    nt_xent(z1, z2, 0.5).backward()
    # the other model's loss never reaches this one
    for (name, p_sweep), p_alone in zip(sweep.model(0.5).named_parameters(), alone.parameters()):
        torch.testing.assert_close(p_sweep.grad, p_alone.grad, msg=name)


def test_training_step_records_each_temperatures_loss_and_returns_the_sum(sweep):
    views, labels = batch()
    total = sweep.training_step((views, labels))
    assert set(sweep.losses) == {0.1, 0.5}
    assert all(len(v) == 1 for v in sweep.losses.values())
    assert total.item() == pytest.approx(sum(v[0] for v in sweep.losses.values()))
    with pytest.raises(ValueError, match="2 views"):
        sweep.training_step(([views[0]], labels))


@pytest.mark.parametrize("temperatures", [[], [0.1, 0.1], [0.1, -0.5], [0.0]])
def test_sweep_rejects_bad_temperatures(temperatures):
    with pytest.raises(ValueError, match="distinct numbers > 0"):
        TemperatureSweep(SmallCNN(1, width=4, out_dim=8), temperatures)


def test_tolerance_is_the_mean_same_class_cosine():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, -1.0]])
    labels = torch.tensor([0, 1, 0, 1])
    # class 0: cos = 1 (both pairs, both orders); class 1: cos = -1
    assert tolerance(z, labels) == pytest.approx(0.0)
    assert tolerance(z, torch.tensor([0, 1, 0, 2])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two samples"):
        tolerance(z, torch.arange(4))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        tolerance(z, labels[:3])


def test_fit_circle_head_learns_a_2d_head_and_leaves_the_encoder_alone(sweep):
    data = tiny_data()
    encoder = sweep.model(0.1).encoder
    encoder.train()
    before = copy.deepcopy(encoder.state_dict())
    state = torch.get_rng_state()
    head = fit_circle_head(encoder, data, shift, 0.1, views=3, steps=5, batch_size=16)
    assert not head.training and encoder.training  # the encoder's mode is restored
    for name, value in encoder.state_dict().items():  # frozen: not even batch-norm statistics move
        torch.testing.assert_close(value, before[name], msg=name)
    assert torch.equal(torch.get_rng_state(), state)  # seeded by its own generator
    assert head(torch.randn(4, 8)).shape == (4, 2)
    again = fit_circle_head(encoder, data, shift, 0.1, views=3, steps=5, batch_size=16)
    for a, b in zip(head.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)  # reproducible from the seed
    with pytest.raises(ValueError, match="views must be >= 2"):
        fit_circle_head(encoder, data, shift, 0.1, views=1)


def test_measure_returns_everything_the_explorer_needs(sweep):
    data = tiny_data()
    result = measure(sweep, 0.1, data, data, shift, umap=False, max_points=40, circle_steps=3)
    assert result.temperature == 0.1
    assert result.umap.shape == (40, 2) and result.circle.shape == (40, 2) and result.labels.shape == (40,)
    np.testing.assert_allclose(np.linalg.norm(result.circle, axis=1), 1.0, rtol=1e-5)
    assert 0 <= result.alignment <= 4 and result.uniformity <= 0 and -1 <= result.tolerance <= 1
    assert 0 <= result.linear_probe <= 1 and 0 <= result.knn <= 1
    again = measure(sweep, 0.1, data, data, shift, umap=False, max_points=40, circle_steps=3)
    assert (again.alignment, again.tolerance) == (result.alignment, result.tolerance)  # seeded views
    np.testing.assert_array_equal(again.labels, result.labels)
    table = results_table([result], {0.1: 1.234})
    assert "1.234" in table and "0.1" in table.splitlines()[2]


def test_measure_without_circle_steps_fits_no_head(sweep):
    data = tiny_data()
    result = measure(sweep, 0.5, data, data, shift, umap=False, max_points=40, circle_steps=0)
    np.testing.assert_array_equal(result.circle, np.zeros((40, 2)))
    with_head = measure(sweep, 0.5, data, data, shift, umap=False, max_points=40, circle_steps=3)
    assert (result.alignment, result.tolerance, result.knn) == (with_head.alignment, with_head.tolerance, with_head.knn)


def test_measure_pixels_scores_the_flattened_images():
    data = tiny_data()
    scores = measure_pixels(data, data, shift, max_points=40)
    assert 0 <= scores.linear_probe <= 1 and scores.knn == 1.0  # every test image is its own nearest neighbour
    # pixels are >= 0: no negative cosine, so same-class images are at least orthogonal
    assert 0 <= scores.tolerance <= 1 and scores.uniformity <= 0 and scores.alignment >= 0
    assert measure_pixels(data, data, shift, max_points=40) == scores  # seeded views


def test_mean_std_and_the_spread_rule():
    runs = [Scores(0.1, -3.0, 0.2, 0.90, 0.95), Scores(0.3, -2.0, 0.4, 0.94, 0.97)]
    assert mean_std(runs, "uniformity") == pytest.approx((-2.5, np.std([-3.0, -2.0], ddof=1)))
    assert mean_std(runs, "linear_probe") == pytest.approx((92.0, np.std([90.0, 94.0], ddof=1)))  # accuracies in %
    assert mean_std(runs[:1], "knn") == (95.0, 0.0)
    far = [Scores(0.1, -1.0, 0.2, 0.5, 0.5)] * 2  # std 0, mean 1.5 above: beyond a spread of 0.71
    assert separated(runs, far, "uniformity") and not separated(runs, runs[::-1], "uniformity")
    with pytest.raises(ValueError, match="metric must be one of"):
        mean_std(runs, "accuracy")
    table = spread_table({"a": runs, "pixels": runs[:1]})
    assert "-2.50 ± 0.71" in table and "92.0 ± 2.8%" in table and "90.0%" in table
