"""What a time-budgeted run loses to threads and checkpoints: the quick SimCLR digits recipe, step by step.

    .venv/bin/python benchmarks/bench_step_overheads.py [--steps 150]

Two side-by-side measurements of `clcourse.train.fit` on the recipe `clcourse train simclr` uses:

- torch threads: ms per step with 1, 2, 4 and 8 intra-op threads on this machine. More threads than
  cores (a container whose CPU quota is below what `os.cpu_count()` reports) makes every step slower;
  `clcourse train` therefore caps torch's threads at `clcourse.device.usable_cpus()`;
- checkpoints: ms per step with `last.pt` written after every epoch (as `clcourse train` does; the
  digits make an epoch of 4 steps) and without.

Each configuration trains the same number of steps from the same seed, alternately, 3 times; the
table reports the median ms per step and the ratio to the reference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from clcourse.device import usable_cpus
from clcourse.recipes import build, build_optimizer, fit_options, get_recipe
from clcourse.train import fit


def ms_per_step(steps: int, threads: int, checkpoints: bool) -> float:
    torch.set_num_threads(threads)
    recipe = get_recipe("simclr", "quick", "digits").override(steps=steps)
    model, loader, _, _ = build(recipe, "cpu")
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        fit(model, loader, optimizer=build_optimizer(recipe, model), device="cpu", progress=False,
            checkpoint_dir=folder if checkpoints else None, **fit_options(recipe))
        return 1e3 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cpus = usable_cpus()
    configurations = {f"{t} threads": (t, False) for t in (1, 2, 4, 8)}
    configurations[f"{cpus} threads, last.pt every epoch"] = (cpus, True)
    times = {name: [] for name in configurations}
    for _ in range(args.repeats):
        for name, (threads, checkpoints) in configurations.items():
            times[name].append(ms_per_step(args.steps, threads, checkpoints))
    reference = statistics.median(times[f"{cpus} threads"])
    print(f"quick SimCLR digits recipe, {args.steps} steps, {cpus} usable CPUs (os.cpu_count() {os.cpu_count()}), "
          f"torch {torch.__version__}, median of {args.repeats}\n")
    print(f"| configuration | ms per step | vs {cpus} threads, no checkpoints |")
    print("| --- | ---: | ---: |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {median / reference:.2f}x |")


if __name__ == "__main__":
    main()
