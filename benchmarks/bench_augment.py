"""Batched vs per-sample augmentation speed on the CPU; prints markdown tables.

    .venv/bin/python benchmarks/bench_augment.py [--threads 2] [--batch-size 512]

Compares, in one run, ``torchvision.transforms.v2`` applied image by image
(:func:`clcourse.augment.simclr_transform`, :func:`~clcourse.augment.digits_transform`) with
:class:`clcourse.augment.BatchedAugment` on batches, both with the same settings and
probabilities (SimCLR [1]: crop, flip, jitter p=0.8, grayscale p=0.2, blur 3x3 sigma 0.1-2).
The two are timed alternately, repeat by repeat, so a busy shared machine hits both alike;
the table reports medians. A second table times each batched op on its own.

[1] Chen et al., SimCLR, 2020.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from torchvision.transforms import v2

from clcourse.augment import BatchedAugment, digits_transform, simclr_transform

OFF = dict(crop_scale=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0)


CLOCK = time.perf_counter  # --clock cpu: process CPU time, steadier on a busy shared machine (1 thread)


def seconds(fn) -> float:
    start = CLOCK()
    fn()
    return CLOCK() - start


def compare(per_sample, batched: BatchedAugment, images: torch.Tensor, batch_size: int, repeats: int):
    """Median images/s of the per-sample transform (over ``images``) and of the batched one."""
    generator = torch.Generator().manual_seed(0)
    batch = images[:batch_size].repeat(-(-batch_size // len(images)), 1, 1, 1)[:batch_size]
    for _ in range(2):  # warm-up: allocator, first-call dispatch
        batched(batch, generator=generator)
    per_sample(images[0])
    slow, fast = [], []
    for _ in range(repeats):
        slow.append(len(images) / seconds(lambda: [per_sample(img) for img in images]))
        fast.append(statistics.median(batch_size / seconds(lambda: batched(batch, generator=generator))
                                      for _ in range(5)))
    return statistics.median(slow), statistics.median(fast)


def batch_rate(fn, batch: torch.Tensor, repeats: int = 15) -> float:
    fn(batch)
    return statistics.median(len(batch) / seconds(lambda: fn(batch)) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--images", type=int, default=1024, help="images per per-sample timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: time by process CPU time (meaningful with --threads 1 only)")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rgb = torch.rand(args.images, 3, 32, 32)
    digits = torch.rand(args.images, 1, 16, 16)
    bs = args.batch_size

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}), load average {load:.1f}, batch {bs}, "
          f"{args.clock} clock\n")

    cases = [  # (name, images, per-sample transform, batched augment): same settings on both sides
        ("SimCLR, 32x32 RGB, blur p=0.5", rgb, simclr_transform(32, blur_p=0.5), BatchedAugment.simclr(32)),
        ("SimCLR, 32x32 RGB, no blur", rgb, simclr_transform(32, blur_p=0), BatchedAugment.simclr(32, blur_p=0)),
        ("digits, 16x16 1-channel", digits, digits_transform(16), BatchedAugment.digits(16)),
    ]
    print("| pipeline | per-sample v2 (img/s) | batched (img/s) | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for name, images, per_sample, batched in cases:
        slow, fast = compare(per_sample, batched, images, bs, args.repeats)
        print(f"| {name} | {slow:,.0f} | {fast:,.0f} | {fast / slow:.1f}x |", flush=True)
    # The ceiling for batched work: one v2 call on the whole batch, one random draw shared by all
    # images (so not a valid SimCLR augmentation).
    shared = v2.Compose([v2.RandomResizedCrop(32, antialias=True), v2.RandomHorizontalFlip(),
                         v2.ColorJitter(0.4, 0.4, 0.4, 0.1), v2.RandomGrayscale(0.2)])
    rate = batch_rate(shared, rgb[:bs])
    print(f"| (v2 called once on the whole batch: shared parameters, no blur) | | {rate:,.0f} | |")

    print(f"\nBatched SimCLR ops one at a time (32x32 RGB, batch {bs}; each row has every other op off):\n")
    print("| op | ms per batch | img/s |")
    print("| --- | ---: | ---: |")
    alone = [
        ("nothing (copy + clamp)", {}),
        ("crop + flip", dict(crop_scale=(0.08, 1.0), flip_p=0.5)),
        ("colour jitter, p=0.8", dict(jitter_p=0.8)),
        ("of which hue only", dict(jitter_p=0.8, jitter=(0, 0, 0, 0.1))),
        ("grayscale, p=0.2", dict(gray_p=0.2)),
        ("blur 3x3, p=0.5", dict(blur_p=0.5)),
    ]
    generator = torch.Generator().manual_seed(0)
    for name, knobs in alone:
        aug = BatchedAugment(32, **{**OFF, **knobs})
        rate = batch_rate(lambda x: aug(x, generator=generator), rgb[:bs])
        print(f"| {name} | {1000 * bs / rate:.2f} | {rate:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
