"""Tests of clcourse.lessons.negatives: SimCLR's in-batch negatives through info_nce, and its training helper."""

import pytest
import torch

from clcourse.augment import BatchedAugment
from clcourse.data import ImageData
from clcourse.encoders import MLP
from clcourse.lessons.negatives import (
    InBatchInfoNCE,
    NegativesRun,
    evaluate_features,
    false_negative_rate,
    in_batch_info_nce,
    in_batch_negatives,
    train_and_evaluate,
    view_embeddings,
)
from clcourse.losses import info_nce, nt_xent


def test_in_batch_negatives_excludes_self_and_partner():
    n, d = 3, 2
    z = torch.arange(2 * n, dtype=torch.float64).unsqueeze(1).expand(2 * n, d)  # row i holds the value i
    negatives = in_batch_negatives(z)
    assert negatives.shape == (2 * n, 2 * n - 2, d)
    for i in range(2 * n):
        got = negatives[i, :, 0].tolist()
        assert got == [j for j in range(2 * n) if j not in (i, (i + n) % (2 * n))]


def test_plain_in_batch_info_nce_is_nt_xent():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    for t in (0.1, 0.5):
        torch.testing.assert_close(in_batch_info_nce(z1, z2, t), nt_xent(z1, z2, t))


def test_options_are_passed_to_info_nce():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    z = torch.cat([z1, z2])
    expected = info_nce(z, torch.cat([z2, z1]), in_batch_negatives(z), 0.5, hard_negative_beta=1.0, debiased_tau_plus=0.1)
    got = in_batch_info_nce(z1, z2, 0.5, hard_negative_beta=1.0, debiased_tau_plus=0.1)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, in_batch_info_nce(z1, z2, 0.5))


def test_false_negative_rate():
    assert false_negative_rate(torch.tensor([0, 0, 1, 1])) == pytest.approx(4 / 12)  # 4 same-label ordered pairs of 12
    assert false_negative_rate(torch.arange(5)) == 0.0
    assert false_negative_rate(torch.zeros(5, dtype=torch.long)) == 1.0


def test_method_step_gradients_reach_the_encoder():
    torch.manual_seed(0)
    model = InBatchInfoNCE(MLP(16, (8,), 8), projection_dim=4, hard_negative_beta=1.0, debiased_tau_plus=0.1)
    x = torch.rand(6, 1, 4, 4)
    loss = model.training_step(([x, x + 0.01 * torch.rand_like(x)], torch.zeros(6, dtype=torch.long)))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model.encoder.net[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="2 views"):
        model.training_step(([x], None))


@pytest.fixture
def tiny_data():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(40, 1, 8, 8, generator=g)
    labels = torch.arange(40) % 4
    return ImageData(images[:32], labels[:32]), ImageData(images[32:], labels[32:])


def test_train_and_evaluate_runs_and_is_reproducible(tiny_data):
    train, test = tiny_data
    kwargs = dict(make_encoder=lambda: MLP(64, (16,), 8), projection_dim=8, batch_size=8, steps=3,
                  label_fractions={"50%": 0.5, "100%": None}, hard_negative_beta=0.5, debiased_tau_plus=0.1)
    a = train_and_evaluate("x", train, test, BatchedAugment.digits(8), **kwargs)
    torch.randn(3)  # the global RNG state in between must not matter
    b = train_and_evaluate("x", train, test, BatchedAugment.digits(8), **kwargs)
    assert isinstance(a, NegativesRun) and set(a.probe) == {"50%", "100%"}
    assert a.history.steps == 3 and a.history.step_loss == b.history.step_loss
    assert 0.0 <= a.knn <= 1.0 and a.probe == b.probe


def test_view_embeddings_are_two_views_seeded(tiny_data):
    train, _ = tiny_data
    torch.manual_seed(0)
    model = InBatchInfoNCE(MLP(64, (16,), 8), projection_dim=4).train()
    aug = BatchedAugment.digits(8)
    z1, z2 = view_embeddings(model, train.images, aug, seed=3, batch_size=10)
    assert z1.shape == z2.shape == (32, 4)
    assert not torch.allclose(z1, z2)  # different views
    again = view_embeddings(model, train.images, aug, seed=3)
    torch.testing.assert_close(again[0], z1)
    assert model.training  # the mode is restored


def test_evaluate_features_flattens_and_reports_each_label_budget(tiny_data):
    train, test = tiny_data
    probe, probe_std, knn = evaluate_features(train.images, train.labels, test.images, test.labels,
                                              {"50%": 0.5, "100%": None})
    assert set(probe) == set(probe_std) == {"50%", "100%"} and probe_std["100%"] == 0.0
    assert all(0 <= v <= 1 for v in [*probe.values(), knn])


def test_train_and_evaluate_passes_hidden_dim_weight_decay_and_channels_last(tiny_data):
    train, test = tiny_data
    run = train_and_evaluate("x", train, test, BatchedAugment.digits(8), make_encoder=lambda: MLP(64, (16,), 8),
                             projection_dim=4, hidden_dim=6, batch_size=8, steps=2, weight_decay=1e-4,
                             channels_last=False, label_fractions={"100%": None})
    assert run.model.projector.net[0].out_features == 6 and run.history.steps == 2
