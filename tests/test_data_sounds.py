"""Tests of clcourse.data.sounds: the synthesised sound events, their factors and their spectra."""

from __future__ import annotations

import pytest
import torch

from clcourse.data import sounds
from clcourse.data.sounds import EVENT_NAMES, TIMBRE_NAMES, TIMBRE_PROFILES, make_sounds


def test_clips_shapes_factors_and_determinism():
    clips = make_sounds(60, seconds=0.5, seed=3)
    assert clips.waveforms.shape == (60, 4000) and clips.waveforms.dtype == torch.float32
    assert torch.isfinite(clips.waveforms).all()
    assert set(clips.factors) == {"event", "timbre", "pitch", "onset"}
    assert torch.equal(clips.labels, clips.factors["event"])
    assert int(clips.factors["event"].max()) < len(EVENT_NAMES)
    assert int(clips.factors["timbre"].max()) < len(TIMBRE_NAMES)
    assert torch.equal(make_sounds(60, seconds=0.5, seed=3).waveforms, clips.waveforms)
    assert not torch.equal(make_sounds(60, seconds=0.5, seed=4).waveforms, clips.waveforms)
    part = clips.subset(torch.tensor([5, 2]))
    assert len(part) == 2 and torch.equal(part.factors["timbre"], clips.factors["timbre"][[5, 2]])
    assert "n=60" in repr(clips)


def test_timbre_profiles_are_unit_harmonic_amplitudes():
    assert TIMBRE_PROFILES.shape == (len(TIMBRE_NAMES), sounds.HARMONICS)
    assert torch.allclose(TIMBRE_PROFILES.norm(dim=1), torch.ones(len(TIMBRE_NAMES)))
    hollow = TIMBRE_PROFILES[TIMBRE_NAMES.index("hollow")]
    assert torch.all(hollow[1::2] == 0)  # a square wave's: no even harmonics


def _power_at(signal: torch.Tensor, frequency: float, sample_rate: int) -> float:
    spectrum = torch.fft.rfft(signal).abs() ** 2
    return float(spectrum[round(frequency * len(signal) / sample_rate)])


def test_harmonic_source_has_the_profile_of_its_timbre():
    # 8000 samples at 8 kHz: FFT bins 1 Hz apart, so every harmonic of 200 Hz falls on one bin.
    frequency = torch.full((1, 8000), 200.0)
    hollow = TIMBRE_PROFILES[TIMBRE_NAMES.index("hollow")].view(1, -1)
    signal = sounds._harmonic_source(frequency, hollow, 8000, torch.Generator().manual_seed(0))[0]
    powers = torch.tensor([_power_at(signal, 200.0 * k, 8000) for k in range(1, sounds.HARMONICS + 1)])
    # A sine of amplitude a over N samples has |X|^2 = (a N / 2)^2 at its bin.
    assert torch.allclose(powers, (hollow[0] * 8000 / 2) ** 2, rtol=1e-3, atol=1e-2)


def test_harmonics_above_the_limit_are_left_out():
    frequency = torch.full((1, 8000), 1000.0)  # harmonics 4..8 would be at 4000 Hz and beyond
    bright = TIMBRE_PROFILES[TIMBRE_NAMES.index("bright")].view(1, -1)
    signal = sounds._harmonic_source(frequency, bright, 8000, torch.Generator().manual_seed(0))[0]
    spectrum = torch.fft.rfft(signal).abs() ** 2
    assert float(spectrum[3500:].sum()) < 1e-6 * float(spectrum.sum())
    assert _power_at(signal, 3000.0, 8000) > 0.01 * float(spectrum.sum())


def test_shaped_noise_keeps_only_the_bands_of_the_harmonics():
    f0 = torch.tensor([250.0])
    pure = TIMBRE_PROFILES[TIMBRE_NAMES.index("pure")].view(1, -1)
    noise = sounds._shaped_noise(f0, pure, 8000, 8000, torch.Generator().manual_seed(0))[0]
    spectrum = torch.fft.rfft(noise).abs() ** 2  # 1 Hz bins
    total = float(spectrum.sum())
    assert float(spectrum[:125].sum()) == pytest.approx(0.0, abs=1e-6 * total)  # below half the fundamental
    assert float(spectrum[int(8.5 * 250) + 1 :].sum()) == pytest.approx(0.0, abs=1e-6 * total)  # above harmonic 8
    # Band k holds power in proportion to a_k^2 (white noise: the same power per bin before shaping).
    first, second = float(spectrum[125:375].sum()), float(spectrum[375:625].sum())
    assert second / first == pytest.approx(float(pure[0, 1] / pure[0, 0]) ** 2, rel=0.25)


def _peak_bin_path(waveforms: torch.Tensor) -> list[tuple[int, int]]:
    """(first, last) loudest FFT bin over the frames within 10 dB of each clip's loudest frame.

    Linear bins, not mel bands: a wide high mel band collects more of the white background than the event's
    narrow fundamental holds.
    """
    window = torch.hann_window(256)
    power = torch.stft(waveforms, 256, 128, window=window, return_complex=True).abs() ** 2  # [B, 129, frames]
    paths = []
    for clip in power:
        peak = clip.max(dim=0).values
        loud = (peak > peak.max() / 10).nonzero().flatten()
        paths.append((int(clip[:, loud[0]].argmax()), int(clip[:, loud[-1]].argmax())))
    return paths


def test_chirps_glide_and_tones_stay():
    clips = make_sounds(200, seed=0)
    pure = clips.factors["timbre"] == TIMBRE_NAMES.index("pure")  # the loudest band follows the fundamental
    for event, check in (("chirp_up", lambda a, b: b > a), ("chirp_down", lambda a, b: b < a),
                         ("tone", lambda a, b: abs(b - a) <= 1)):
        chosen = (clips.labels == EVENT_NAMES.index(event)) & pure
        assert chosen.sum() >= 3
        paths = _peak_bin_path(clips.waveforms[chosen])
        assert all(check(a, b) for a, b in paths), f"{event}: loudest bins (first, last) {paths}"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=0), "n must be"),
        (dict(n=4, seconds=0.2), "seconds"),
        (dict(n=4, sample_rate=2000), "sample_rate"),
        (dict(n=4, sample_rate=8000.0), "sample_rate"),
    ],
)
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_sounds(**kwargs)
