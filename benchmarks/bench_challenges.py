"""Lesson 17's sweeps that do not fit its 150 s: the batch size at an equal number of images, and the false-negative
corrections on few classes, over seeds.

    .venv/bin/python benchmarks/bench_challenges.py [--seeds 0 1 2] [--workers N] [--images 51200]

Every run is a ``clcourse.lessons.challenges.DigitsRun`` (SmallCNN width 32 on the 8x8 digits, batched digit
augmentations, Adam 2e-3 cosine, the 10%-label linear probe over 5 label draws), trained by ``train_runs`` in
worker processes of one thread each, so the figures equal the lesson's for the same settings.

1. Batch size at equal images: SimCLR at batch 16, 64 and 256 and MoCo (queue 1,024) at batch 16, each for
   ``images / batch`` steps.
2. Few classes: plain NT-Xent, the debiased loss (tau+ = 1/C) and hard-negative weighting (beta 1), batch 64,
   200 steps, on the digits 3, 5, 8 and on 0, 1.

Prints markdown tables: mean ± std over the seeds, per seed in brackets.
"""

from __future__ import annotations

import argparse
import time

from spread import mean_std_seeds

from clcourse.lessons.challenges import DigitsRun, train_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per usable CPU)")
    parser.add_argument("--images", type=int, default=51_200, help="images per run at equal images (256 x 200)")
    args = parser.parse_args()

    batch_settings = [("SimCLR", "simclr", 16), ("SimCLR", "simclr", 64), ("SimCLR", "simclr", 256),
                      ("MoCo", "moco", 16)]
    few_settings = [((3, 5, 8), "plain", "simclr", {}), ((3, 5, 8), "debiased", "debiased",
                                                         {"debiased_tau_plus": 1 / 3}),
                    ((3, 5, 8), "hard", "hard", {"hard_negative_beta": 1.0}),
                    ((0, 1), "plain", "simclr", {}), ((0, 1), "debiased", "debiased", {"debiased_tau_plus": 0.5}),
                    ((0, 1), "hard", "hard", {"hard_negative_beta": 1.0})]
    runs = {}
    for seed in args.seeds:
        for name, method, batch_size in batch_settings:
            options = {"queue_size": 1024} if method == "moco" else {}
            runs[name, batch_size, seed] = DigitsRun(method, seed, args.images // batch_size, batch_size,
                                                     options=options)
        for classes, name, method, options in few_settings:
            runs[classes, name, seed] = DigitsRun(method, seed, 200, 64, options=options, classes=classes)
    start = time.perf_counter()
    results = dict(zip(runs, train_runs(list(runs.values()), workers=args.workers, progress=False)))
    print(f"{len(runs)} runs in {time.perf_counter() - start:.0f} s\n")

    print(f"Batch size at equal images ({args.images:,} images a run), 10% probe:\n")
    print("| method | batch | steps | 10% probe |")
    print("| --- | ---: | ---: | ---: |")
    for name, _, batch_size in batch_settings:
        probes = [results[name, batch_size, seed].probe for seed in args.seeds]
        print(f"| {name} | {batch_size} | {args.images // batch_size:,} | {mean_std_seeds(probes)} |")

    print("\nFew classes, batch 64, 200 steps, 10% probe:\n")
    print("| digits | loss | 10% probe |")
    print("| --- | --- | ---: |")
    for classes, name, _, _ in few_settings:
        probes = [results[classes, name, seed].probe for seed in args.seeds]
        print(f"| {', '.join(map(str, classes))} | {name} | {mean_std_seeds(probes)} |")


if __name__ == "__main__":
    main()
