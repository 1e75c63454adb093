"""Collapse over training: SimCLR, BYOL, Barlow Twins and SimSiam against the ablations that should collapse.

    .venv/bin/python benchmarks/bench_collapse.py [--steps 1000] [--seeds 0 1 2] [--at 100 300 1000] [--workers 1]

Every run is a ``clcourse.lessons.challenges.DigitsRun`` (SmallCNN width 32 on the 8x8 digits, batched digit
augmentations, batch 256, Adam 2e-3 cosine, weight decay 1e-4, projections of 64 dimensions), trained by
``train_runs`` on one thread per run, so the figures equal lesson 17's for the same settings. After every epoch
(4 steps) the run records SimSiam's statistic [1] (the mean over dimensions of the standard deviation of the
l2-normalised projections of 512 training images: 0 for a constant output, about 1/sqrt(64) = 0.125 when spread)
and the effective rank of their encoder features (of 128). The ablations: SimSiam without its stop-gradient [1],
BYOL [2] without its predictor (its table 5b) and with momentum 0 (target = online network, held fixed by the
stop-gradient), Barlow Twins [3] with lambda 0 (the invariance term alone).

Prints a markdown table, mean ± std over the seeds (sample std): the output std and the effective rank at the
steps ``--at``, the step from which the output std stayed below 0.01 (per seed; "-": not at the end) and the final
10%-label linear probe (5 label draws). ``--workers`` trains that many runs at a time in processes of one thread
each (the results do not depend on it). Takes 50-70 s a run on one thread (24 runs: 23 min).

[1] Chen & He, SimSiam, CVPR 2021. [2] Grill et al., BYOL, NeurIPS 2020. [3] Zbontar et al., Barlow Twins,
ICML 2021.
"""

from __future__ import annotations

import argparse
import time

from spread import mean_std

from clcourse.lessons.challenges import DigitsRun, RunResult, train_runs

METHODS = {
    "SimCLR (t 0.5)": "simclr",
    "BYOL (momentum 0.99)": "byol",
    "BYOL without predictor": "byol_no_predictor",
    "BYOL momentum 0": "byol_zero_momentum",
    "Barlow Twins (lambda 5e-3)": "barlow_twins",
    "Barlow Twins lambda 0 (invariance only)": "barlow_twins_invariance_only",
    "SimSiam": "simsiam",
    "SimSiam without stop-gradient": "simsiam_no_stop_gradient",
}
COLLAPSED_STD = 0.01  # output std below which a run counts as collapsed (spread: about 0.125)


def at_step(result: RunResult, values: list[float], step: int) -> float:
    """The statistic ``values`` at the last monitored step <= ``step`` (every epoch: every 4 steps)."""
    index = max(i for i, s in enumerate(result.monitor_step) if s <= step)
    return values[index]


def collapsed_from(result: RunResult) -> str:
    """The first monitored step from which the output std stays below :data:`COLLAPSED_STD` to the end, "-" if it
    ends above (an untrained network's outputs are close together too: a low std early on is not collapse)."""
    since = None
    for monitored, std in zip(result.monitor_step, result.output_std):
        if std >= COLLAPSED_STD:
            since = None
        elif since is None:
            since = monitored
    return "-" if since is None else str(since)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--at", type=int, nargs="+", default=[100, 300, 1000], help="steps the table reports")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time, one thread each")
    args = parser.parse_args()
    if min(args.at) < 4 or max(args.at) > args.steps:
        parser.error(f"--at must lie between 4 (the first epoch's end) and --steps {args.steps}")

    runs = {(name, seed): DigitsRun(method, seed, steps=args.steps) for name, method in METHODS.items()
            for seed in args.seeds}
    start = time.perf_counter()
    results = dict(zip(runs, train_runs(list(runs.values()), workers=args.workers, progress=False)))
    print(f"{len(runs)} runs in {time.perf_counter() - start:.0f} s\n")

    print(f"Digits, batch 256, {args.steps} steps, seeds {args.seeds}; mean ± std over seeds. Output std: of the "
          "l2-normalised 64-d projections (0: collapsed; spread: about 0.125). Rank: effective rank of the 128-d "
          "encoder features.\n")
    std_columns = " | ".join(f"output std @{s}" for s in args.at)
    rank_columns = " | ".join(f"rank @{s}" for s in args.at)
    print(f"| method | {std_columns} | {rank_columns} | std < {COLLAPSED_STD} since step | 10% probe | s / run |")
    print("| --- |" + " ---: |" * (2 * len(args.at) + 3))
    for name in METHODS:
        seeded = [results[name, seed] for seed in args.seeds]
        stds = [mean_std([at_step(r, r.output_std, s) for r in seeded], digits=3) for s in args.at]
        ranks = [mean_std([at_step(r, r.rank, s) for r in seeded]) for s in args.at]
        collapsed = " / ".join(collapsed_from(r) for r in seeded)
        seconds = sum(r.seconds for r in seeded) / len(seeded)
        print(f"| {name} | {' | '.join(stds)} | {' | '.join(ranks)} | {collapsed} | "
              f"{mean_std([r.probe for r in seeded])}% | {seconds:.0f} |")


if __name__ == "__main__":
    main()
