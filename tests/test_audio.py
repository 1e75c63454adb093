"""Tests of clcourse.audio: the HTK mel scale, the triangular filterbank, log-mel spectrograms, SpectrogramAugment."""

from __future__ import annotations

import math

import pytest
import torch

from clcourse.audio import SpectrogramAugment, hz_to_mel, log_mel_spectrogram, mel_filterbank, mel_to_hz

SAMPLE_RATE = 8000


def test_mel_scale_closed_forms():
    assert float(hz_to_mel(0.0)) == 0.0
    assert float(hz_to_mel(700.0)) == pytest.approx(2595 * math.log10(2))
    assert float(hz_to_mel(1000.0)) == pytest.approx(1000.0, abs=0.05)  # HTK's scale puts 1000 Hz near 1000 mel
    frequencies = torch.tensor([0.0, 55.0, 440.0, 3999.0])
    assert torch.allclose(mel_to_hz(hz_to_mel(frequencies)), frequencies.double(), atol=1e-9)


def test_filterbank_shape_range_and_sum():
    filters = mel_filterbank(256, SAMPLE_RATE, 32)
    assert filters.shape == (32, 129) and filters.dtype == torch.float32
    assert filters.min() >= 0 and filters.max() <= 1
    # Neighbouring triangles cross at 1/2: between the first and the last centre they sum to exactly 1.
    centres = mel_to_hz(torch.linspace(0, float(hz_to_mel(SAMPLE_RATE / 2)), 34)[1:-1])
    bins = torch.arange(129) * SAMPLE_RATE / 256
    inside = (bins >= centres[0]) & (bins <= centres[-1])
    assert torch.allclose(filters.sum(dim=0)[inside], torch.ones(int(inside.sum())), atol=1e-5)
    # Each filter covers only its own stretch: a bin belongs to at most two neighbouring filters.
    assert int((filters > 0).sum(dim=0).max()) <= 2


def test_filterbank_equals_the_triangle_written_out():
    # n_fft 8 at 8 kHz: bins at 0, 1000, 2000, 3000, 4000 Hz; one filter from 0 Hz over its centre to 4000 Hz.
    top = float(hz_to_mel(4000.0))
    centre = float(mel_to_hz(top / 2))
    expected = [b / centre if b <= centre else (4000 - b) / (4000 - centre) for b in (0, 1000, 2000, 3000, 4000)]
    assert torch.allclose(mel_filterbank(8, SAMPLE_RATE, 1)[0], torch.tensor(expected), atol=1e-6)


@pytest.mark.parametrize("frequency", [250.0, 937.5, 2000.0, 3500.0])
def test_a_pure_tone_peaks_in_the_filter_that_holds_its_frequency(frequency):
    t = torch.arange(4000) / SAMPLE_RATE
    tone = torch.sin(2 * math.pi * frequency * t).view(1, -1)
    spectrogram = log_mel_spectrogram(tone, SAMPLE_RATE, n_fft=256, hop_length=128, n_mels=32)
    filters = mel_filterbank(256, SAMPLE_RATE, 32)
    tone_bin = round(frequency * 256 / SAMPLE_RATE)  # every frequency here falls exactly on an FFT bin
    assert int(spectrogram[0].mean(dim=1).argmax()) == int(filters[:, tone_bin].argmax())


def test_log_mel_shape_and_gain_is_an_offset():
    waveforms = torch.randn(3, 4000, generator=torch.Generator().manual_seed(0))
    spectrogram = log_mel_spectrogram(waveforms, SAMPLE_RATE, n_fft=256, hop_length=128, n_mels=32)
    assert spectrogram.shape == (3, 32, 1 + 4000 // 128) and spectrogram.dtype == torch.float32
    louder = log_mel_spectrogram(3.0 * waveforms, SAMPLE_RATE, n_fft=256, hop_length=128, n_mels=32)
    assert torch.allclose(louder - spectrogram, torch.full_like(spectrogram, 2 * math.log(3.0)), atol=1e-3)


def test_log_mel_of_silence_is_the_floor():
    silence = log_mel_spectrogram(torch.zeros(1, 1000), SAMPLE_RATE, n_fft=128, hop_length=64, n_mels=16)
    assert torch.isfinite(silence).all()
    assert torch.allclose(silence, torch.full_like(silence, math.log(1e-8)))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: log_mel_spectrogram(torch.randn(4000), SAMPLE_RATE), ValueError, r"\[B, T\]"),
        (lambda: log_mel_spectrogram(torch.ones(1, 4000, dtype=torch.int64), SAMPLE_RATE), ValueError, "floating"),
        (lambda: log_mel_spectrogram([0.0] * 4000, SAMPLE_RATE), TypeError, "torch.Tensor"),
        (lambda: log_mel_spectrogram(torch.randn(1, 100), SAMPLE_RATE), ValueError, "longer than n_fft // 2"),
        (lambda: log_mel_spectrogram(torch.randn(1, 4000), SAMPLE_RATE, hop_length=0), ValueError, "hop_length"),
        (lambda: mel_filterbank(256, SAMPLE_RATE, 32, f_max=5000.0), ValueError, "f_max <= sample_rate / 2"),
        (lambda: mel_filterbank(256, SAMPLE_RATE, 32, f_min=4000.0), ValueError, "f_min < f_max"),
        (lambda: mel_filterbank(64, SAMPLE_RATE, 64), ValueError, "contain no FFT bin"),
        (lambda: mel_filterbank(256, -1.0, 32), ValueError, "sample_rate"),
        (lambda: mel_filterbank(256, SAMPLE_RATE, 0), ValueError, "n_mels"),
    ],
)
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- SpectrogramAugment


def _spectrograms(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 1, 16, 20, generator=torch.Generator().manual_seed(1))


def test_augment_keeps_the_shape_and_replays_with_a_generator():
    x = _spectrograms()
    augment = SpectrogramAugment(max_shift=3, freq_mask=4, time_mask=4)
    first = augment(x, generator=torch.Generator().manual_seed(5))
    again = augment(x, generator=torch.Generator().manual_seed(5))
    assert first.shape == x.shape and torch.equal(first, again)
    assert not torch.equal(first, augment(x, generator=torch.Generator().manual_seed(6)))


def _only(**setting) -> SpectrogramAugment:
    # Everything off (noise 300 dB down adds e^-69 of the loudest entry), then the one setting under test.
    options = dict(max_shift=0, max_gain_db=0.0, snr_db=(300.0, 300.0), freq_mask=0, time_mask=0) | setting
    return SpectrogramAugment(**options)


def test_all_off_is_the_identity():
    x = _spectrograms()
    assert torch.allclose(_only()(x), x, atol=1e-6)


def test_time_shift_moves_whole_frames_and_fills_with_silence():
    x = _spectrograms()
    out = _only(max_shift=3)(x, generator=torch.Generator().manual_seed(0))
    silence = x.amin(dim=(1, 2, 3))
    for i in range(len(x)):
        matches = []
        for shift in range(-3, 4):
            expected = torch.full_like(x[i], float(silence[i]))
            if shift >= 0:
                expected[..., shift:] = x[i, ..., : x.shape[-1] - shift]
            else:
                expected[..., :shift] = x[i, ..., -shift:]
            matches.append(torch.allclose(out[i], expected, atol=1e-6))
        assert sum(matches) == 1, f"clip {i} is not one shift of its input"


def test_gain_adds_one_offset_per_clip_within_range():
    x = _spectrograms()
    offsets = _only(max_gain_db=6.0)(x, generator=torch.Generator().manual_seed(0)) - x
    per_clip = offsets.flatten(1)
    assert torch.allclose(per_clip, per_clip[:, :1].expand_as(per_clip), atol=1e-5)
    assert per_clip[:, 0].abs().max() <= 6.0 * math.log(10) / 10 + 1e-6


def test_noise_adds_power_and_never_lowers_an_entry():
    x = _spectrograms()
    out = _only(snr_db=(0.0, 0.0))(x, generator=torch.Generator().manual_seed(0))
    # At 0 dB the noise floor equals the loudest entry: logaddexp(x, max) = max + log(1 + e^(x - max)).
    loudest = x.amax(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(out, loudest + torch.log1p(torch.exp(x - loudest)), atol=1e-5)
    assert (out >= x).all()


def test_masks_set_one_band_and_one_stretch_to_the_mean():
    x = _spectrograms(20)
    out = _only(freq_mask=5, time_mask=4)(x, generator=torch.Generator().manual_seed(0))
    changed = out != x
    mean = x.mean(dim=(1, 2, 3))
    for i in range(len(x)):
        rows = changed[i, 0].all(dim=1).nonzero().flatten()
        columns = changed[i, 0].all(dim=0).nonzero().flatten()
        assert len(rows) <= 5 and len(columns) <= 4
        assert torch.allclose(out[i][changed[i]], mean[i].expand(int(changed[i].sum())))
        for band in (rows, columns):  # each mask is one contiguous band
            assert len(band) == 0 or int(band[-1] - band[0]) == len(band) - 1


@pytest.mark.parametrize(
    "build, x, match",
    [
        (lambda: SpectrogramAugment(), torch.randn(2, 16, 20), r"\[B, 1, n_mels, frames\]"),
        (lambda: SpectrogramAugment(), torch.randn(2, 2, 16, 20), r"\[B, 1, n_mels, frames\]"),
        (lambda: SpectrogramAugment(freq_mask=16), torch.randn(2, 1, 16, 20), "narrower"),
        (lambda: SpectrogramAugment(snr_db=(20.0, 10.0)), None, "low <= high"),
        (lambda: SpectrogramAugment(max_shift=-1), None, "max_shift"),
        (lambda: SpectrogramAugment(max_gain_db=float("nan")), None, "max_gain_db"),
    ],
)
def test_augment_bad_input_is_named(build, x, match):
    with pytest.raises(ValueError, match=match):
        build()(x)
