"""SimCLR training throughput of the full profile's model: float32 against mixed precision.

ResNet-18 with the CIFAR stem, SimCLR's 2-layer head, NT-Xent, batch 512 of 32x32 RGB images,
views made on the device by `BatchedAugment.simclr` inside `ViewLoader`, trained by
`clcourse.train.fit` (Adam), exactly the loop `clcourse train simclr --profile full` runs.
The images are the course's procedural shapes (32x32, like CIFAR-10), so the script needs no
download; the cost of a step does not depend on what the pixels show.

`fit`'s default on CUDA is the last configuration (autocast + channels-last weights).
Each configuration is warmed up, then timed over a fixed number of optimiser steps; the
configurations alternate repeat by repeat so that clock and thermal drift hit them alike.
Prints a markdown table with images per second, peak GPU memory and the ratio to float32.

    python benchmarks/bench_simclr_throughput.py [--batch-size 512] [--steps 40] [--repeats 3]

Without a GPU it says so and measures nothing, unless ``--allow-cpu``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from clcourse.augment import BatchedAugment
from clcourse.data import ViewLoader, make_shapes
from clcourse.device import autocast_dtype, get_device, seed_everything
from clcourse.encoders import resnet18_cifar
from clcourse.methods import SimCLR
from clcourse.train import fit


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model: SimCLR, loader: ViewLoader, steps: int, amp: bool, channels_last: bool,
               device: torch.device) -> float:
    """Seconds for ``steps`` optimiser steps of ``fit`` (data, augmentation, forward, backward, update)."""
    _synchronize(device)
    start = time.perf_counter()
    fit(model, loader, steps=steps, lr=1e-3, device=device, progress=False, amp=amp, channels_last=channels_last)
    _synchronize(device)
    return time.perf_counter() - start


def time_views(loader: ViewLoader, steps: int, device: torch.device) -> float:
    """Seconds to produce ``steps`` batches of two augmented views: the data side of a step."""
    _synchronize(device)
    start = time.perf_counter()
    batches = iter(loader)
    for _ in range(steps):
        try:
            next(batches)
        except StopIteration:
            batches = iter(loader)
            next(batches)
    _synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--allow-cpu", action="store_true",
                        help="run without a GPU too (hours at the default sizes; use tiny ones to try the script)")
    args = parser.parse_args()

    device = get_device()
    if device.type == "cpu" and not args.allow_cpu:
        print("bench_simclr_throughput: no GPU here, nothing measured (the full profile's model is for GPUs; "
              "--allow-cpu with e.g. --batch-size 16 --steps 2 runs it anyway)")
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type} ({torch.get_num_threads()} threads)"
    torch.backends.cudnn.benchmark = True
    data = make_shapes(args.images, image_size=32, seed=0)
    mixed = f"autocast {str(autocast_dtype(device) or 'off (float32)').replace('torch.', '')}"
    # label -> (mixed precision, channels-last weights: convolutions then run in NHWC)
    configs = {"float32": (False, False), mixed: (True, False), f"{mixed} + channels_last": (True, True)}
    models, loaders = {}, {}
    for label, (amp, channels_last) in configs.items():
        seed_everything(0)
        models[label] = SimCLR(resnet18_cifar(), projection_dim=128, temperature=0.5)
        loaders[label] = ViewLoader(data, BatchedAugment.simclr(32), batch_size=args.batch_size, seed=0, device=device)
        time_steps(models[label], loaders[label], args.warmup, amp, channels_last, device)

    seconds = {label: [] for label in configs}
    peak_mb = {}
    views_seconds = []
    for _ in range(args.repeats):
        views_seconds.append(time_views(loaders["float32"], args.steps, device))
        for label, (amp, channels_last) in configs.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds[label].append(time_steps(models[label], loaders[label], args.steps, amp, channels_last, device))
            if device.type == "cuda":
                peak_mb[label] = torch.cuda.max_memory_allocated(device) / 2**20

    print(f"SimCLR, ResNet-18 (CIFAR stem), batch {args.batch_size} of 32x32 RGB, two views augmented on the "
          f"device, Adam; {args.steps} steps x {args.repeats} repeats after {args.warmup} warm-up steps; "
          f"torch {torch.__version__} on {name}\n")
    print("| configuration | images/s (median) | ms per step | peak GPU memory MB | speed vs float32 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    baseline = statistics.median(seconds["float32"])
    for label in configs:
        median = statistics.median(seconds[label])
        images_per_s = args.batch_size * args.steps / median
        memory = f"{peak_mb[label]:,.0f}" if label in peak_mb else "-"
        print(f"| {label} | {images_per_s:,.0f} | {1000 * median / args.steps:.1f} | {memory} | "
              f"{baseline / median:.2f}x |")
    views = statistics.median(views_seconds)
    print(f"| views alone (`ViewLoader` + `BatchedAugment`, no model) | {args.batch_size * args.steps / views:,.0f} | "
          f"{1000 * views / args.steps:.1f} | - | - |")
    best = min(statistics.median(s) for s in seconds.values())
    epoch_s = 50_000 / (args.batch_size * args.steps / best)
    print(f"\nAt the faster setting one CIFAR-10 epoch (50,000 images) takes about {epoch_s:.0f} s; "
          f"200 epochs about {200 * epoch_s / 3600:.1f} h.")


if __name__ == "__main__":
    main()
