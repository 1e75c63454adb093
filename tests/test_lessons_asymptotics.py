"""Tests of lesson 03's check of Wang & Isola's Theorem 1: closed forms on S^2 and the loss with M negatives."""

import math

import pytest
import torch

from clcourse.lessons.asymptotics import (
    centres_limit,
    contrastive_loss,
    loss_minus_log_m,
    mean_resultant_length,
    sample_sphere,
    sample_vmf,
    uniform_limit,
    vmf_log_mean_exp,
)
from clcourse.losses import nt_xent


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_identical_features_give_log_m_plus_one():
    # every similarity is 1: the positive is one of M + 1 equal candidates
    point = torch.tensor([[0.0, 0.6, 0.8]])
    for m in (1, 7, 100):
        loss = contrastive_loss(point.expand(5, 3), point.expand(5, 3), point.expand(m, 3), 0.3)
        assert loss.item() == pytest.approx(math.log(m + 1))


def test_nt_xent_is_the_loss_with_the_other_2n_minus_2_embeddings_as_negatives():
    n, d, t = 6, 5, 0.4
    z1, z2 = torch.randn(n, d, generator=generator()), torch.randn(n, d, generator=generator(1))
    z = torch.cat([z1, z2])
    positives = torch.cat([z2, z1])
    negatives = torch.stack([z[[k for k in range(2 * n) if k not in (i, (i + n) % (2 * n))]] for i in range(2 * n)])
    torch.testing.assert_close(contrastive_loss(z, positives, negatives, t), nt_xent(z1, z2, t))
    # negatives shared by every anchor ([M, D]) give the same as the same negatives repeated ([B, M, D])
    shared = torch.randn(9, d, generator=generator(2))
    torch.testing.assert_close(contrastive_loss(z, positives, shared, t),
                               contrastive_loss(z, positives, shared.expand(2 * n, 9, d), t))


def test_contrastive_loss_rejects_bad_shapes_and_temperatures():
    a = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"negatives must be \[M, 3\] or \[4, M, 3\]"):
        contrastive_loss(a, a, torch.randn(5, 2), 0.5)
    with pytest.raises(ValueError, match=r"both be \[B, D\]"):
        contrastive_loss(a, a[:3], torch.randn(5, 3), 0.5)
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        contrastive_loss(a, a, torch.randn(5, 3), 0.0)


def test_vmf_draws_are_unit_vectors_with_the_closed_form_mean_cosine():
    mode = torch.tensor([[0.0, 0.0, 1.0]]).expand(200_000, 3)
    for kappa in (0.5, 5.0, 50.0):
        x = sample_vmf(mode, kappa, generator=generator())
        torch.testing.assert_close(x.norm(dim=1), torch.ones(len(x), dtype=torch.float64))
        assert x[:, 2].mean().item() == pytest.approx(mean_resultant_length(kappa), abs=3e-3)
        assert x[:, :2].mean(0).abs().max().item() < 5e-3  # no preferred direction around the mode
    with pytest.raises(ValueError, match=r"\[n, 3\]"):
        sample_vmf(torch.randn(4, 2), 1.0)
    with pytest.raises(ValueError, match="kappa"):
        sample_vmf(mode, -1.0)


def test_views_of_uniform_images_are_uniform_and_their_mean_cosine_is_a_squared():
    images = sample_sphere(200_000, generator=generator())
    x, y = sample_vmf(images, 10.0, generator=generator(1)), sample_vmf(images, 10.0, generator=generator(2))
    assert x.mean(0).abs().max().item() < 5e-3
    assert (x * y).sum(1).mean().item() == pytest.approx(mean_resultant_length(10.0) ** 2, abs=2e-3)


@pytest.mark.parametrize("t", [0.1, 0.5, 2.0])
def test_uniform_limit_matches_its_integral(t):
    # on S^2 the cosine of a uniform point to any fixed unit vector is uniform on [-1, 1] (Archimedes)
    s = torch.linspace(-1, 1, 200_001, dtype=torch.float64)
    integral = torch.trapezoid(torch.exp(s / t), s) / 2
    limit = uniform_limit(t, kappa=4.0)
    assert limit.uniformity_term == pytest.approx(math.log(integral), rel=1e-8)
    assert limit.alignment_term == pytest.approx(-mean_resultant_length(4.0) ** 2 / t)
    assert limit.total == pytest.approx(limit.alignment_term + limit.uniformity_term)


def test_vmf_log_mean_exp_matches_sampling():
    centres = sample_sphere(3, generator=generator(5))
    anchors = sample_sphere(4, generator=generator(6))
    views = sample_vmf(centres.repeat_interleave(100_000, dim=0), 8.0, generator=generator(7))
    sampled = torch.logsumexp(anchors @ views.T / 0.5, dim=1) - math.log(len(views))
    torch.testing.assert_close(vmf_log_mean_exp(centres, 8.0, anchors, 0.5), sampled, atol=5e-3, rtol=0)
    # kappa -> 0 is the uniform distribution: its closed form again
    assert vmf_log_mean_exp(centres, 1e-7, anchors, 0.5).mean().item() == pytest.approx(
        uniform_limit(0.5, 1.0).uniformity_term, abs=1e-5)


def test_clustered_features_have_the_same_alignment_but_a_larger_uniformity_term():
    # Theorem 1: a perfectly uniform distribution minimises the uniformity term
    centres = sample_sphere(4, generator=generator(3))
    uniform, clustered = uniform_limit(0.5, 20.0), centres_limit(centres, 0.5, 20.0, samples=20_000)
    assert clustered.alignment_term == uniform.alignment_term
    assert clustered.uniformity_term > uniform.uniformity_term + 0.1
    with pytest.raises(ValueError, match=r"\[K, 3\]"):
        centres_limit(torch.randn(4, 2), 0.5, 20.0)


@pytest.mark.parametrize("t", [0.2, 1.0])
def test_loss_minus_log_m_approaches_the_limit(t):
    uniform = lambda n, g: sample_sphere(n, generator=g)
    sampled = loss_minus_log_m(uniform, 20.0, t, [8, 64, 4096], anchors=1024)
    limit = uniform_limit(t, 20.0)
    gaps = [v - sampled.alignment_term - limit.uniformity_term for v in sampled.values]
    assert gaps[0] > gaps[1] > abs(gaps[2])  # the deviation shrinks with M
    assert abs(gaps[2]) < 0.01
    assert sampled.alignment_term == pytest.approx(limit.alignment_term, abs=0.05)
    with pytest.raises(ValueError, match="ms must be numbers of negatives >= 1"):
        loss_minus_log_m(uniform, 20.0, t, [0, 4])
