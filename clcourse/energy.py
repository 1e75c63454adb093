"""The energy of a classifier's logits, and ORE's energy-based unknown identifier.

A classifier trained on known classes gives an input its *free energy* [2]

    E(x) = -T log sum_{j known} exp(g_j(x) / T),

low (very negative) when some known class fits well, higher when none does. ORE [1] uses it
to tell unknown objects from known ones: on held-out detections whose truth is known (known objects, and
objects of classes the detector was not trained on, labelled "unknown"), it fits one Weibull
distribution to the known objects' energies and one to the unknowns', and calls a new detection unknown
when the unknowns' density is the higher at its energy. That fit uses unknown labels, a form of
supervision that a truly open world would not give; the lesson says so.

As ORE's code does, the distributions are fitted to the negative energy (T times the log-sum-exp, larger
for known objects), as three-parameter Weibulls (its code uses the ``reliability`` package's
``Fit_Weibull_3P``: scale, shape, shift; here :func:`scipy.stats.weibull_min`, the same family as shape,
location = shift, scale).

[1] Joseph, Khan, Khan, Balasubramanian, Towards Open World Object Detection (ORE), CVPR 2021.
[2] Liu, Wang, Owens, Li, Energy-based Out-of-distribution Detection, NeurIPS 2020.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from clcourse.checks import check_number, shape_of

__all__ = ["EnergyIdentifier", "energy", "fit_energy_identifier"]


def energy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Free energy of each row of logits [N, C] over its C (known) classes: -T logsumexp(logits / T), [N]."""
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[1] < 1 or not logits.is_floating_point():
        got = f"{logits.dtype} {shape_of(logits)}" if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be float [N, C] with C >= 1 (the known classes' scores), got {got}")
    t = check_number("temperature", temperature)
    return -t * torch.logsumexp(logits / t, dim=1)


@dataclass(frozen=True)
class EnergyIdentifier:
    """Two Weibull distributions of the negative energy -E, one for known and one for unknown objects.

    Attributes:
        known, unknown: ``(shape, location, scale)`` of :func:`scipy.stats.weibull_min`.
        temperature: T of :func:`energy`.
    """

    known: tuple[float, float, float]
    unknown: tuple[float, float, float]
    temperature: float = 1.0

    def log_densities(self, logits: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Log densities [N] of the known and of the unknown distribution at each row's -E (logits [N, C])."""
        negative_energy = (-energy(logits.detach().float().cpu(), self.temperature)).double().numpy()
        return (stats.weibull_min.logpdf(negative_energy, *self.known),
                stats.weibull_min.logpdf(negative_energy, *self.unknown))

    def is_unknown(self, logits: Tensor) -> Tensor:
        """bool [N]: True where the unknowns' density is higher than the knowns' at the row's energy."""
        known, unknown = self.log_densities(logits)
        return torch.from_numpy(unknown > known)


def fit_energy_identifier(known_logits: Tensor, unknown_logits: Tensor, temperature: float = 1.0) -> EnergyIdentifier:
    """Fit ORE's identifier on held-out logits [N_k, C] of known objects and [N_u, C] of unknown objects.

    Each side needs at least 3 rows with distinct energies (three parameters); a Weibull's support starts at
    its location, so a density of 0 (log -inf) beyond either fit is possible and decides for the other side.
    """
    fits = []
    for name, logits in (("known", known_logits), ("unknown", unknown_logits)):
        values = (-energy(logits.detach().float().cpu(), temperature)).double().numpy()
        if len(np.unique(values)) < 3:
            raise ValueError(f"{name}_logits must give at least 3 distinct energies to fit a 3-parameter Weibull, "
                             f"got {len(values)} rows ({len(np.unique(values))} distinct)")
        fits.append(tuple(float(v) for v in stats.weibull_min.fit(values)))
    return EnergyIdentifier(known=fits[0], unknown=fits[1], temperature=float(temperature))
