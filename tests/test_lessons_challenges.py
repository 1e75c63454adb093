"""Lesson 17's runs: the losses without negatives, the collapse statistics, the cost counter, and the side-by-side
runner (the same results in one process as in workers)."""

import math

import pytest
import torch

from clcourse.encoders import SmallCNN
from clcourse.evaluate import effective_rank
from clcourse.lessons.challenges import (
    DigitsRun,
    InvarianceLoss,
    PositivesOnly,
    brightness_tagged,
    collapse_statistics,
    step_cost,
    train_runs,
    variance_hinge,
)
from clcourse.losses import alignment


def test_variance_hinge_closed_forms():
    assert math.isclose(variance_hinge(torch.ones(10, 4)).item(), 1 - math.sqrt(1e-4), rel_tol=1e-6)  # constant
    spread = torch.tensor([[-2.0, 2.0], [2.0, -2.0]])  # each dimension's std 2 sqrt(2) > 1
    assert variance_hinge(spread).item() == 0.0
    half = torch.tensor([[0.5, 0.0], [-0.5, 0.0]])  # std sqrt(0.5) and 0
    expected = ((1 - math.sqrt(0.5 + 1e-4)) + (1 - math.sqrt(1e-4))) / 2
    assert math.isclose(variance_hinge(half).item(), expected, rel_tol=1e-5)
    with pytest.raises(ValueError, match="N >= 2"):
        variance_hinge(torch.ones(1, 4))


def _views(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    return ([x, x + 0.05 * torch.randn(x.shape, generator=g)], torch.zeros(n, dtype=torch.long))


def test_positives_only_is_the_alignment_of_its_projections():
    torch.manual_seed(0)
    model = PositivesOnly(SmallCNN(1, width=8, out_dim=16, pool_size=2), projection_dim=8)
    batch = _views()
    z1, z2 = model.project(torch.cat(batch[0])).chunk(2)
    torch.testing.assert_close(model.training_step(batch), alignment(z1, z2))


def test_invariance_loss_is_squared_distance_plus_weighted_variance():
    torch.manual_seed(0)
    model = InvarianceLoss(SmallCNN(1, width=8, out_dim=16, pool_size=2), projection_dim=8, variance_weight=3.0)
    batch = _views()
    z1, z2 = model.project(torch.cat(batch[0])).chunk(2)
    expected = ((z1 - z2) ** 2).sum(dim=1).mean() + 3.0 * (variance_hinge(z1) + variance_hinge(z2))
    torch.testing.assert_close(model.training_step(batch), expected)
    with pytest.raises(ValueError, match="variance_weight"):
        InvarianceLoss(SmallCNN(1, width=8, out_dim=16), variance_weight=-1.0)


def test_collapse_statistics_of_a_constant_and_of_a_spread_output():
    constant = torch.ones(100, 16)
    std, rank = collapse_statistics(constant, constant)
    assert std == 0.0 and rank == 1.0
    spread = torch.randn(4000, 16, generator=torch.Generator().manual_seed(0))
    std, rank = collapse_statistics(spread, spread)
    assert abs(std - 1 / math.sqrt(16)) < 0.005  # SimSiam's 1/sqrt(d) for outputs spread over the sphere
    assert rank == pytest.approx(effective_rank(spread))
    with pytest.raises(ValueError, match="N >= 2"):
        collapse_statistics(torch.ones(1, 4), torch.ones(1, 4))


def test_brightness_tag_is_one_factor_per_image_from_the_seed():
    images = torch.ones(50, 1, 8, 8)
    tagged = brightness_tagged(images, seed=3)
    factors = tagged.flatten(1)
    assert torch.equal(factors, factors[:, :1].expand_as(factors))  # one factor per image
    assert factors.min() >= 0.2 and factors.max() <= 1.0
    assert torch.equal(tagged, brightness_tagged(images, seed=3))
    assert not torch.equal(tagged, brightness_tagged(images, seed=4))


def test_step_cost_counts_twice_the_convolutions_for_two_views():
    """A contrastive step encodes two views, so its FLOPs are about twice a one-view step's."""
    from clcourse.finetune import Classifier
    from clcourse.methods import SimCLR

    torch.manual_seed(0)
    x, labels = torch.rand(16, 1, 8, 8), torch.zeros(16, dtype=torch.long)
    simclr_flops, ms = step_cost(SimCLR(SmallCNN(1, width=8, out_dim=16), projection_dim=8), ([x, x], labels), 1)
    supervised_flops, _ = step_cost(Classifier(SmallCNN(1, width=8, out_dim=16), 10), ([x], labels), 1)
    assert ms > 0 and 1.9 < simclr_flops / supervised_flops < 2.5


def test_a_run_with_an_unknown_method_or_budget_is_refused():
    with pytest.raises(ValueError, match="method must be one of"):
        DigitsRun("simclr2")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        DigitsRun("simclr", steps=0)
    with pytest.raises(ValueError, match="runs must be a non-empty"):
        train_runs([])


def test_runs_give_the_same_results_in_workers_and_here():
    runs = [DigitsRun("simclr", 0, steps=6, batch_size=32, noise=(0.1,)),
            DigitsRun("supervised", 1, steps=6, batch_size=32, classes=(0, 1, 2), tagged=True)]
    here = train_runs(runs, workers=1, progress=False)
    apart = train_runs(runs, workers=2, progress=False)
    for a, b in zip(here, apart):
        assert a.step_loss == b.step_loss and a.output_std == b.output_std and a.probe == b.probe
        assert a.noise_probe == b.noise_probe and a.monitor_step
    assert set(here[0].noise_probe) == {0.1} and math.isclose(sum(here[0].spectrum), 1.0)


def test_positives_only_collapses_and_simclr_does_not():
    """A few dozen steps suffice: the output's spread falls towards 0 without negatives, not with them."""
    positives, simclr = train_runs([DigitsRun("positives_only", 0, steps=40, batch_size=64),
                                    DigitsRun("simclr", 0, steps=40, batch_size=64)], workers=1, progress=False)
    assert positives.output_std[-1] < 0.3 * simclr.output_std[-1]
    assert positives.step_loss[-1] < 0.1 * positives.step_loss[0]


@pytest.mark.parametrize("method", ["byol", "byol_no_predictor", "byol_zero_momentum", "barlow_twins",
                                    "barlow_twins_invariance_only"])
def test_the_non_contrastive_runs_and_their_ablations_train_and_report_statistics(method):
    result, = train_runs([DigitsRun(method, 0, steps=2, batch_size=32)], workers=1, progress=False)
    assert len(result.step_loss) == 2 and math.isfinite(result.step_loss[-1])
    assert result.monitor_step and len(result.output_std) == len(result.rank) == len(result.monitor_step)
    assert 0 <= result.output_std[-1] <= 1 and result.rank[-1] >= 1 and 0 <= result.probe <= 100


def test_the_ablations_remove_what_their_names_say():
    from clcourse.lessons.challenges import _build

    byol, no_predictor, zero_momentum, barlow, invariance = (
        _build(DigitsRun(m), 10) for m in ("byol", "byol_no_predictor", "byol_zero_momentum", "barlow_twins",
                                          "barlow_twins_invariance_only"))
    assert byol.momentum == 0.99 and any(True for _ in byol.predictor.parameters())
    assert not any(True for _ in no_predictor.predictor.parameters()) and no_predictor.momentum == 0.99
    assert zero_momentum.momentum == 0.0
    assert barlow.off_diagonal_weight == 5e-3 and invariance.off_diagonal_weight == 0.0
    assert byol.projector.out_dim == barlow.projector.out_dim == 64


def test_grey_shapes_match_the_digits_in_size_and_layout():
    from clcourse.data import load_digits
    from clcourse.lessons.challenges import grey_shapes, load_dataset

    for split in ("train", "test"):
        shapes, digits = grey_shapes(split), load_digits(8, split=split)
        assert shapes.images.shape == digits.images.shape and shapes.images.dtype == digits.images.dtype
        assert 0 <= shapes.images.min() and shapes.images.max() <= 1
        assert set(shapes.labels.tolist()) == set(range(6))
        assert torch.equal(load_dataset("shapes", split).images, shapes.images)
    assert not torch.equal(grey_shapes("train").images[:10], grey_shapes("test").images[:10])
    with pytest.raises(ValueError, match="name must be one of"):
        load_dataset("cifar10")


@pytest.mark.parametrize("settings, message", [
    (dict(data="cifar10"), "must name datasets"),
    (dict(probe_on=("digits", "mnist")), "must name datasets"),
    (dict(data="shapes", classes=(0, 1)), "data='digits'"),
    (dict(data="shapes", tagged=True), "data='digits'"),
])
def test_a_transfer_run_names_known_datasets(settings, message):
    with pytest.raises(ValueError, match=message):
        DigitsRun("simclr", **settings)


def test_a_run_on_shapes_is_probed_on_both_datasets():
    result, = train_runs([DigitsRun("supervised", 0, steps=3, batch_size=32, data="shapes", probe_on=("digits",))],
                         workers=1, progress=False)
    assert set(result.transfer_probe) == {"digits"} and 0 <= result.transfer_probe["digits"] <= 100
    assert 0 <= result.probe <= 100
