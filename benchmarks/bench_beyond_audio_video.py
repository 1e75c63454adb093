"""Lesson 18's sound and video sections: contrastive encoders against the raw input and an untrained encoder.

    .venv/bin/python benchmarks/bench_beyond_audio_video.py [--seeds 0 1 2] [--threads 2] [--parts sound video]

Sound: 2,000 training and 1,000 test clips of `make_sounds` (0.5 s at 8 kHz; data seeds 100 and 200, the same for
every training seed), log-mel [1, 32, 32]; SimCLR with `SpectrogramAugment` on SmallCNN(width 16, out 64, pool 2),
batch 128, Adam 2e-3 with a cosine schedule, temperature 0.5, `--audio-steps` steps. Video: 2,000 and 1,000 clips of
`make_clips` (8 frames of 24 x 24), time-contrastive windows of 3 frames (`FrameWindows`), the same encoder on 3
channels, `--video-steps` steps. Probes: logistic regression on the frozen features of the test clips, every
training label (`probe_encoders`); sound on the whole log-mel, video on the middle window (3 frames; 1 frame for
the single-frame rows). Prints markdown tables: mean ± std over the seeds and every seed, and the seconds per
run (training only; the data and the probes come on top).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from spread import mean_std

from clcourse.data.clips import make_clips
from clcourse.data.sounds import make_sounds
from clcourse.lessons.audio_video import (
    CLIP_FACTORS,
    SOUND_FACTORS,
    clip_encoder,
    probe_encoders,
    sound_encoder,
    spectrogram_data,
    train_on_clips,
    train_on_sounds,
    window_data,
)
from clcourse.train import History


def _table(title: str, factors: tuple[str, ...], rows: dict[str, list[dict[str, float]]]) -> str:
    lines = [f"\n{title}\n", "| input | " + " | ".join(f"{f} (mean ± std; per seed)" for f in factors) + " |",
             "| --- |" + " ---: |" * len(factors)]
    for name, runs in rows.items():
        cells = []
        for factor in factors:
            values = [100 * run[factor] for run in runs]
            per_seed = " / ".join(f"{v:.1f}" for v in values)
            cells.append(f"{mean_std(values)} ({per_seed})" if len(values) > 1 else f"{values[0]:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


Rows = dict[str, list[dict[str, float]]]


def _over_seeds(what: str, seeds: list[int], run: Callable[[int], tuple[Rows, float, History]],
                rows: Rows) -> tuple[Rows, list[float], list[float]]:
    """Add each seed's probes to ``rows``; ``run(seed)`` gives (probes, training seconds, history)."""
    seconds, final_losses = [], []
    for seed in seeds:
        probes, took, history = run(seed)
        seconds.append(took)
        final_losses.append(history.step_loss[-1])
        for name, accuracy in probes.items():
            rows.setdefault(name, []).append(accuracy)
        print(f"{what}, seed {seed}: {took:.1f} s, loss {history.step_loss[0]:.3f} -> {final_losses[-1]:.3f}, "
              f"{probes}", flush=True)
    return rows, seconds, final_losses


def _timed(train: Callable[[], tuple]) -> tuple[tuple, float]:
    start = time.perf_counter()
    result = train()
    return result, time.perf_counter() - start


def sound_rows(seeds: list[int], steps: int) -> tuple[Rows, list[float], list[float]]:
    train, test = spectrogram_data(make_sounds(2000, seed=100)), spectrogram_data(make_sounds(1000, seed=200))

    def run(seed: int) -> tuple[Rows, float, History]:
        torch.manual_seed(seed)
        untrained = sound_encoder()
        (model, history), took = _timed(lambda: train_on_sounds(train, steps=steps, seed=seed, device="cpu"))
        probes = probe_encoders({"untrained SmallCNN": untrained, "contrastive SmallCNN": model.encoder},
                                train, test, SOUND_FACTORS)
        return probes, took, history

    raw = probe_encoders({"raw log-mel (1,024 numbers)": None}, train, test, SOUND_FACTORS)
    return _over_seeds("sound", seeds, run, {name: [accuracy] for name, accuracy in raw.items()})


def clip_rows(seeds: list[int], steps: int) -> tuple[Rows, list[float], list[float]]:
    train_clips, test_clips = make_clips(2000, seed=100), make_clips(1000, seed=200)
    train, test = window_data(train_clips), window_data(test_clips)
    single_train, single_test = window_data(train_clips, 1), window_data(test_clips, 1)

    def run(seed: int) -> tuple[Rows, float, History]:
        torch.manual_seed(seed)
        untrained = clip_encoder()
        (model, history), took = _timed(lambda: train_on_clips(train_clips, steps=steps, seed=seed, device="cpu"))
        single, _ = train_on_clips(train_clips, steps=steps, seed=seed, window=1, device="cpu")
        probes = probe_encoders({"untrained SmallCNN, 3 frames": untrained, "time-contrastive, 3 frames":
                                 model.encoder}, train, test, CLIP_FACTORS)
        probes |= probe_encoders({"time-contrastive, 1 frame": single.encoder}, single_train, single_test,
                                 CLIP_FACTORS)
        return probes, took, history

    raw = {**probe_encoders({"raw pixels, 3 frames": None}, train, test, CLIP_FACTORS),
           **probe_encoders({"raw pixels, 1 frame": None}, single_train, single_test, CLIP_FACTORS)}
    return _over_seeds("video", seeds, run, {name: [accuracy] for name, accuracy in raw.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--audio-steps", type=int, default=150)
    parser.add_argument("--video-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parts", nargs="+", choices=("sound", "video"), default=["sound", "video"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if "sound" in args.parts:
        sound, seconds, losses = sound_rows(args.seeds, args.audio_steps)
        print(_table(f"Sound, linear probe accuracy (%), {args.audio_steps} steps of 128, seeds {args.seeds}; "
                     f"training {mean_std(seconds)} s per seed, final NT-Xent {mean_std(losses, digits=3)} "
                     f"(log 255 = 5.541 at chance)", SOUND_FACTORS, sound), flush=True)
    if "video" in args.parts:
        clips, seconds, losses = clip_rows(args.seeds, args.video_steps)
        print(_table(f"Video, linear probe accuracy (%), {args.video_steps} steps of 128, seeds {args.seeds}; "
                     f"training {mean_std(seconds)} s per seed (3 frames), final NT-Xent "
                     f"{mean_std(losses, digits=3)}", CLIP_FACTORS, clips))


if __name__ == "__main__":
    main()
