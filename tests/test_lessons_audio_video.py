"""Tests of clcourse.lessons.audio_video: lesson 18's sound and video pipelines, end to end on tiny data."""

from __future__ import annotations

import torch

from clcourse.data.clips import make_clips
from clcourse.data.sounds import make_sounds
from clcourse.lessons.audio_video import (
    CLIP_FACTORS,
    SOUND_FACTORS,
    probe_encoders,
    spectrogram_data,
    train_on_clips,
    train_on_sounds,
    window_data,
)


def test_spectrogram_and_window_data_keep_labels_and_factors():
    sounds = make_sounds(12, seed=0)
    spectrograms = spectrogram_data(sounds)
    assert spectrograms.images.shape == (12, 1, 32, 32)
    assert torch.equal(spectrograms.factors["timbre"], sounds.factors["timbre"])
    clips = make_clips(6, frames=8, size=24, seed=0)
    assert window_data(clips).images.shape == (6, 3, 24, 24)
    assert torch.equal(window_data(clips, 1).images[:, 0], clips.videos[:, 3])
    assert torch.equal(window_data(clips).labels, clips.labels)


def test_sound_training_runs_its_steps_and_is_reproducible():
    train = spectrogram_data(make_sounds(48, seed=0))
    model, history = train_on_sounds(train, steps=3, seed=1, batch_size=16, device="cpu")
    again, _ = train_on_sounds(train, steps=3, seed=1, batch_size=16, device="cpu")
    assert history.steps == 3 and all(torch.isfinite(torch.tensor(history.step_loss)))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert model.encoder(train.images[:4]).shape == (4, 64)


def test_clip_training_with_three_frames_and_with_one():
    clips = make_clips(48, seed=0)
    for window in (3, 1):
        model, history = train_on_clips(clips, steps=2, seed=0, window=window, batch_size=16, device="cpu")
        assert history.steps == 2
        assert model.encoder(window_data(clips, window).images[:4]).shape == (4, 64)


def test_probe_encoders_gives_every_factor_of_every_encoder():
    train, test = spectrogram_data(make_sounds(60, seed=0)), spectrogram_data(make_sounds(30, seed=1))
    model, _ = train_on_sounds(train, steps=1, batch_size=16, device="cpu")
    table = probe_encoders({"raw": None, "encoder": model.encoder}, train, test, SOUND_FACTORS)
    assert set(table) == {"raw", "encoder"} and all(set(row) == set(SOUND_FACTORS) for row in table.values())
    assert all(0 <= accuracy <= 1 for row in table.values() for accuracy in row.values())
    clips = make_clips(40, seed=0)
    table = probe_encoders({"raw": None}, window_data(clips), window_data(clips), CLIP_FACTORS)
    assert set(table["raw"]) == set(CLIP_FACTORS)
