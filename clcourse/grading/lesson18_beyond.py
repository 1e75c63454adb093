"""Lesson 18 tasks: two derivations. The floor of CLIP's loss when captions only name the class, and the mel
band that holds a pure tone.

[1] Radford et al., Learning Transferable Visual Models From Natural Language Supervision (CLIP), ICML 2021.
[2] Young et al., The HTK Book (the mel scale 2595 log10(1 + f / 700)).
"""

from __future__ import annotations

import math
import random

import torch

from clcourse.audio import hz_to_mel, mel_filterbank, mel_to_hz
from clcourse.grading.harness import Case, Mistake, case_seed, compare_with_reference
from clcourse.grading.registry import task
from clcourse.losses import clip_loss

# --- 18.clip_floor ---------------------------------------------------------------------------

_LARGEST_BATCH_BUILT = 256  # up to this batch size the reference also builds the embeddings and runs clip_loss


def _clip_floor_closed_form(batch_size: int, classes: int, temperature: float) -> float:
    """The smallest CLIP loss when each of ``classes`` classes fills batch_size / classes pairs, every image and
    caption of a class sits at one point and the classes are orthogonal: each row of S / t holds B/C entries 1/t
    and B - B/C entries 0, so L = log(B/C + (B - B/C) e^(-1/t)) in both directions."""
    per_class = batch_size / classes
    return math.log(per_class + (batch_size - per_class) * math.exp(-1.0 / temperature))


def _clip_floor_built(batch_size: int, classes: int, temperature: float) -> float:
    """clcourse.losses.clip_loss on the embeddings the floor assumes: one-hot class directions, images = captions."""
    labels = torch.arange(batch_size) % classes
    embeddings = torch.eye(classes, dtype=torch.float64)[labels]
    return clip_loss(embeddings, embeddings.clone(), temperature).item()


def _clip_floor_reference(batch_size: int, classes: int, temperature: float) -> float:
    """The closed form, after checking it against clip_loss wherever the batch is small enough to build."""
    closed = _clip_floor_closed_form(batch_size, classes, temperature)
    if batch_size <= _LARGEST_BATCH_BUILT:
        built = _clip_floor_built(batch_size, classes, temperature)
        if not math.isclose(built, closed, rel_tol=1e-9, abs_tol=1e-12):
            raise RuntimeError(f"clip_loss gives {built:.9g} for B={batch_size}, C={classes}, t={temperature}; "
                               f"the closed form {closed:.9g}")
    return closed


_CLIP_FLOOR_MISTAKES = [
    Mistake("log B is the loss when every similarity is equal (a collapsed model): here the classes are apart, "
            "so the other classes' entries count e^(-1/t) each, not 1.",
            lambda b, c, t: math.log(b)),
    Mistake("log(B/C) leaves out the other classes: their B - B/C entries are e^(-1/t) each, small at t = 0.07 "
            "but not at t = 0.5 or 1. L = log(B/C + (B - B/C) e^(-1/t)).",
            lambda b, c, t: math.log(b / c)),
    Mistake("That is the floor with one positive per row, log(1 + (B - 1) e^(-1/t)) (lesson 14's closed form): "
            "here the B/C - 1 other captions of the image's class fit it exactly as well as its own, false "
            "negatives that sit at similarity 1 too.",
            lambda b, c, t: math.log(1 + (b - 1) * math.exp(-1.0 / t))),
    Mistake("The positive's logit 1/t was subtracted again: with every logit of the class at 1/t, the "
            "cross-entropy -log(e^(1/t) / sum) already is log(B/C + (B - B/C) e^(-1/t)).",
            lambda b, c, t: _clip_floor_closed_form(b, c, t) - 1.0 / t),
    Mistake("The two directions were added: CLIP's loss is their mean, and both are the same here, so the floor "
            "is one direction's value.", lambda b, c, t: 2 * _clip_floor_closed_form(b, c, t)),
    Mistake("2B/C is NT-Xent's count (two views of each image in one pool of 2B): CLIP compares B images with B "
            "captions, so a row has B/C entries of its class among B.",
            lambda b, c, t: math.log(2 * b / c + (2 * b - 2 * b / c) * math.exp(-1.0 / t))),
    Mistake("The exponent lost its temperature: the other classes' entries are e^(0 - 1/t) relative to the "
            "class's, e^(-1/t), not e^(-1).",
            lambda b, c, t: math.log(b / c + (b - b / c) * math.exp(-1.0))),
]


def _clip_floor_cases() -> list[Case]:
    rng = random.Random(case_seed(180))
    cases = [Case("B=60, C=10, t=0.07 (the lesson's starting temperature)", (60, 10, 0.07)),
             Case("B=64, C=8, t=0.5 (a warm temperature)", (64, 8, 0.5)),
             Case("B=12, C=12 (one pair per class), t=1.0", (12, 12, 1.0)),
             Case("B=40, C=2, t=2.0", (40, 2, 2.0)),
             Case("B=1,000,000, C=1,000, t=0.05 (too large to build)", (1_000_000, 1000, 0.05))]
    for _ in range(3):
        classes = rng.randint(2, 50)
        batch = classes * rng.randint(1, 40)
        temperature = round(rng.uniform(0.2, 2.0), 3)
        cases.append(Case(f"B={batch}, C={classes}, t={temperature}", (batch, classes, temperature)))
    return cases


@task("18.clip_floor", "derive: the smallest CLIP loss when captions only name one of C classes", 2,
      answer="clip_floor")
def check_clip_floor(answer) -> None:
    """Compare the learner's formula with the closed form, checked against clip_loss on the small batches."""
    compare_with_reference(
        answer, _clip_floor_cases(), _clip_floor_reference, _CLIP_FLOOR_MISTAKES,
        generic_hint="Put every image and caption of a class at one unit vector, the classes orthogonal. A row of "
                     "S / t then holds B/C entries 1/t and B - B/C entries 0; write the cross-entropy of the "
                     "diagonal entry, and note that both directions give the same.",
        hint_needs_every_case=True,  # single numbers may coincide on one setting
        autograd=False,
    )


# --- 18.mel_band -----------------------------------------------------------------------------


def _mel_band_reference(frequency: float, sample_rate: int, n_mels: int) -> int:
    """The band whose filter responds most to a pure tone of ``frequency`` Hz: the argmax of column f of
    clcourse.audio.mel_filterbank with n_fft = sample_rate (bins 1 Hz apart, so f is on a bin)."""
    filters = mel_filterbank(sample_rate, sample_rate, n_mels)
    return int(filters[:, int(frequency)].argmax())


def _nearest_centre(mel: float, spacing: float, n_mels: int, *, offset: int = 1, rounding=round) -> int:
    """The band m whose centre (m + offset) * spacing is nearest to ``mel``, clipped to [0, n_mels - 1]."""
    return min(max(int(rounding(mel / spacing)) - offset, 0), n_mels - 1)


def _mel(frequency: float) -> float:
    return float(hz_to_mel(frequency))


_MEL_BAND_MISTAKES = [
    Mistake("The points were spaced evenly in Hz: they are spaced evenly in mel, mel(f) = 2595 log10(1 + f/700). "
            "Compare mel(f) with the spacing mel(f_s / 2) / (M + 1).",
            lambda f, sr, m: _nearest_centre(f, sr / 2 / (m + 1), m)),
    Mistake("Off by one: point 0 is the lower edge of filter 0, whose centre is point 1. Band m is centred at "
            "(m + 1) times the spacing, so subtract 1.",
            lambda f, sr, m: _nearest_centre(_mel(f), _mel(sr / 2) / (m + 1), m, offset=0)),
    Mistake("Floor, not round: the tone belongs to the band whose centre is *nearest*, which may lie above it.",
            lambda f, sr, m: _nearest_centre(_mel(f), _mel(sr / 2) / (m + 1), m, rounding=math.floor)),
    Mistake("M + 2 points make M + 1 intervals between 0 and mel(f_s / 2), not M: spacing = mel(f_s / 2) / (M + 1).",
            lambda f, sr, m: _nearest_centre(_mel(f), _mel(sr / 2) / m, m)),
    Mistake("The filters span 0 to the Nyquist frequency f_s / 2, not to f_s: spacing = mel(f_s / 2) / (M + 1).",
            lambda f, sr, m: _nearest_centre(_mel(f), _mel(sr) / (m + 1), m)),
    Mistake("M + 2 points make M + 1 intervals, not M + 2: spacing = mel(f_s / 2) / (M + 1).",
            lambda f, sr, m: _nearest_centre(_mel(f), _mel(sr / 2) / (m + 2), m)),
]


def _mel_band_cases() -> list[Case]:
    """Tones near a band's centre (within 0.3 of the spacing, in mel), where the nearest centre in mel is also
    the filter that responds most (the crossings of two triangles lie at the midpoint in Hz, not in mel)."""
    rng = random.Random(case_seed(181))
    settings = [(8000, 32, 5, -0.25), (8000, 32, 20, 0.25), (16000, 40, 0, -0.2), (16000, 64, 50, 0.28),
                (8000, 16, 15, 0.1), (22050, 24, 3, -0.28)]
    settings += [(rng.choice((8000, 16000, 22050)), n, rng.randrange(n), round(rng.uniform(-0.3, 0.3), 2))
                 for n in (rng.randint(8, 80) for _ in range(3))]
    cases = []
    for sample_rate, n_mels, band, shift in settings:
        spacing = _mel(sample_rate / 2) / (n_mels + 1)
        frequency = int(round(float(mel_to_hz((band + 1 + shift) * spacing))))
        cases.append(Case(f"f={frequency} Hz, f_s={sample_rate} Hz, M={n_mels} bands",
                          (frequency, sample_rate, n_mels)))
    return cases


@task("18.mel_band", "derive: which mel band holds a pure tone, from the mel formula alone", 2, answer="mel_band")
def check_mel_band(answer) -> None:
    """Compare the learner's band with the argmax of the package's filterbank at the tone's frequency."""
    compare_with_reference(
        answer, _mel_band_cases(), _mel_band_reference, _MEL_BAND_MISTAKES,
        generic_hint="M + 2 points spaced evenly in mel from 0 to mel(f_s / 2); band m rises from point m, peaks "
                     "at point m + 1 and falls to point m + 2. Find the centre nearest to mel(f).",
        hint_needs_every_case=True,
        autograd=False,
    )
