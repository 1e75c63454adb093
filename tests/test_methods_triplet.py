import itertools

import pytest
import torch
import torch.nn.functional as F

from clcourse.encoders import SmallCNN
from clcourse.losses import all_triplets_loss, mine_triplets, pairwise_distance, triplet_margin
from clcourse.methods.triplet import Triplet, TripletStats, spread, zero_loss_fraction


def make_model(**kw):
    torch.manual_seed(0)
    return Triplet(SmallCNN(1, width=8, out_dim=16), projection_dim=8, **kw)


def images(n, seed):
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def brute_force_zero_fraction(z, ids, margin, distance):
    d = pairwise_distance(z.double(), distance)
    zero = total = 0
    for a, p, n in itertools.product(range(len(ids)), repeat=3):
        if a != p and ids[a] == ids[p] and ids[n] != ids[a]:
            total += 1
            zero += bool(d[a, n] >= d[a, p] + margin)
    return zero / total


@pytest.mark.parametrize("strategy", ["semi-hard", "hard", "all"])
@pytest.mark.parametrize("supervised", [False, True])
def test_training_step_is_the_triplet_loss_of_the_mined_projections(strategy, supervised):
    # float64: the two sides take different paths (a distance matrix, sqrt(2 - 2 cos), against row-wise
    # |a - p|), whose float32 results differ by about 1e-5 on some CPUs and not on others.
    model = make_model(strategy=strategy, margin=0.3, supervised=supervised).double()
    model.eval()  # fixed batch-norm statistics so both computations agree
    x1, x2 = images(6, 1).double(), images(6, 2).double()
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    loss = model.training_step(([x1, x2], labels))
    z = model.project(torch.cat([x1, x2]))
    ids = labels.repeat(2) if supervised else torch.arange(6).repeat(2)
    a, p, n = mine_triplets(z, ids, strategy, 0.3)
    torch.testing.assert_close(loss, triplet_margin(z[a], z[p], z[n], 0.3))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_all_triplets_loss_matches_the_mined_loss_with_its_gradient(distance):
    g = torch.Generator().manual_seed(3)
    for ids in (torch.arange(5).repeat(2), torch.randint(0, 3, (11,), generator=g)):
        z = torch.randn(len(ids), 4, generator=g, dtype=torch.float64, requires_grad=True)
        a, p, n = mine_triplets(z, ids, "all", 0.4, distance=distance)
        expected = triplet_margin(z[a], z[p], z[n], 0.4, distance=distance)
        got = all_triplets_loss(z, ids, 0.4, distance)
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(torch.autograd.grad(got, z)[0], torch.autograd.grad(expected, z)[0])


def test_all_triplets_loss_without_triplets_is_a_differentiable_zero():
    z = torch.randn(4, 3, requires_grad=True)
    loss = all_triplets_loss(z, torch.arange(4), 0.2)
    loss.backward()
    assert loss.item() == 0 and torch.equal(z.grad, torch.zeros_like(z))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_zero_loss_fraction_matches_brute_force(distance):
    g = torch.Generator().manual_seed(5)
    z = torch.randn(12, 3, generator=g)
    for ids in (torch.arange(6).repeat(2), torch.randint(0, 3, (12,), generator=g)):
        for margin in (0.0, 0.3, 1.0):
            assert zero_loss_fraction(z, ids, margin, distance) == pytest.approx(
                brute_force_zero_fraction(z, ids, margin, distance), abs=1e-6
            )


def test_collapsed_embedding_costs_the_margin_and_has_no_zero_loss_triplet():
    z = torch.ones(8, 5)
    ids = torch.arange(4).repeat(2)
    assert zero_loss_fraction(z, ids, 0.2) == 0.0
    for strategy in ("hard", "semi-hard"):
        a, p, n = mine_triplets(z, ids, strategy, 0.2)
        # semi-hard falls back to the least hard negative: every negative is hard (distance 0)
        assert triplet_margin(z[a], z[p], z[n], 0.2).item() == pytest.approx(0.2)
    assert all_triplets_loss(z, ids, 0.2).item() == pytest.approx(0.2)


def test_self_supervised_positives_are_the_other_views_and_supervised_ones_the_labels():
    model = make_model()
    labels = torch.tensor([3, 1, 3])
    assert model.view_ids(labels, 3, 2, torch.device("cpu")).tolist() == [0, 1, 2, 0, 1, 2]
    model.supervised = True
    assert model.view_ids(labels, 3, 2, torch.device("cpu")).tolist() == [3, 1, 3, 3, 1, 3]


def test_stats_are_recorded_in_training_mode_only():
    model = make_model(strategy="hard")
    batch = ([images(4, 1), images(4, 2)], None)
    model.train()
    model.training_step(batch)
    model.training_step(batch)
    model.eval()
    model.training_step(batch)
    assert len(model.stats) == 2
    s = model.stats[0]
    assert isinstance(s, TripletStats) and s.mined == 8  # batch-hard: one triplet per view
    assert 0.0 <= s.zero_loss_fraction <= 1.0 and 0.0 < s.mean_distance <= 2.0


def test_all_strategy_counts_every_valid_triplet():
    model = make_model(strategy="all")
    model.training_step(([images(4, 1), images(4, 2)], None))
    assert model.stats[-1].mined == 8 * 1 * 6  # 2N anchors x 1 positive x (2N - 2) negatives


def test_gradients_reach_encoder_and_head():
    model = make_model(margin=1.0)  # a margin this large keeps every triplet active
    model.training_step(([images(4, 1), images(4, 2)], None)).backward()
    assert model.encoder.fc.weight.grad.abs().sum() > 0
    assert model.projector.net[-1].weight.grad.abs().sum() > 0


def test_head_layers_zero_puts_the_loss_on_the_encoder_output():
    model = make_model(head_layers=0)
    x = images(3, 0)
    model.eval()
    torch.testing.assert_close(model.project(x), model(x))


def test_pairwise_distance_values():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    expected_cos = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])
    torch.testing.assert_close(pairwise_distance(z, "cosine"), expected_cos)
    torch.testing.assert_close(pairwise_distance(z, "euclidean"), (2 * expected_cos).clamp(min=1e-12).sqrt())
    x = F.normalize(torch.randn(5, 3), dim=1)
    torch.testing.assert_close(pairwise_distance(x), torch.cdist(x, x).clamp(min=1e-6), atol=1e-5, rtol=1e-5)


def test_bad_input():
    with pytest.raises(ValueError, match="strategy"):
        make_model(strategy="hardest")
    with pytest.raises(ValueError, match="distance"):
        make_model(distance="manhattan")
    with pytest.raises(ValueError, match="margin"):
        make_model(margin=-0.1)
    model = make_model()
    with pytest.raises(ValueError, match="at least 2 views"):
        model.training_step(([images(2, 0)], None))
    with pytest.raises(ValueError, match="same shape"):
        model.training_step(([images(2, 0), images(3, 0)], None))
    supervised = make_model(supervised=True)
    with pytest.raises(ValueError, match=r"labels of shape \[2\]"):
        supervised.training_step(([images(2, 0), images(2, 1)], None))
    with pytest.raises(ValueError, match="ids"):
        zero_loss_fraction(torch.randn(4, 2), torch.arange(3), 0.2)


def test_spread_is_the_mean_distance_between_distinct_pairs_and_exact_near_collapse():
    z = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0]])
    assert spread(z) == pytest.approx((2**0.5 + 2.0 + 2**0.5) / 3)
    tiny = torch.ones(4, 3) + 1e-5 * torch.eye(4, 3)  # nearly coincident directions
    assert 0 < spread(tiny) < 1e-4
    assert spread(torch.ones(5, 3)) == 0.0
    with pytest.raises(ValueError, match="M >= 2"):
        spread(torch.ones(1, 3))


def test_gradients_are_reproducible_bit_for_bit():
    # Many triplets share anchors and negatives; their gradients must be summed in a fixed order.
    model = make_model(strategy="semi-hard", supervised=True)
    batch = ([images(64, 1), images(64, 2)], torch.arange(64) % 3)
    grads = []
    for _ in range(4):
        model.zero_grad()
        model.training_step(batch).backward()
        grads.append(model.encoder.fc.weight.grad.clone())
    assert all(torch.equal(grads[0], g) for g in grads[1:])
