"""Sound as an image: log-mel spectrograms with ``torch.stft``, and the augmented views of a spectrogram.

A waveform becomes a picture a CNN can read in three steps: the short-time Fourier transform (STFT) cuts it into
overlapping windowed frames and gives the power ``|X(t, f)|^2`` of each frequency bin; a mel filterbank sums the
bins into bands spaced like the ear's pitch resolution (narrow at low frequencies, wide at high ones); the log
turns a gain into an offset. The mel scale is HTK's, ``mel(f) = 2595 log10(1 + f / 700)`` [1], with triangular
filters whose edges are the neighbouring centres. torchaudio is not a dependency (its releases lag torch's):
the filterbank is built here and tested against its closed form.

`SpectrogramAugment` makes the two views of a clip for contrastive learning, on the log-mel itself: a time
shift, a gain, added background noise, and SpecAugment's frequency and time masks [2]. COLA [3] uses two
segments of the same clip as the positive pair; a time shift of the whole clip plays that role here.

[1] Young et al., The HTK Book, Cambridge University, 2006 (the mel scale of its filterbank analysis).
[2] Park et al., SpecAugment: A Simple Data Augmentation Method for Automatic Speech Recognition, Interspeech 2019.
[3] Saeed et al., Contrastive Learning of General-Purpose Audio Representations (COLA), ICASSP 2021.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from clcourse.checks import check_number, shape_of

__all__ = ["hz_to_mel", "mel_to_hz", "mel_filterbank", "log_mel_spectrogram", "SpectrogramAugment"]

# The log of zero power is -inf; this floor (natural-log units, power of amplitude ~1e-4) keeps silence finite.
POWER_FLOOR = 1e-8


def hz_to_mel(frequency: Tensor | float) -> Tensor:
    """HTK's mel scale [1]: ``2595 log10(1 + f / 700)`` for frequencies f >= 0 in Hz (1000 Hz is ~1000 mel)."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(frequency, dtype=torch.float64) / 700.0)


def mel_to_hz(mel: Tensor | float) -> Tensor:
    """The inverse of :func:`hz_to_mel`: ``700 (10^(m / 2595) - 1)`` Hz."""
    return 700.0 * (10.0 ** (torch.as_tensor(mel, dtype=torch.float64) / 2595.0) - 1.0)


def _check_int(name: str, value, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    return value


def mel_filterbank(n_fft: int, sample_rate: float, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> Tensor:
    """Triangular filters on the mel scale, as a matrix that maps STFT power to mel-band power.

    ``n_mels + 2`` points equally spaced in mel between ``f_min`` and ``f_max`` (default: the Nyquist frequency
    ``sample_rate / 2``), back in Hz, ``p_0 < p_1 < ... < p_{n_mels+1}``. Filter m (0-based) rises linearly from 0
    at ``p_m`` to 1 at its centre ``p_{m+1}`` and falls back to 0 at ``p_{m+2}``, evaluated at the frequencies of
    the ``n_fft // 2 + 1`` STFT bins, ``k * sample_rate / n_fft``. Neighbouring filters cross at 1/2, so between
    the first and the last centre the filters sum to exactly 1 (no normalisation by area, HTK's convention).

    Returns:
        float32 [n_mels, n_fft // 2 + 1]; ``filters @ power`` turns a power spectrum into mel-band powers.

    Raises ``ValueError`` for a band that no FFT bin falls in (too many mels for ``n_fft``: lower ``n_mels``,
    raise ``n_fft`` or ``f_min``), and for frequencies outside [0, Nyquist].
    """
    _check_int("n_fft", n_fft, 2)
    _check_int("n_mels", n_mels, 1)
    sample_rate = check_number("sample_rate", sample_rate)
    nyquist = sample_rate / 2
    f_max = nyquist if f_max is None else check_number("f_max", f_max)
    f_min = check_number("f_min", f_min, strict=False)
    if not f_min < f_max <= nyquist:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2 = {nyquist:g} Hz, got f_min={f_min:g}, "
                         f"f_max={f_max:g}")
    points = mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2,
                                      dtype=torch.float64))
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    lower, centre, upper = points[:-2, None], points[1:-1, None], points[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    filters = torch.minimum(rising, falling).clamp(min=0.0)
    empty = (filters.sum(dim=1) == 0).nonzero().flatten()
    if len(empty):
        narrowest = float((upper - lower).min())
        raise ValueError(f"mel bands {empty.tolist()} of {n_mels} contain no FFT bin (bins are "
                         f"{sample_rate / n_fft:g} Hz apart, the narrowest band spans {narrowest:.1f} Hz): lower "
                         f"n_mels, raise n_fft or raise f_min")
    return filters.float()


def log_mel_spectrogram(waveforms: Tensor, sample_rate: float, *, n_fft: int = 256, hop_length: int = 128,
                        n_mels: int = 32, f_min: float = 0.0, f_max: float | None = None) -> Tensor:
    """Log-mel spectrograms of a batch of waveforms: Hann-windowed STFT power, mel filterbank, natural log.

    ``log(filters @ |STFT|^2 + POWER_FLOOR)``; the STFT is ``torch.stft`` with a periodic Hann window of ``n_fft``
    samples, frames every ``hop_length`` samples, centred (the signal reflect-padded by ``n_fft // 2``). A gain g
    adds ``2 log g`` to every entry.

    Shapes: waveforms float [B, T] (T > n_fft // 2) -> float32 [B, n_mels, 1 + T // hop_length].
    """
    if not isinstance(waveforms, Tensor):
        raise TypeError(f"waveforms must be a torch.Tensor [B, T], got {type(waveforms).__name__}")
    if waveforms.ndim != 2 or not waveforms.is_floating_point():
        raise ValueError(f"waveforms must be a floating-point tensor [B, T] (one mono clip per row), "
                         f"got {waveforms.dtype} of shape {shape_of(waveforms)}")
    _check_int("hop_length", hop_length, 1)
    filters = mel_filterbank(n_fft, sample_rate, n_mels, f_min, f_max).to(waveforms.device)
    if waveforms.shape[1] <= n_fft // 2:
        raise ValueError(f"waveforms must be longer than n_fft // 2 = {n_fft // 2} samples (the centred STFT "
                         f"reflect-pads by that much), got shape {shape_of(waveforms)}")
    window = torch.hann_window(n_fft, device=waveforms.device)
    spectrum = torch.stft(waveforms.float(), n_fft, hop_length, window=window, center=True, return_complex=True)
    power = spectrum.real**2 + spectrum.imag**2  # [B, n_fft // 2 + 1, frames]
    return torch.log(filters @ power + POWER_FLOOR)


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _band_mask(n: int, length: int, max_width: int, generator: torch.Generator | None) -> Tensor:
    """bool [n, length]: one band of random width in [0, max_width] at a random place per row."""
    width = torch.randint(0, max_width + 1, (n, 1), generator=generator)
    start = (torch.rand(n, 1, generator=generator) * (length - width + 1)).long()
    position = torch.arange(length)
    return (position >= start) & (position < start + width)


class SpectrogramAugment(nn.Module):
    """Random views of log-mel spectrograms, every clip its own parameters, one call per batch.

    In this order, on natural-log mel power (the output of :func:`log_mel_spectrogram`):

    1. time shift by an integer number of frames in [-max_shift, max_shift]; frames shifted in are silence
       (the clip's minimum);
    2. gain in [-max_gain_db, max_gain_db] dB: ``+ gain_db * ln(10) / 10`` everywhere;
    3. background noise of the same power in every band, ``snr_db`` (low, high) dB below the clip's loudest
       entry: ``logaddexp(x, noise)``, adding powers as independent sounds do;
    4. SpecAugment [2]: one band of at most ``freq_mask`` mel bands and one of at most ``time_mask`` frames set
       to the clip's mean (Park et al. mask to the mean, zero after their normalisation).

    Shapes: [B, 1, n_mels, frames] -> the same.
    """

    def __init__(self, max_shift: int = 6, max_gain_db: float = 6.0, snr_db: tuple[float, float] = (10.0, 40.0),
                 freq_mask: int = 6, time_mask: int = 6):
        super().__init__()
        self.max_shift = _check_int("max_shift", max_shift, 0)
        self.max_gain_db = check_number("max_gain_db", max_gain_db, strict=False)
        low, high = snr_db
        if not 0 <= check_number("snr_db[0]", low, strict=False) <= check_number("snr_db[1]", high, strict=False):
            raise ValueError(f"snr_db must be (low, high) with 0 <= low <= high, got {snr_db!r}")
        self.snr_db = (float(low), float(high))
        self.freq_mask = _check_int("freq_mask", freq_mask, 0)
        self.time_mask = _check_int("time_mask", time_mask, 0)

    def extra_repr(self) -> str:
        return (f"max_shift={self.max_shift}, max_gain_db={self.max_gain_db:g}, snr_db={self.snr_db}, "
                f"freq_mask={self.freq_mask}, time_mask={self.time_mask}")

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 1 or not x.is_floating_point():
            got = f"{x.dtype} of shape {shape_of(x)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"SpectrogramAugment expects log-mel spectrograms [B, 1, n_mels, frames] as floats, "
                             f"got {got}")
        b, _, n_mels, frames = x.shape
        if self.freq_mask >= n_mels or self.time_mask >= frames:
            raise ValueError(f"masks must be narrower than the spectrogram: freq_mask={self.freq_mask} for "
                             f"{n_mels} mel bands, time_mask={self.time_mask} for {frames} frames")
        # Every random number is drawn on the CPU generator, then moved: the same views on every device.
        shift = torch.randint(-self.max_shift, self.max_shift + 1, (b, 1), generator=generator)
        gain_db = _uniform(b, -self.max_gain_db, self.max_gain_db, generator)
        snr_db = _uniform(b, *self.snr_db, generator)
        freq_band = _band_mask(b, n_mels, self.freq_mask, generator)
        time_band = _band_mask(b, frames, self.time_mask, generator)
        shift, gain_db, snr_db, freq_band, time_band = (t.to(x.device) for t in (shift, gain_db, snr_db, freq_band,
                                                                                  time_band))
        to_log = math.log(10) / 10  # decibels of power -> natural log

        source = torch.arange(frames, device=x.device) - shift  # [B, frames]: frame t shows frame t - shift
        inside = (source >= 0) & (source < frames)
        silence = x.amin(dim=(1, 2, 3), keepdim=True)
        shifted = torch.gather(x, 3, source.clamp(0, frames - 1).view(b, 1, 1, frames).expand_as(x))
        x = torch.where(inside.view(b, 1, 1, frames), shifted, silence)
        x = x + (gain_db * to_log).view(b, 1, 1, 1)
        noise = x.amax(dim=(1, 2, 3), keepdim=True) - (snr_db * to_log).view(b, 1, 1, 1)
        x = torch.logaddexp(x, noise.expand_as(x))
        masked = freq_band.view(b, 1, n_mels, 1) | time_band.view(b, 1, 1, frames)
        return torch.where(masked, x.mean(dim=(1, 2, 3), keepdim=True), x)
