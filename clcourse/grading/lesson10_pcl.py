"""Lesson 10 tasks: PCL's concentration phi of every cluster, and a derivation of how many prototypes no image of a
batch belongs to.

[1] Li et al., Prototypical Contrastive Learning of Unsupervised Representations (PCL), ICLR 2021.
[2] The authors' code, github.com/salesforce/PCL: main_pcl.py (run_kmeans: the concentration's rules for clusters
    with at most one member, the 10th-90th percentile clamp, distances to the un-normalised centroids) and
    pcl/builder.py (the candidate negative prototypes of a batch).
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from clcourse.clustering import concentration
from clcourse.grading.harness import (
    Case,
    Mistake,
    case_seed,
    compare_with_reference,
    first_difference,
)
from clcourse.grading.registry import task

# --- 10.concentration ------------------------------------------------------------------------


def _concentration_variant(features, centroids, assignments, temperature, alpha=10.0, *, divide_by="log_z_alpha",
                           per_cluster="mean", singletons="largest", clamp="before", to="means", power=1):
    """PCL's concentration with one rule changed (the defaults compute :func:`clcourse.clustering.concentration`)."""
    x, c = features.double(), centroids.double()
    if to == "prototypes":
        c = F.normalize(c, dim=1)
    m = c.shape[0]
    distances = torch.linalg.vector_norm(x - c[assignments], dim=1) ** power
    counts = torch.bincount(assignments, minlength=m).double()
    sums = torch.zeros(m, dtype=torch.float64).index_add(0, assignments, distances)
    spread = sums if per_cluster == "sum" else sums / counts.clamp_min(1)
    phi = {"log_z_alpha": spread / torch.log(counts + alpha),
           "log_z": spread / torch.log(counts.clamp_min(2)),  # log 1 = 0: singletons are set by their rule below
           "nothing": spread}[divide_by]
    lonely = counts <= 1
    phi[lonely] = phi[~lonely].max() if singletons == "largest" else phi[~lonely].min()

    def clamped(values):
        low, high = torch.quantile(values, torch.tensor([0.1, 0.9], dtype=torch.float64))
        return values.clamp(low, high)

    if clamp == "before":
        phi = clamped(phi)
    phi = temperature * phi / phi.mean()
    return clamped(phi) if clamp == "after" else phi


_CONCENTRATION_MISTAKES = [
    Mistake("The division by log(Z + alpha) is missing: phi_c is the mean distance of the cluster's Z members to "
            "its centroid divided by log(Z + alpha) ([1] eq. 12), so that of two clusters equally spread the larger "
            "one gets the smaller temperature.",
            lambda *a: _concentration_variant(*a, divide_by="nothing")),
    Mistake("The smoothing constant is missing: the denominator is log(Z + alpha), not log(Z); alpha (10 in [1]) "
            "keeps small clusters from getting an overly large phi.",
            lambda *a: _concentration_variant(*a, divide_by="log_z")),
    Mistake("The distances were summed: eq. 12 divides their sum by Z log(Z + alpha), so phi_c is the *mean* "
            "distance of the members to the centroid over log(Z + alpha).",
            lambda *a: _concentration_variant(*a, per_cluster="sum")),
    Mistake("A cluster with at most one member (its own distance is 0, an empty one has none) gets the *largest* "
            "phi of the other clusters, as the authors' code does, not the smallest.",
            lambda *a: _concentration_variant(*a, singletons="smallest")),
    Mistake("The clamp is missing: before the rescale, phi is clamped to its 10th-90th percentile "
            "(torch.quantile(phi, 0.1) and (phi, 0.9)), so that one very loose or very tight cluster does not "
            "dominate the mean.",
            lambda *a: _concentration_variant(*a, clamp="none")),
    Mistake("The clamp came after the rescale, so the mean of phi is no longer the temperature: clamp to the "
            "10th-90th percentile first, then phi * temperature / phi.mean().",
            lambda *a: _concentration_variant(*a, clamp="after")),
    Mistake("The distances were measured to the normalised centroids (the prototypes): phi uses the distances to "
            "the cluster means themselves, the centroids as given, as the authors' code does.",
            lambda *a: _concentration_variant(*a, to="prototypes")),
    Mistake("The distances were squared: phi uses the Euclidean distance ||v - c||, not its square.",
            lambda *a: _concentration_variant(*a, power=2)),
]


def _clustered_points(g, sizes, dim, spreads, dtype=torch.float32):
    """Unit features around random unit centres, the points of each cluster in random order, and the true means.

    ``sizes[k]`` points for cluster k (0: an empty cluster, whose centroid is its centre), each
    normalize(centre_k + spreads[k] * noise); returns ``(features, centroids, assignments)``.
    """
    centres = F.normalize(torch.randn(len(sizes), dim, generator=g, dtype=torch.float64), dim=1)
    assignments = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    noise = torch.randn(len(assignments), dim, generator=g, dtype=torch.float64)
    features = F.normalize(centres[assignments] + torch.tensor(spreads, dtype=torch.float64)[assignments, None] * noise,
                           dim=1)
    order = torch.randperm(len(assignments), generator=g)  # members of a cluster need not be neighbours in the list
    features, assignments = features[order], assignments[order]
    centroids = torch.stack([features[assignments == k].mean(0) if size else centres[k]
                             for k, size in enumerate(sizes)])
    return features.to(dtype), centroids.to(dtype), assignments


def _concentration_cases() -> list[Case]:
    g = torch.Generator().manual_seed(case_seed(100))

    def sizes(m, low, high):
        return torch.randint(low, high + 1, (m,), generator=g).tolist()

    def spreads(m):
        return (0.1 + 0.3 * torch.rand(m, generator=g, dtype=torch.float64)).tolist()

    with_singleton = sizes(8, 2, 8)
    with_singleton[int(torch.randint(8, (1,), generator=g))] = 1
    with_empty = sizes(6, 2, 8)
    with_empty[int(torch.randint(6, (1,), generator=g))] = 0
    loose = [0.05] * 12
    loose[int(torch.randint(12, (1,), generator=g))] = 1.0
    mixed = sizes(20, 2, 10)
    mixed[:3] = [1, 1, 0]
    return [
        Case("5 clusters of 3 to 9 unit features in D = 3, their means as centroids, temperature 0.2, alpha 10",
             (*_clustered_points(g, sizes(5, 3, 9), 3, spreads(5)), 0.2, 10.0)),
        Case("8 clusters in D = 4, one of them a single point (a singleton), temperature 0.2, alpha 10",
             (*_clustered_points(g, with_singleton, 4, spreads(8)), 0.2, 10.0)),
        Case("6 clusters in D = 3, one of them empty (a centroid no point is assigned to), temperature 0.5, alpha 10",
             (*_clustered_points(g, with_empty, 3, spreads(6)), 0.5, 10.0)),
        Case("12 tight clusters of 4 in D = 5, one of them very loose (the clamp matters), temperature 0.2, alpha 10",
             (*_clustered_points(g, [4] * 12, 5, loose), 0.2, 10.0)),
        Case("float64 features and centroids, 10 clusters of 2 to 12 in D = 4, temperature 0.5, alpha 2",
             (*_clustered_points(g, sizes(10, 2, 12), 4, spreads(10), torch.float64), 0.5, 2.0)),
        Case("20 clusters in D = 8, two singletons and an empty one, temperature 0.2, alpha 2",
             (*_clustered_points(g, mixed, 8, spreads(20)), 0.2, 2.0)),
    ]


def _same_concentration(got, expected) -> str | None:
    """phi is compared in float64 within rtol 1e-4: an answer computed in the features' float32 is welcome."""
    if isinstance(got, torch.Tensor) and got.is_floating_point():
        got = got.double()
    return first_difference(got, expected, rtol=1e-4, atol=1e-6)


@task("10.concentration", "PCL's concentration phi of every cluster: the mean distance over log(Z + alpha), the "
      "singletons, the percentile clamp, mean t", 2, answer="concentration")
def check_concentration(answer) -> None:
    """Compare with clcourse.clustering.concentration, which clcourse.methods.PCL's E-step calls."""
    compare_with_reference(
        answer, _concentration_cases(), concentration, _CONCENTRATION_MISTAKES,
        generic_hint="Per cluster c with Z members: phi_c = mean of ||v - c|| over its members / log(Z + alpha). "
                     "Clusters with at most one member take the largest phi of the others; then clamp phi to "
                     "[torch.quantile(phi, 0.1), torch.quantile(phi, 0.9)] and return phi * temperature / phi.mean().",
        compare=_same_concentration,
        autograd=False,
    )


# --- 10.uncovered_prototypes -----------------------------------------------------------------


def _uncovered_reference(num_prototypes: int, batch_size: int) -> float:
    """The expected number of M prototypes that none of B images belongs to, each image in a uniform cluster.

    A given prototype is missed by one image with probability 1 - 1/M, by all B independent images with
    probability (1 - 1/M)^B; the expectation of the count is the sum over the M prototypes (linearity).
    """
    m, b = num_prototypes, batch_size
    return m * (1 - 1 / m) ** b


_UNCOVERED_MISTAKES = [
    Mistake("The exponent is B - 1: every one of the B images must miss the prototype, each with probability "
            "1 - 1/M, so a prototype stays uncovered with probability (1 - 1/M)^B.",
            lambda m, b: m * (1 - 1 / m) ** (b - 1)),
    Mistake("That is the large-M approximation M exp(-B/M): the exact count for a finite M is M (1 - 1/M)^B, "
            "and the two differ at small M, where the clusterings of a small data set are.",
            lambda m, b: m * math.exp(-b / m)),
    Mistake("max(0, M - B) assumes every image falls into a different cluster; images fall independently, so "
            "several share a cluster and more prototypes stay uncovered: each with probability (1 - 1/M)^B.",
            lambda m, b: float(max(0, m - b))),
    Mistake("M - B is the first-order expansion (1 - 1/M)^B = 1 - B/M + ... (a union bound over the images): it "
            "turns negative once B > M. Keep the power: M (1 - 1/M)^B.",
            lambda m, b: float(m - b)),
    Mistake("That counts the *covered* prototypes, M (1 - (1 - 1/M)^B): the task asks for those no image belongs "
            "to, M (1 - 1/M)^B.",
            lambda m, b: m * (1 - (1 - 1 / m) ** b)),
    Mistake("(1 - 1/M)^B is the probability that one given prototype is uncovered; the expected number sums it "
            "over the M prototypes (linearity of expectation): multiply by M.",
            lambda m, b: (1 - 1 / m) ** b),
    Mistake("M and B are swapped: each of the B images picks one of the M prototypes, so a prototype is missed "
            "with probability (1 - 1/M)^B and the expectation is M (1 - 1/M)^B.",
            lambda m, b: b * (1 - 1 / b) ** m),
]


def _uncovered_cases() -> list[Case]:
    rng = random.Random(case_seed(101))
    small = (rng.randint(3, 40), rng.randint(2, 100))
    large = (rng.randint(100, 5000), rng.choice([32, 64, 128, 256]))
    return [
        Case("M = 2 prototypes, a batch of B = 1 image", (2, 1)),
        Case("M = 4, B = 3", (4, 3)),
        Case("M = 10, B = 64", (10, 64)),
        Case("M = 50, B = 64", (50, 64)),
        Case("M = 25, B = 256 (the quick recipe's coarsest clustering of the digits)", (25, 256)),
        Case("M = 100, B = 256 (the quick recipe's finest clustering)", (100, 256)),
        Case("M = 25000, B = 256 (ImageNet in [1])", (25000, 256)),
        Case(f"M = {small[0]}, B = {small[1]}", small),
        Case(f"M = {large[0]}, B = {large[1]}", large),
    ]


@task("10.uncovered_prototypes", "derive: how many of M prototypes no image of a batch of B belongs to, on "
      "average", 2, answer="uncovered_prototypes")
def check_uncovered_prototypes(answer) -> None:
    """Compare the learner's formula with M (1 - 1/M)^B on settings the lesson does not print."""
    compare_with_reference(
        answer, _uncovered_cases(), _uncovered_reference, _UNCOVERED_MISTAKES,
        generic_hint="Take one prototype: what is the probability that one image misses it, and that all B "
                     "(independent) images do? The expected number of uncovered prototypes sums that over the M "
                     "prototypes.",
        hint_needs_every_case=True,  # single numbers coincide by chance on one setting
        autograd=False,
    )
