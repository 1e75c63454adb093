"""Sinkhorn-Knopp codes (clcourse.clustering): the marginals, the entropy, bad input, several processes."""

import math

import pytest
import torch
import torch.nn.functional as F

from clcourse.clustering import sinkhorn
from gloo import run_on_processes


def _cosines(b: int, k: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g), dim=1) @ F.normalize(torch.randn(k, d, generator=g), dim=1).T


def test_samples_sum_to_one_and_prototypes_share_the_batch_at_convergence():
    scores = _cosines(48, 12)
    codes = sinkhorn(scores, epsilon=0.05, iterations=2000)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(48))
    torch.testing.assert_close(codes.sum(dim=0), torch.full((12,), 48 / 12), atol=1e-4, rtol=1e-4)
    assert (codes >= 0).all() and not codes.requires_grad


def test_after_three_iterations_only_the_last_normalised_marginal_is_exact():
    scores = _cosines(48, 12)
    codes = sinkhorn(scores)  # epsilon 0.05, 3 iterations: SwAV's setting
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(48))  # samples, normalised last: exact
    per_prototype = codes.sum(dim=0)
    assert (per_prototype - 4).abs().max() < 2.0  # close to B / K = 4, not exact
    assert (per_prototype - 4).abs().max() > 1e-3
    uniform = torch.softmax(scores / 0.05, dim=1).sum(dim=0)  # no equipartition at all
    assert (per_prototype - 4).abs().max() < (uniform - 4).abs().max()


def test_equipartition_spreads_a_batch_that_one_prototype_would_take():
    scores = torch.full((30, 6), -0.5)
    scores[:, 0] = 0.9  # every sample's best prototype is the same one
    scores += 0.01 * _cosines(30, 6)
    codes = sinkhorn(scores, iterations=500)
    assert torch.softmax(scores / 0.05, dim=1).argmax(dim=1).eq(0).all()
    torch.testing.assert_close(codes.sum(dim=0), torch.full((6,), 5.0), atol=1e-3, rtol=1e-3)


def test_a_smaller_epsilon_gives_sharper_codes():
    scores = _cosines(64, 16)

    def entropy(codes):
        return float(-(codes * codes.clamp_min(1e-12).log()).sum(dim=1).mean())

    entropies = [entropy(sinkhorn(scores, epsilon=e)) for e in (1.0, 0.1, 0.05, 0.01)]
    assert entropies == sorted(entropies, reverse=True)
    assert entropies[0] > 0.9 * math.log(16) and entropies[-1] < 0.5
    assert torch.isfinite(sinkhorn(scores, epsilon=1e-4)).all()  # the log domain: no overflow


@pytest.mark.parametrize("kwargs, message", [
    (dict(scores=torch.zeros(4)), r"\[B, K\]"),
    (dict(scores=torch.zeros(0, 3)), r"\[B, K\]"),
    (dict(scores=torch.zeros(4, 3, dtype=torch.long)), "floating point"),
    (dict(scores=torch.zeros(4, 3), epsilon=0.0), "epsilon"),
    (dict(scores=torch.zeros(4, 3), iterations=0), "iterations"),
])
def test_bad_input_is_rejected(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        sinkhorn(**kwargs)


def _two_process_sinkhorn(rank: int) -> dict:
    scores = _cosines(24, 6)
    mine = scores[rank * 12:(rank + 1) * 12]
    return {"codes": sinkhorn(mine, gather_distributed=True), "alone": sinkhorn(mine)}


def test_two_processes_compute_the_codes_of_the_global_batch(tmp_path):
    results = run_on_processes(_two_process_sinkhorn, 2, tmp_path)
    torch.testing.assert_close(torch.cat([r["codes"] for r in results]), sinkhorn(_cosines(24, 6)))
    assert not torch.allclose(torch.cat([r["alone"] for r in results]), sinkhorn(_cosines(24, 6)))
