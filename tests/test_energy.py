"""The free energy of logits and ORE's Weibull-based unknown identifier."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from clcourse.energy import EnergyIdentifier, energy, fit_energy_identifier


def test_energy_is_minus_t_log_sum_exp_with_closed_forms():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [10.0, -10.0, -10.0, -10.0]])
    e = energy(logits)
    assert e[0].item() == pytest.approx(-math.log(4))  # four equal scores: -log C
    assert e[1].item() == pytest.approx(-10.0, abs=1e-6)  # one dominant class: its score, negated
    torch.testing.assert_close(energy(logits, temperature=2.0), -2 * torch.logsumexp(logits / 2, dim=1))
    # a very low temperature tends to minus the largest logit
    assert energy(torch.tensor([[1.0, 3.0, 2.0]]), temperature=1e-3).item() == pytest.approx(-3.0, abs=1e-2)


def test_the_identifier_recovers_two_weibulls_and_decides_by_the_higher_density():
    rng = np.random.default_rng(0)
    known_e = stats.weibull_min.rvs(3.0, loc=4.0, scale=4.0, size=3000, random_state=rng)  # -E of known objects
    unknown_e = stats.weibull_min.rvs(2.0, loc=0.5, scale=2.0, size=3000, random_state=rng)
    # logits whose -E is exactly the drawn value: one class at that score, the others far below
    to_logits = lambda values: torch.tensor(np.stack([values, values - 50], 1), dtype=torch.float64)  # noqa: E731
    identifier = fit_energy_identifier(to_logits(known_e), to_logits(unknown_e))
    assert identifier.known[0] == pytest.approx(3.0, rel=0.15) and identifier.unknown[0] == pytest.approx(2.0, rel=0.15)
    decided = identifier.is_unknown(to_logits(np.array([1.5, 9.0])))
    assert decided.tolist() == [True, False]
    # the decision is the comparison of the two log densities at -E
    grid = to_logits(np.linspace(0.6, 12, 50))
    known, unknown = identifier.log_densities(grid)
    assert torch.equal(identifier.is_unknown(grid), torch.from_numpy(unknown > known))
    assert isinstance(identifier, EnergyIdentifier) and identifier.temperature == 1.0


def test_bad_input_says_what_was_expected():
    with pytest.raises(ValueError, match=r"float \[N, C\]"):
        energy(torch.zeros(3))
    with pytest.raises(ValueError, match="temperature"):
        energy(torch.zeros(3, 2), temperature=0.0)
    with pytest.raises(ValueError, match="at least 3 distinct energies"):
        fit_energy_identifier(torch.zeros(5, 2), torch.randn(10, 2))
