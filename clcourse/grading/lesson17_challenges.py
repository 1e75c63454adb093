"""Lesson 17 tasks: diagnose a run that went wrong from its record, and derive the effective rank of a spectrum.

The run records of ``17.diagnose`` are drawn around the statistics lesson 17 measures (its runs on the 8x8
digits), one cause at a time, with the sizes (batch, projection and feature dimensions) varied so that a rule
must scale with them: a spread output's standard deviation is about 1/sqrt(d) [1, section 4.1], a collapsed
one's near 0; NT-Xent cannot exceed log(2N - 1) for a collapsed batch [2]; the effective rank is [3]'s.

[1] Chen & He, Exploring Simple Siamese Representation Learning (SimSiam), CVPR 2021.
[2] Chen et al., A Simple Framework for Contrastive Learning of Visual Representations (SimCLR), ICML 2020.
[3] Roy & Vetterli, The effective rank: a measure of effective dimensionality, EUSIPCO 2007.
"""

from __future__ import annotations

import math
import random

import torch

from clcourse.evaluate import effective_rank
from clcourse.grading.harness import Case, Mistake, case_seed, compare_with_reference
from clcourse.grading.registry import task

# --- 17.diagnose -------------------------------------------------------------------------------

CAUSES = ("healthy", "complete collapse", "dimensional collapse", "shortcut", "temperature too high")

# Each cause's range of (output std x sqrt(d), effective rank / feature dim, NT-Xent / log(2N - 1), probe minus
# the untrained encoder's probe in points), modelled on lesson 17's runs with wide gaps between the causes.
_SIGNATURES = {
    "healthy": ((0.75, 1.0), (0.3, 0.6), (0.45, 0.85), (4.0, 9.0)),
    "complete collapse": ((0.0, 0.12), (0.01, 0.15), (0.985, 1.0), (-12.0, -1.0)),
    "dimensional collapse": ((0.6, 1.0), (0.04, 0.18), (0.45, 0.85), (-6.0, 2.5)),
    "shortcut": ((0.75, 1.0), (0.3, 0.6), (0.4, 0.8), (-4.0, 1.0)),
    "temperature too high": ((0.6, 1.0), (0.3, 0.6), (0.965, 0.995), (-2.0, 1.5)),
}


def _record(cause: str, rng: random.Random) -> dict:
    """A run's record with the statistics of ``cause``, sizes drawn from ``rng``."""
    std, rank, loss, gain = _SIGNATURES[cause]
    batch_size = rng.choice([16, 32, 64, 128, 256, 512, 1024])
    projection_dim = rng.choice([16, 32, 64, 128, 256, 1024])
    feature_dim = rng.choice([64, 128, 512, 2048])
    probe_untrained = round(rng.uniform(60.0, 90.0), 1)
    ceiling = math.log(2 * batch_size - 1)
    return {
        "batch_size": batch_size,
        "ntxent": round(rng.uniform(*loss) * ceiling, 4),
        "projection_dim": projection_dim,
        "output_std": round(rng.uniform(*std) / math.sqrt(projection_dim), 5),
        "feature_dim": feature_dim,
        "effective_rank": round(max(1.0, rng.uniform(*rank) * feature_dim), 2),
        "probe": round(probe_untrained + rng.uniform(*gain), 1),
        "probe_untrained": probe_untrained,
    }


def _diagnose_reference(record: dict) -> str:
    """The cause: the output's spread first (a constant output also has a low rank and the loss's ceiling), then a
    loss stuck at its ceiling, then the rank, then a probe no better than the untrained encoder's."""
    if record["output_std"] * math.sqrt(record["projection_dim"]) < 0.3:
        return "complete collapse"
    if record["ntxent"] > 0.95 * math.log(2 * record["batch_size"] - 1):
        return "temperature too high"
    if record["effective_rank"] < 0.24 * record["feature_dim"]:
        return "dimensional collapse"
    if record["probe"] < record["probe_untrained"] + 2.5:
        return "shortcut"
    return "healthy"


def _diagnose_variant(record: dict, *, std_scaled=True, order=("std", "loss", "rank", "probe"), rank_scaled=True,
                      swap_collapses=False, use=("std", "loss", "rank", "probe")) -> str:
    """The reference with one slip (the defaults compute the reference)."""
    std = record["output_std"] * (math.sqrt(record["projection_dim"]) if std_scaled else 10.0)
    rank = record["effective_rank"] / (record["feature_dim"] if rank_scaled else 128.0)
    tests = {
        "std": (std < 0.3, "dimensional collapse" if swap_collapses else "complete collapse"),
        "loss": (record["ntxent"] > 0.95 * math.log(2 * record["batch_size"] - 1), "temperature too high"),
        "rank": (rank < 0.24, "complete collapse" if swap_collapses else "dimensional collapse"),
        "probe": (record["probe"] < record["probe_untrained"] + 2.5, "shortcut"),
    }
    for name in order:
        if name in use and tests[name][0]:
            return tests[name][1]
    return "healthy"


def _loss_only(record: dict) -> str:
    """Reads the loss alone: high means collapse, low means healthy."""
    return "complete collapse" if record["ntxent"] > 0.95 * math.log(2 * record["batch_size"] - 1) else "healthy"


_DIAGNOSE_MISTAKES = [
    Mistake("The loss alone cannot tell: a shortcut and a dimensional collapse lower the loss like a healthy run, "
            "and a loss stuck at log(2N - 1) is a collapse only when the outputs have no spread. Read the output's "
            "standard deviation, the effective rank and the probe too.", _loss_only),
    Mistake("The two collapses are swapped: an output with no spread (standard deviation near 0) is the complete "
            "collapse, one that spreads along few directions (low effective rank) the dimensional one.",
            lambda r: _diagnose_variant(r, swap_collapses=True)),
    Mistake("A complete collapse also has a low effective rank: look at the output's spread first, then the rank. "
            "Checked the other way round, every complete collapse reads as a dimensional one.",
            lambda r: _diagnose_variant(r, order=("rank", "std", "loss", "probe"))),
    Mistake("A collapsed batch's NT-Xent is exactly its ceiling log(2N - 1), like a run at too high a temperature: "
            "check the output's spread before the loss.",
            lambda r: _diagnose_variant(r, order=("loss", "std", "rank", "probe"))),
    Mistake("The probe was not read: a shortcut looks healthy in every training statistic; only a probe no better "
            "than the untrained encoder's gives it away.", lambda r: _diagnose_variant(r, use=("std", "loss", "rank"))),
    Mistake("The output's standard deviation was compared with a fixed number: a spread output's is about "
            "1/sqrt(d), so it depends on the projection dimension d. Compare std * sqrt(d) with a threshold.",
            lambda r: _diagnose_variant(r, std_scaled=False)),
    Mistake("The effective rank was compared with a fixed number: it is bounded by the feature dimension, so "
            "compare effective_rank / feature_dim.", lambda r: _diagnose_variant(r, rank_scaled=False)),
    Mistake("The loss's ceiling was not read: a loss near log(2N - 1), the value of a batch whose views the model "
            "cannot tell apart, means it has not learnt (here: too high a temperature).",
            lambda r: _diagnose_variant(r, use=("std", "rank", "probe"))),
]


def _diagnose_cases() -> list[Case]:
    rng = random.Random(case_seed(171))
    cases = []
    for _ in range(4):
        for cause in CAUSES:
            record = _record(cause, rng)
            cases.append(Case(f"run {len(cases) + 1} ({describe_record(record)})", (record,)))
    rng.shuffle(cases)
    return cases


def describe_record(record: dict) -> str:
    """A record in one line, as the learner sees it in a failed check."""
    return ", ".join(f"{key} {value}" for key, value in record.items())


@task("17.diagnose", "name what went wrong in a run from its loss and embedding statistics", 2, answer="diagnose")
def check_diagnose(answer) -> None:
    """Compare the learner's diagnosis with the reference on 20 drawn runs, four of each cause."""
    compare_with_reference(
        answer, _diagnose_cases(), _diagnose_reference, _DIAGNOSE_MISTAKES,
        generic_hint="Read the statistics in this order: the output's spread (std * sqrt(d), about 1 when "
                     "spread), the loss against its ceiling log(2N - 1), the effective rank against the feature "
                     "dimension, and the probe against the untrained encoder's.",
        autograd=False,
    )


# --- 17.collapse_rank --------------------------------------------------------------------------


def _rank_closed_form(k: int, d: int, a: float, b: float) -> float:
    """exp of the entropy of the singular values normalised to sum 1: k values a and d - k values b."""
    total = k * a + (d - k) * b
    entropy = -k * (a / total) * math.log(a / total)
    if d > k and b > 0:
        entropy -= (d - k) * (b / total) * math.log(b / total)
    return math.exp(entropy)


def _spectrum_features(k: int, d: int, a: float, b: float) -> torch.Tensor:
    """Centred features [2d + 1, d] whose singular values are k times a and d - k times b."""
    generator = torch.Generator().manual_seed(17)
    n = 2 * d + 1
    basis = torch.cat([torch.ones(n, 1, dtype=torch.float64), torch.randn(n, d, generator=generator,
                                                                           dtype=torch.float64)], dim=1)
    q, _ = torch.linalg.qr(basis)  # column 0 is along the ones: the other columns are centred
    singular = torch.tensor([a] * k + [b] * (d - k), dtype=torch.float64)
    return q[:, 1:] * singular


def _rank_reference(k: int, d: int, a: float, b: float) -> float:
    """The closed form, after checking it against ``clcourse.evaluate.effective_rank`` of such features."""
    closed = _rank_closed_form(k, d, a, b)
    measured = effective_rank(_spectrum_features(k, d, a, b))
    if not math.isclose(measured, closed, rel_tol=1e-6):
        raise RuntimeError(f"effective_rank gives {measured:.6g} for k={k}, d={d}, a={a}, b={b}; closed form {closed}")
    return closed


def _rank_variant(k, d, a, b, *, power=1.0, exponentiate=True, base=math.e, rest=True):
    """The closed form with one slip: singular values to a ``power``, the entropy not exponentiated, a log base, or
    the d - k small values dropped."""
    values = [a**power] * k + ([b**power] * (d - k) if rest else [])
    total = sum(values)
    entropy = -sum(v / total * math.log(v / total, base) for v in values if v > 0)
    return base**entropy if exponentiate else entropy


_RANK_MISTAKES = [
    Mistake("Those are the eigenvalues of the covariance (the squared singular values): the effective rank "
            "normalises the singular values themselves.", lambda k, d, a, b: _rank_variant(k, d, a, b, power=2.0)),
    Mistake("That is the entropy: the effective rank is its exponential, exp(H), so that k equal values give k.",
            lambda k, d, a, b: _rank_variant(k, d, a, b, exponentiate=False)),
    Mistake("The entropy was taken in bits and exponentiated with e (or the other way round): exp of the natural-"
            "log entropy.", lambda k, d, a, b: math.exp(_rank_variant(k, d, a, b, base=2.0, exponentiate=False))),
    Mistake("The d - k small singular values were left out (which gives k): they are small, not zero, and take "
            "their share of the entropy.", lambda k, d, a, b: _rank_variant(k, d, a, b, rest=False)),
    Mistake("The entropy's sign was lost: H = -sum p_i log p_i is positive, and exp(sum p_i log p_i) is 1 / rank.",
            lambda k, d, a, b: 1.0 / _rank_variant(k, d, a, b)),
    Mistake("d is the most the rank can be (all values equal): with unequal values it is less.",
            lambda k, d, a, b: float(d)),
]


def _rank_cases() -> list[Case]:
    rng = random.Random(case_seed(172))
    cases = [Case("k=3 of d=8, a=1, b=0.1", (3, 8, 1.0, 0.1)),
             Case("k=4 of d=4 (all large), a=2, b=0.5", (4, 4, 2.0, 0.5)),
             Case("k=1 of d=16, a=5, b=0.01 (one direction)", (1, 16, 5.0, 0.01)),
             Case("k=10 of d=64, a=1, b=0.2", (10, 64, 1.0, 0.2))]
    for _ in range(4):
        d = rng.randint(6, 128)
        k, a = rng.randint(1, d - 1), round(rng.uniform(0.5, 4.0), 3)
        b = round(a * rng.uniform(0.01, 0.5), 4)
        cases.append(Case(f"k={k} of d={d}, a={a}, b={b}", (k, d, a, b)))
    return cases


@task("17.collapse_rank", "derive: the effective rank of k large and d - k small singular values", 2,
      answer="collapse_rank")
def check_collapse_rank(answer) -> None:
    """Compare the learner's formula with the effective rank measured on features of that spectrum."""
    compare_with_reference(
        answer, _rank_cases(), _rank_reference, _RANK_MISTAKES,
        generic_hint="Normalise the d singular values to p_i = s_i / sum s, take H = -sum p_i log p_i, return "
                     "exp(H); group the k equal values and the d - k equal values.",
        hint_needs_every_case=True,
        autograd=False,
    )
