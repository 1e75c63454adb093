"""Lesson 10 checks: the references agree with the package, solutions pass, typical wrong answers get their hint."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from wrong_answers import assert_covers, assert_rejected_with_hint, each_wrong_answer

from clcourse import clustering
from clcourse.grading import evaluate, tasks
from clcourse.grading.harness import call_plain, first_difference
from clcourse.grading.lesson10_pcl import (
    _CONCENTRATION_MISTAKES,
    _UNCOVERED_MISTAKES,
    _concentration_cases,
    _same_concentration,
    _uncovered_cases,
    _uncovered_reference,
)
from clcourse.methods import PCL


def test_lesson_10_has_two_tasks():
    assert [t.id for t in tasks(10)] == ["10.concentration", "10.uncovered_prototypes"]


class Flat(torch.nn.Module):
    out_dim = 64

    def forward(self, x):
        return x.flatten(1)


def test_concentration_reference_is_what_the_e_step_stores():
    """The check's reference is clustering.concentration, on the E-step's own k-means (seed kmeans_seed + g)."""
    torch.manual_seed(0)
    method = PCL(Flat(), projection_dim=6, queue_size=16, num_clusters=(3, 7), warmup_epochs=0, alpha=4.0)
    features = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    method.e_step(features)
    unit = F.normalize(features, dim=1)
    for g, (m, clusters) in enumerate(zip((3, 7), method.clusterings)):
        centroids, assignments = clustering.kmeans(unit, m, seed=g)
        expected = clustering.concentration(unit, centroids, assignments, method.temperature, alpha=4.0)
        assert torch.equal(clusters.assignments, assignments)
        torch.testing.assert_close(clusters.concentration, expected.float())  # the buffer is float32


def test_concentration_cases_hold_what_their_names_say():
    for case in _concentration_cases():
        features, centroids, assignments, temperature, alpha = case.args
        counts = torch.bincount(assignments, minlength=len(centroids))
        torch.testing.assert_close(features.norm(dim=1), torch.ones(len(features), dtype=features.dtype))
        assert clustering.concentration(*case.args).mean().item() == pytest.approx(temperature)
        if "singleton" in case.name:
            assert (counts == 1).any()
        if "empty" in case.name:
            assert (counts == 0).any()
        if "float64" in case.name:
            assert features.dtype == centroids.dtype == torch.float64


@pytest.mark.parametrize("mistake", _CONCENTRATION_MISTAKES + _UNCOVERED_MISTAKES, ids=lambda m: m.hint[:40])
def test_every_mistake_differs_from_the_reference_on_some_case(mistake):
    if mistake in _CONCENTRATION_MISTAKES:
        cases, reference, compare = _concentration_cases(), clustering.concentration, _same_concentration
    else:
        cases, reference, compare = _uncovered_cases(), _uncovered_reference, first_difference
    assert any(compare(call_plain(mistake.fn, case), call_plain(reference, case)) is not None for case in cases)


def simulated_uncovered(num_prototypes, batch_size, draws=20_000, seed=0):
    """Draw batches of uniform cluster indices and count the clusters none of them hit; (mean, standard error)."""
    g = torch.Generator().manual_seed(seed)
    clusters = torch.randint(num_prototypes, (draws, batch_size), generator=g).sort(dim=1).values
    distinct = 1 + (clusters[:, 1:] != clusters[:, :-1]).sum(dim=1)
    uncovered = (num_prototypes - distinct).double()
    return uncovered.mean().item(), uncovered.std().item() / math.sqrt(draws)


@pytest.mark.parametrize("case", _uncovered_cases(), ids=lambda case: case.name)
def test_uncovered_reference_is_the_simulated_count(case):
    mean, standard_error = simulated_uncovered(*case.args)
    assert abs(mean - _uncovered_reference(*case.args)) <= 5 * standard_error + 1e-9


def test_at_small_m_a_batch_leaves_almost_no_prototype_uncovered():
    """Why the course follows eq. 6: the authors' code draws its negatives from the uncovered prototypes."""
    assert _uncovered_reference(10, 64) == pytest.approx(0.0118, rel=0.01)
    assert _uncovered_reference(25, 256) < 1e-3 and _uncovered_reference(100, 256) == pytest.approx(7.63, rel=1e-3)
    assert _uncovered_reference(25000, 256) > 0.98 * 25000


# --- solutions a learner might write ---------------------------------------------------------

def concentration_solution(features, centroids, assignments, temperature, alpha=10.0):
    m = len(centroids)
    distances = (features - centroids[assignments]).norm(dim=1)
    counts = torch.bincount(assignments, minlength=m).to(features.dtype)
    mean_distance = torch.zeros(m, dtype=features.dtype).index_add(0, assignments, distances) / counts.clamp_min(1)
    phi = mean_distance / torch.log(counts + alpha)
    phi[counts <= 1] = phi[counts > 1].max()
    low, high = torch.quantile(phi, torch.tensor([0.1, 0.9], dtype=phi.dtype))
    phi = phi.clamp(low, high)
    return temperature * phi / phi.mean()


def concentration_with_numpy(features, centroids, assignments, temperature, alpha=10.0):
    """A loop over the clusters in float64 NumPy, np.percentile's linear interpolation for the clamp."""
    x, c, s = features.double().numpy(), centroids.double().numpy(), assignments.numpy()
    phi = np.full(len(c), np.nan)
    for k in range(len(c)):
        members = x[s == k]
        if len(members) > 1:
            phi[k] = np.linalg.norm(members - c[k], axis=1).mean() / np.log(len(members) + alpha)
    phi[np.isnan(phi)] = np.nanmax(phi)
    phi = np.clip(phi, np.percentile(phi, 10), np.percentile(phi, 90))
    return torch.from_numpy(temperature * phi / phi.mean())


def uncovered_solution(num_prototypes, batch_size):
    return num_prototypes * (1 - 1 / num_prototypes) ** batch_size


def uncovered_in_integers(num_prototypes, batch_size):
    """(M - 1)^B / M^(B - 1): exact integers, one division at the end."""
    return (num_prototypes - 1) ** batch_size / num_prototypes ** (batch_size - 1)


def uncovered_as_tensor(num_prototypes, batch_size):
    return num_prototypes * torch.exp(batch_size * torch.log1p(torch.tensor(-1 / num_prototypes)))


@pytest.mark.parametrize("task_id, answer", [
    ("10.concentration", concentration_solution), ("10.concentration", concentration_with_numpy),
    ("10.uncovered_prototypes", uncovered_solution), ("10.uncovered_prototypes", uncovered_in_integers),
    ("10.uncovered_prototypes", uncovered_as_tensor),
])
def test_correct_answers_pass(task_id, answer):
    result = evaluate(task_id, answer)
    assert result.passed, result.message


# --- typical wrong answers: each must fail with a hint naming the mistake --------------------

def phi(features, centroids, assignments, t, alpha=10.0, *, log=True, smoothed=True, total=False, lonely="max",
        clamp="before", unit_centroids=False, squared=False):
    """A learner's loop over the clusters, in the features' dtype, with one of the typical slips."""
    m = len(centroids)
    targets = F.normalize(centroids, dim=1) if unit_centroids else centroids
    counts = torch.bincount(assignments, minlength=m)
    values = torch.zeros(m, dtype=features.dtype)
    for k in range(m):
        z = int(counts[k])
        if z < 2:
            continue
        d = (features[assignments == k] - targets[k]).norm(dim=1)
        spread = (d**2 if squared else d).sum() / (1 if total else z)
        values[k] = spread / math.log(z + alpha if smoothed else z) if log else spread
    others = values[counts >= 2]
    values[counts < 2] = {"max": others.max(), "min": others.min(), "mean": others.mean()}[lonely]

    def clamped(v):
        return v.clamp(torch.quantile(v, 0.1), torch.quantile(v, 0.9))

    values = clamped(values) if clamp == "before" else values
    values = t * values / values.mean()
    return clamped(values) if clamp == "after" else values


def uncovered_by_linear_expansion(m, b):
    return m * (1 - b / m)


WRONG = {
    "10.concentration": [
        (lambda *a: phi(*a, log=False), "division by log(Z + alpha) is missing"),
        (lambda *a: phi(*a, smoothed=False), "smoothing constant is missing"),
        (lambda *a: phi(*a, total=True), "distances were summed"),
        (lambda *a: phi(*a, lonely="min"), "gets the *largest* phi"),
        (lambda *a: phi(*a, lonely="mean"), "take the largest phi of the others"),  # no mistake: the generic hint
        (lambda *a: phi(*a, clamp="none"), "clamp is missing"),
        (lambda *a: phi(*a, clamp="after"), "clamp came after the rescale"),
        (lambda *a: phi(*a, unit_centroids=True), "normalised centroids"),
        (lambda *a: phi(*a, squared=True), "distances were squared"),
    ],
    "10.uncovered_prototypes": [
        (lambda m, b: m * ((m - 1) / m) ** (b - 1), "exponent is B - 1"),
        (lambda m, b: m * math.exp(-b / m), "large-M approximation"),
        (lambda m, b: max(0, m - b), "every image falls into a different cluster"),
        (uncovered_by_linear_expansion, "first-order expansion"),
        (lambda m, b: m - m * ((m - 1) / m) ** b, "*covered*"),
        (lambda m, b: ((m - 1) / m) ** b, "probability that one given prototype"),
        (lambda m, b: b * ((b - 1) / b) ** m, "M and B are swapped"),
    ],
}


def test_wrong_answers_cover_every_task():
    assert_covers(WRONG, tasks(10))


@each_wrong_answer(WRONG)
def test_wrong_answer_is_rejected_with_its_hint(task_id, answer, mistake):
    assert_rejected_with_hint(task_id, answer, mistake)


def test_a_larger_cluster_gets_a_smaller_concentration_at_the_same_spread():
    """The 'predict first' of task 1: at the same mean distance, phi goes as 1 / log(Z + alpha), so the cluster
    of 5 gets the larger phi, and a smaller alpha widens the gap between small and large clusters."""
    angles = [torch.linspace(0, 2 * math.pi, z + 1, dtype=torch.float64)[:-1] for z in (5, 50)]
    features = torch.cat([torch.stack([a.cos(), a.sin()], dim=1) for a in angles])  # all at distance 1
    centroids, assignments = torch.zeros(2, 2, dtype=torch.float64), torch.tensor([0] * 5 + [1] * 50)
    small_over_large = {}
    for alpha in (10.0, 2.0):
        got = clustering.concentration(features, centroids, assignments, 0.1, alpha)
        small_over_large[alpha] = (got[0] / got[1]).item()
    assert 1 < small_over_large[10.0] < small_over_large[2.0]
