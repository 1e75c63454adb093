"""BYOL's, SimSiam's and Barlow Twins' losses: closed forms, the stop-gradient, a loop, and the errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from clcourse.noncontrastive_losses import barlow_twins_loss, byol_loss, cross_correlation, simsiam_loss


def test_predictions_along_their_targets_give_the_minimum_and_orthogonal_ones_the_middle():
    z = torch.randn(8, 5, dtype=torch.float64)
    scaled = 3.0 * z  # the losses read directions only
    assert simsiam_loss(scaled, scaled, z, z).item() == pytest.approx(-1.0)
    assert byol_loss(scaled, scaled, z, z).item() == pytest.approx(0.0, abs=1e-12)
    e = torch.eye(4, dtype=torch.float64)
    orthogonal = e.roll(1, dims=1)  # row i along e_{i+1}: cos 0 with e_i
    assert simsiam_loss(orthogonal, orthogonal, e, e).item() == pytest.approx(0.0, abs=1e-12)
    assert byol_loss(orthogonal, orthogonal, e, e).item() == pytest.approx(4.0)  # (2 - 0) twice
    assert byol_loss(-e, -e, e, e).item() == pytest.approx(8.0)  # opposite: (2 + 2) twice


def test_the_losses_are_the_papers_formulas_written_out():
    g = torch.Generator().manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(4))
    d = [-F.cosine_similarity(p, z, dim=1).mean() for p, z in ((p1, z2), (p2, z1))]
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx((d[0] / 2 + d[1] / 2).item())
    mse = sum(((F.normalize(p, dim=1) - F.normalize(t, dim=1)) ** 2).sum(dim=1).mean() for p, t in ((p1, z2), (p2, z1)))
    assert byol_loss(p1, p2, z1, z2).item() == pytest.approx(mse.item())


@pytest.mark.parametrize("loss", [simsiam_loss, byol_loss])
def test_no_gradient_reaches_the_targets(loss):
    p1, p2, z1, z2 = (torch.randn(5, 3, requires_grad=True) for _ in range(4))
    loss(p1, p2, z1, z2).backward()
    assert p1.grad is not None and p2.grad is not None and p1.grad.abs().sum() > 0
    assert z1.grad is None and z2.grad is None  # the stop-gradient


def test_cross_correlation_is_a_loop_over_standardised_dimensions():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(10, 3, generator=g, dtype=torch.float64), torch.randn(10, 3, generator=g, dtype=torch.float64)
    c = cross_correlation(z1, z2, eps=0.0 + 1e-12)
    for i in range(3):
        for j in range(3):
            a, b = z1[:, i] - z1[:, i].mean(), z2[:, j] - z2[:, j].mean()
            pearson = (a * b).mean() / math.sqrt((a * a).mean() * (b * b).mean())
            assert c[i, j].item() == pytest.approx(pearson.item(), rel=1e-9)


def test_barlow_twins_closed_forms():
    # identical views whose dimensions are uncorrelated: C = I, loss 0
    signs = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    assert barlow_twins_loss(signs, signs, eps=1e-12).item() == pytest.approx(0.0, abs=1e-9)
    # the second view negated: C = -I, each diagonal term (1 - (-1))^2 = 4
    assert barlow_twins_loss(signs, -signs, eps=1e-12).item() == pytest.approx(8.0)
    # redundant dimensions (both the same): C all ones, diagonal 0, off-diagonal weighted
    same = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    assert barlow_twins_loss(same, same, 0.5, eps=1e-12).item() == pytest.approx(0.5 * 2)
    # a collapsed embedding: constant dimensions standardise to 0, C = 0, loss D
    collapsed = torch.ones(16, 7)
    assert barlow_twins_loss(collapsed, collapsed).item() == pytest.approx(7.0)


def test_bad_input_is_named():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="same shape"):
        simsiam_loss(z, z, z, torch.randn(4, 2))
    with pytest.raises(ValueError, match="floating-point"):
        byol_loss(z, z, z, torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2"):
        barlow_twins_loss(z[:1], z[:1])
    with pytest.raises(ValueError, match="off_diagonal_weight must be a finite number >= 0"):
        barlow_twins_loss(z, z, -1.0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        cross_correlation(z.numpy(), z)


def test_half_precision_inputs_give_a_float32_loss():
    z = torch.randn(8, 4).to(torch.bfloat16)
    assert simsiam_loss(z, z, z, z).dtype == torch.float32
    assert barlow_twins_loss(z, z).dtype == torch.float32
