"""Channels-last vs NCHW weights for the quick profile's SimCLR training step on the CPU.

    .venv/bin/python benchmarks/bench_channels_last_cpu.py [--threads 2] [--repeats 5]

One SimCLR step (SmallCNN width 32, projection head, NT-Xent, Adam) on a batch of 256 digit pairs,
with the model's 4-D weights in the default contiguous (NCHW) layout or channels-last (NHWC), the
layout ``fit(channels_last=True)`` sets. The two models are timed alternately, repeat by repeat, so a
busy shared machine hits both alike; the table reports median milliseconds per step and the ratio.
On a GPU ``fit`` uses channels-last by default; this script measures whether it also pays on a CPU.

[1] Chen et al., SimCLR, 2020.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from clcourse.augment import BatchedAugment
from clcourse.data import ViewLoader, load_digits
from clcourse.device import seed_everything
from clcourse.encoders import SmallCNN
from clcourse.methods import SimCLR


class Stepper:
    """A SimCLR model, its optimiser and an endless supply of view batches."""

    def __init__(self, size: int, channels_last: bool):
        seed_everything(0)
        self.model = SimCLR(SmallCNN(1, width=32, out_dim=128), projection_dim=128, temperature=1.0)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=2e-3)
        loader = ViewLoader(load_digits(size, split="train"), BatchedAugment.digits(size), batch_size=256,
                            seed=0, device="cpu")
        self.batches = [batch for batch in loader if len(batch[1]) == 256]

    def ms_per_step(self, steps: int) -> float:
        start = time.perf_counter()
        for i in range(steps):
            loss = self.model.training_step(self.batches[i % len(self.batches)])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        return 1e3 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"median of {args.repeats} alternating repeats\n")
    print("| digits size | NCHW ms/step | channels-last ms/step | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for size, steps in [(8, 20), (16, 8), (32, 2)]:
        nchw, nhwc = Stepper(size, channels_last=False), Stepper(size, channels_last=True)
        for stepper in (nchw, nhwc):  # warm-up: allocator, oneDNN primitive caches
            stepper.ms_per_step(3)
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            times[False].append(nchw.ms_per_step(steps))
            times[True].append(nhwc.ms_per_step(steps))
        slow, fast = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {size}x{size} | {slow:.1f} | {fast:.1f} | {slow / fast:.2f}x |")


if __name__ == "__main__":
    main()
