"""Synthesised sound events: what happened (the event) and who made it (the timbre), every factor labelled.

Each clip is one event in background noise. The **event** is what the sound does: a steady tone, a chirp up or
down (an exponential glide over about an octave), a "voice" (vibrato and a syllable rhythm), or a noise burst.
The **timbre** is who made it, a speaker-like attribute: the amplitudes ``a_k`` of the harmonics ``k f0``, one
profile per timbre (`TIMBRE_PROFILES`), the same for every event of that timbre (a noise burst is white noise
shaped by the same profile, band ``k`` around ``k f0`` scaled by ``a_k``). Pitch, onset, length, gain and the
background noise's level are nuisances drawn independently, so a probe can ask an encoder for the event or for
the timbre, and nothing else gives either away. The idea of dSprites' known factors (`clcourse.data.shapes`),
for sound.

Synthesis is vectorised over the batch: a harmonic event is ``sum_k a_k sin(k phi(t) + theta_k)`` with
``phi(t) = 2 pi cumsum(f(t)) / sample_rate`` for the instantaneous frequency ``f(t)``, every harmonic above 0.45
of the sample rate left out (no aliasing); a noise burst is shaped in the Fourier domain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["EVENT_NAMES", "TIMBRE_NAMES", "TIMBRE_PROFILES", "SAMPLE_RATE", "Sounds", "make_sounds"]

EVENT_NAMES = ("tone", "chirp_up", "chirp_down", "voice", "noise_burst")
TIMBRE_NAMES = ("pure", "bright", "hollow", "nasal")
SAMPLE_RATE = 8000
HARMONICS = 8
_k = torch.arange(1, HARMONICS + 1, dtype=torch.float32)
# Amplitude of harmonic k = 1..8 per timbre, each profile of unit Euclidean norm:
# pure ~ k^-3 (almost a sine), bright ~ 1/k (a sawtooth's), hollow: odd harmonics 1/k only (a square wave's,
# a clarinet's), nasal: a formant around the 3rd-4th harmonic over a weak fundamental.
TIMBRE_PROFILES = torch.nn.functional.normalize(torch.stack([
    _k**-3.0,
    1.0 / _k,
    (_k % 2) / _k,
    torch.exp(-((_k - 3.5) ** 2) / 1.5) + 0.1 * (_k == 1),
]), dim=1)

PITCH_RANGE = (180.0, 480.0)  # centre pitch f0 in Hz, log-uniform
PITCH_BINS = 3
ONSET_BINS = 3
EVENT_SECONDS = (0.25, 0.35)
CHIRP_OCTAVES = (0.8, 1.2)  # a chirp glides over this many octaves, centred on f0
VIBRATO = (5.0, 7.0, 0.04)  # rate range in Hz and depth (fraction of f0) of a voice
SYLLABLES_HZ = (6.0, 9.0)  # a voice's loudness rhythm
RAMP_SECONDS = 0.015  # raised-cosine attack and release
GAIN_DB = (-12.0, 0.0)
SNR_DB = (5.0, 25.0)  # event power over the background noise's


@dataclass(eq=False)
class Sounds:
    """Mono clips with their event class and every generative factor.

    Attributes:
        waveforms: float32 [N, T] in about [-1, 1].
        labels: int64 [N], the event (index into `EVENT_NAMES`).
        factors: name -> int64 [N]: ``"event"``, ``"timbre"`` (into `TIMBRE_NAMES`), ``"pitch"`` (`PITCH_BINS`
            bins of log f0, low to high), ``"onset"`` (`ONSET_BINS` bins, early to late).
        sample_rate: samples per second.
    """

    waveforms: Tensor
    labels: Tensor
    factors: dict[str, Tensor] = field(default_factory=dict)
    sample_rate: int = SAMPLE_RATE

    def __len__(self) -> int:
        return self.waveforms.shape[0]

    def subset(self, index: Tensor | slice) -> Sounds:
        """The selected clips, labels and factors (int64 indices, a bool mask or a slice)."""
        return Sounds(self.waveforms[index], self.labels[index],
                      {name: values[index] for name, values in self.factors.items()}, self.sample_rate)

    def __repr__(self) -> str:
        n, t = self.waveforms.shape
        return (f"Sounds(n={n}, seconds={t / self.sample_rate:g}, sample_rate={self.sample_rate}, "
                f"factors={list(self.factors)})")


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def _bin(u: Tensor, bins: int) -> Tensor:
    return (u * bins).long().clamp(0, bins - 1)


def _instantaneous_frequency(event: Tensor, f0: Tensor, progress: Tensor, t: Tensor, g: torch.Generator) -> Tensor:
    """f(t) in Hz [n, T] of each clip's harmonic source; ``progress`` [n, T] runs 0 -> 1 over the event."""
    n = len(event)
    octaves = _uniform(n, *CHIRP_OCTAVES, g).view(n, 1)
    glide = torch.where(event.view(n, 1) == EVENT_NAMES.index("chirp_up"), progress - 0.5, 0.5 - progress)
    chirping = (event == EVENT_NAMES.index("chirp_up")) | (event == EVENT_NAMES.index("chirp_down"))
    rate = _uniform(n, *VIBRATO[:2], g).view(n, 1)
    vibrato = 1 + VIBRATO[2] * torch.sin(2 * math.pi * rate * t)
    ratio = torch.where(chirping.view(n, 1), 2.0 ** (octaves * glide), torch.ones_like(progress))
    ratio = torch.where((event == EVENT_NAMES.index("voice")).view(n, 1), vibrato, ratio)
    return f0.view(n, 1) * ratio


def _harmonic_source(frequency: Tensor, profile: Tensor, sample_rate: int, g: torch.Generator) -> Tensor:
    """sum_k a_k sin(k phi + theta_k) [n, T] for f(t) [n, T] and profiles [n, HARMONICS]."""
    phase = 2 * math.pi * torch.cumsum(frequency, dim=1) / sample_rate
    offsets = 2 * math.pi * torch.rand(len(frequency), HARMONICS, generator=g)
    signal = torch.zeros_like(frequency)
    limit = 0.45 * sample_rate
    for k in range(1, HARMONICS + 1):
        weight = profile[:, k - 1 : k]
        if k * float(frequency.max()) >= limit:  # only then is some sample of this harmonic too high
            weight = weight * (frequency < limit / k)
        signal.addcmul_(torch.sin(torch.add(offsets[:, k - 1 : k], phase, alpha=k)), weight)
    return signal


def _shaped_noise(f0: Tensor, profile: Tensor, length: int, sample_rate: int, g: torch.Generator) -> Tensor:
    """White noise [n, T] whose band around k f0 (half a harmonic either side) is scaled by a_k, 0 elsewhere."""
    spectrum = torch.fft.rfft(torch.randn(len(f0), length, generator=g), dim=1)
    frequencies = torch.fft.rfftfreq(length, 1 / sample_rate)
    harmonic = torch.round(frequencies.view(1, -1) / f0.view(-1, 1)).long()  # [n, F]: nearest harmonic number
    in_range = (harmonic >= 1) & (harmonic <= HARMONICS)
    gain = torch.gather(profile, 1, (harmonic.clamp(1, HARMONICS) - 1)) * in_range
    return torch.fft.irfft(spectrum * gain, n=length, dim=1)


def make_sounds(n: int, seconds: float = 0.5, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> Sounds:
    """Generate ``n`` clips of sound events in background noise (module docstring).

    Per clip, independently: the event (uniform over `EVENT_NAMES`), the timbre (uniform over `TIMBRE_NAMES`),
    the centre pitch f0 (log-uniform in `PITCH_RANGE`), the event's length (`EVENT_SECONDS`) and onset (uniform
    over where it fits), a gain (`GAIN_DB`), and white background noise `SNR_DB` below the event's power.
    Deterministic: the same arguments give the same clips.

    Args:
        n: number of clips N.
        seconds: length of a clip (>= 0.4 s, so the longest event fits with room to move).
        sample_rate: samples per second (>= 4000: the highest pitch's 4th harmonic stays below Nyquist).
        seed: seed of the CPU generator that draws everything.

    Returns:
        `Sounds` with waveforms float32 [N, round(seconds * sample_rate)].
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if not isinstance(seconds, (int, float)) or not 0.4 <= seconds <= 10:
        raise ValueError(f"seconds must be between 0.4 and 10 (the longest event is {EVENT_SECONDS[1]} s), "
                         f"got {seconds!r}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 4000:
        raise ValueError(f"sample_rate must be an int >= 4000 Hz, got {sample_rate!r}")
    g = torch.Generator().manual_seed(seed)
    length = round(seconds * sample_rate)
    event = torch.randint(len(EVENT_NAMES), (n,), generator=g)
    timbre = torch.randint(len(TIMBRE_NAMES), (n,), generator=g)
    u_pitch = torch.rand(n, generator=g)
    f0 = PITCH_RANGE[0] * (PITCH_RANGE[1] / PITCH_RANGE[0]) ** u_pitch
    duration = _uniform(n, *EVENT_SECONDS, g)
    u_onset = torch.rand(n, generator=g)
    onset = u_onset * (seconds - duration)
    gain = 10 ** (_uniform(n, *GAIN_DB, g) / 20)
    snr_db = _uniform(n, *SNR_DB, g)

    t = torch.arange(length, dtype=torch.float32).view(1, -1) / sample_rate
    progress = ((t - onset.view(n, 1)) / duration.view(n, 1)).clamp(0, 1)
    profile = TIMBRE_PROFILES[timbre]
    frequency = _instantaneous_frequency(event, f0, progress, t, g)
    signal = _harmonic_source(frequency, profile, sample_rate, g)
    noisy = event == EVENT_NAMES.index("noise_burst")
    if noisy.any():
        signal[noisy] = _shaped_noise(f0[noisy], profile[noisy], length, sample_rate, g)

    since_onset, until_end = t - onset.view(n, 1), onset.view(n, 1) + duration.view(n, 1) - t
    ramp = (torch.minimum(since_onset, until_end) / RAMP_SECONDS).clamp(0, 1)
    envelope = 0.5 - 0.5 * torch.cos(math.pi * ramp)
    syllables = 0.55 - 0.45 * torch.cos(2 * math.pi * _uniform(n, *SYLLABLES_HZ, g).view(n, 1) * since_onset)
    envelope = torch.where((event == EVENT_NAMES.index("voice")).view(n, 1), envelope * syllables, envelope)
    signal = signal * envelope
    # Unit power over the event's length, then the clip's gain; the background is snr_db below that.
    power = signal.pow(2).sum(dim=1) / (duration * sample_rate)
    signal = signal * (gain / power.sqrt()).view(n, 1)
    noise_std = gain * 10 ** (-snr_db / 20)
    waveforms = signal + noise_std.view(n, 1) * torch.randn(n, length, generator=g)

    factors = {
        "event": event,
        "timbre": timbre,
        "pitch": _bin(u_pitch, PITCH_BINS),
        "onset": _bin(u_onset, ONSET_BINS),
    }
    return Sounds(waveforms, event.clone(), factors, sample_rate)
