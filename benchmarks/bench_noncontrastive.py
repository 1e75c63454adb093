"""Methods without negatives against SimCLR on digits at the same step budget, and SimSiam's collapse without
its stop-gradient: a 10%-label linear probe and the effective rank of the encoder's features.

    .venv/bin/python benchmarks/bench_noncontrastive.py [--steps 300] [--seeds 0] [--threads 2]

Every method: SmallCNN(width 32, out 128, pool 2) on the 8x8 digits, the digits' batched augmentations, batch 256,
Adam 2e-3 with a cosine schedule, weight decay 1e-4, channels-last, the same steps. Prints a markdown table (mean
± std over the seeds, per seed in brackets). The first measurement for lesson 18 (issue 17).

[1] Grill et al., BYOL, NeurIPS 2020. [2] Chen & He, SimSiam, CVPR 2021. [3] Zbontar et al., Barlow Twins, ICML 2021.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from clcourse.augment import BatchedAugment
from clcourse.data import ViewLoader, load_digits
from clcourse.device import seed_everything
from clcourse.encoders import SmallCNN
from clcourse.evaluate import effective_rank, extract_features, linear_probe
from clcourse.methods import BYOL, BarlowTwins, SimCLR, SimSiam
from clcourse.train import fit

METHODS = {
    "SimCLR (t 1.0)": lambda e: SimCLR(e, projection_dim=128, hidden_dim=512, temperature=1.0),
    "BYOL (momentum 0.99)": lambda e: BYOL(e, projection_dim=128, hidden_dim=512),
    "SimSiam": lambda e: SimSiam(e, projection_dim=128, hidden_dim=512),
    "SimSiam without stop-gradient": lambda e: SimSiam(e, projection_dim=128, hidden_dim=512, stop_gradient=False),
    "Barlow Twins (lambda 5e-3)": lambda e: BarlowTwins(e, projection_dim=256),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = load_digits(8, split="train"), load_digits(8, split="test")
    raw = linear_probe(train.images.flatten(1), train.labels, test.images.flatten(1), test.labels,
                       label_fraction=0.1, seeds=range(5))
    print(f"raw pixels: 10% probe {100 * raw.mean:.1f}%, effective rank {effective_rank(train.images.flatten(1)):.1f}")
    rows = []
    for name, build in METHODS.items():
        probes, ranks, seconds = [], [], 0.0
        for seed in args.seeds:
            seed_everything(seed)
            model = build(SmallCNN(1, width=32, out_dim=128, pool_size=2))
            loader = ViewLoader(train, BatchedAugment.digits(8), batch_size=256, seed=seed, device="cpu")
            start = time.perf_counter()
            fit(model, loader, steps=args.steps, lr=2e-3, weight_decay=1e-4, schedule="cosine", device="cpu",
                progress=False, channels_last=True)
            seconds += time.perf_counter() - start
            ftr, ytr = extract_features(model.encoder, train)
            fte, yte = extract_features(model.encoder, test)
            probes.append(100 * linear_probe(ftr, ytr, fte, yte, label_fraction=0.1, seeds=range(5)).mean)
            ranks.append(effective_rank(ftr))
        rows.append(f"| {name} | {_spread(probes)}% ({' / '.join(f'{p:.1f}' for p in probes)}) | {_spread(ranks)} | "
                    f"{seconds / len(args.seeds):.0f} |")
        print(rows[-1], flush=True)
    seed_everything(args.seeds[0])
    untrained = SmallCNN(1, width=32, out_dim=128, pool_size=2)
    fu, yu = extract_features(untrained, train)
    fut, yut = extract_features(untrained, test)
    random_probe = 100 * linear_probe(fu, yu, fut, yut, label_fraction=0.1, seeds=range(5)).mean
    print(f"\n{args.steps} steps of 256, seeds {args.seeds}; untrained encoder: 10% probe {random_probe:.1f}%, "
          f"effective rank {effective_rank(fu):.1f}\n")
    print("| method | 10% probe | effective rank of the features (of 128) | seconds per run |")
    print("| --- | ---: | ---: | ---: |")
    print("\n".join(rows))


def _spread(values: list[float]) -> str:
    """mean ± std over seeds (the mean alone for one seed)."""
    if len(values) < 2:
        return f"{statistics.mean(values):.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


if __name__ == "__main__":
    main()
