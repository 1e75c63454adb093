"""Lesson 11's budget: at how many steps do cross-entropy and SupCon stop improving on 8x8 digits?

Both train the same encoder (SmallCNN, width 32, 128-d, 2x2 pooled grid) on every training label with batch 256
and the digits augmentation, for a fixed number of optimiser steps (cosine decay over the budget, so each budget
is its own run):

- cross-entropy: encoder + linear head end to end (``clcourse.finetune.train_supervised``), scored by its head;
- SupCon L_out (t 0.1), L_in (``--methods supcon_in``) and SimCLR's loss (``simclr``: SupCon with
  supervised=False): a linear probe (logistic regression, all labels) on the frozen encoder.

Test accuracy on the 540 test digits, mean ± std over the training seeds. Prints a markdown table.
``--few`` runs lesson 11's few-label comparison instead: 10% of the labels kept (draw 0), the rest marked -1;
SupCon on the labelled 10% only and on all images, SimCLR on all images, each probed with 10% of the labels
(3 draws), at the first budget of ``--steps``, over the training seeds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sweep_supcon_budget.py --steps 100 200 400 800 --seeds 0 1 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sweep_supcon_budget.py --steps 200 --methods supcon_in simclr
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sweep_supcon_budget.py --steps 200 --few
"""

from __future__ import annotations

import argparse
import statistics

import torch

from clcourse.augment import BatchedAugment
from clcourse.data import ImageData, ViewLoader, load_digits
from clcourse.device import seed_everything
from clcourse.encoders import SmallCNN
from clcourse.evaluate import extract_features, linear_probe, sample_labelled
from clcourse.finetune import train_supervised
from clcourse.methods import SupCon
from clcourse.train import fit


def encoder(size: int) -> SmallCNN:
    return SmallCNN(1, width=32, out_dim=128, pool_size=2 if size == 8 else 1)


def supcon_encoder(data, augment, size, steps, seed, supervised, temperature, lr, variant="out") -> SmallCNN:
    seed_everything(seed)
    method = SupCon(encoder(size), temperature=temperature, supervised=supervised, variant=variant)
    loader = ViewLoader(data, augment, batch_size=min(256, len(data)), seed=seed, device="cpu")
    fit(method, loader, steps=steps, lr=lr, schedule="cosine", device="cpu", progress=False, channels_last=True)
    return method.encoder


def probe(enc, train, test, fraction=None, draws=1) -> float:
    ftr, ytr = extract_features(enc, train) if enc is not None else (train.images.flatten(1), train.labels)
    fte, yte = extract_features(enc, test) if enc is not None else (test.images.flatten(1), test.labels)
    return linear_probe(ftr, ytr, fte, yte, label_fraction=fraction, seeds=range(draws)).mean


def supcon_probe(train, test, augment, size, steps, seed, supervised, temperature, lr, variant="out") -> float:
    enc = supcon_encoder(train, augment, size, steps, seed, supervised, temperature, lr, variant)
    return probe(enc, train, test)


def few_labels(train, test, augment, size, steps, seeds, lr) -> None:
    """Lesson 11's section 4 over training seeds: 10% probes (3 label draws) of five representations."""
    labelled = torch.from_numpy(sample_labelled(train.labels, fraction=0.1, seed=0))
    partial_labels = torch.full_like(train.labels, -1)
    partial_labels[labelled] = train.labels[labelled]
    partial = ImageData(train.images, partial_labels)

    def random_encoder(seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return encoder(size)

    rows = {
        "raw pixels": lambda seed: probe(None, train, test, 0.1, 3),
        "random encoder": lambda seed: probe(random_encoder(seed), train, test, 0.1, 3),
        "SimCLR, all images": lambda seed: probe(
            supcon_encoder(train, augment, size, steps, seed, False, 0.1, lr), train, test, 0.1, 3),
        "SupCon, labelled 10% only": lambda seed: probe(
            supcon_encoder(train.subset(labelled), augment, size, steps, seed, True, 0.1, lr), train, test, 0.1, 3),
        "SupCon, 10% labels + unlabelled": lambda seed: probe(
            supcon_encoder(partial, augment, size, steps, seed, True, 0.1, lr), train, test, 0.1, 3),
    }
    print(f"| 10% probe (3 label draws), {steps} steps | mean ± std over training seeds | per seed |")
    print("| --- | ---: | --- |")
    for name, run in rows.items():
        accs = [100 * run(seed) for seed in seeds]
        print(f"| {name} | {statistics.mean(accs):.1f} ± {statistics.pstdev(accs):.1f} | "
              f"{' / '.join(f'{a:.1f}' for a in accs)} |", flush=True)


def cross_entropy(train, test, augment, size, steps, seed, lr) -> float:
    seed_everything(seed)
    model = train_supervised(encoder(size), train.images, train.labels, steps=steps, batch_size=256, lr=lr,
                             augment=augment, seed=seed, device="cpu")
    return model.accuracy(test.images, test.labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 200, 400, 800])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam's learning rate, both trainings")
    parser.add_argument("--simclr", action="store_true", help="also SimCLR's loss (t --simclr-temperature)")
    parser.add_argument("--simclr-temperature", type=float, default=0.1)
    parser.add_argument("--methods", nargs="+", default=["ce", "supcon"],
                        help="rows among ce, supcon, supcon_in, simclr")
    parser.add_argument("--few", action="store_true", help="lesson 11's few-label comparison instead")
    args = parser.parse_args()
    train, test = load_digits(args.size, split="train"), load_digits(args.size, split="test")
    augment = BatchedAugment.digits(args.size)
    if args.few:
        few_labels(train, test, augment, args.size, args.steps[0], args.seeds, args.lr)
        return
    runs = {
        "ce": ("cross-entropy (its head)", lambda s, seed: cross_entropy(train, test, augment, args.size, s, seed,
                                                                         args.lr)),
        "supcon": ("SupCon L_out + probe", lambda s, seed: supcon_probe(train, test, augment, args.size, s, seed,
                                                                        True, 0.1, args.lr)),
        "supcon_in": ("SupCon L_in + probe", lambda s, seed: supcon_probe(train, test, augment, args.size, s, seed,
                                                                          True, 0.1, args.lr, "in")),
        "simclr": (f"SimCLR (t {args.simclr_temperature:g}) + probe",
                   lambda s, seed: supcon_probe(train, test, augment, args.size, s, seed, False,
                                                args.simclr_temperature, args.lr)),
    }
    methods = args.methods + (["simclr"] if args.simclr else [])
    print(f"digits {args.size}x{args.size}, batch 256, Adam {args.lr:g} cosine, seeds {args.seeds}, "
          f"{torch.get_num_threads()} threads\n")
    print("| training | " + " | ".join(f"{s} steps" for s in args.steps) + " |")
    print("| --- |" + " ---: |" * len(args.steps))
    for key in methods:
        name, run = runs[key]
        cells = []
        for steps in args.steps:
            accs = [100 * run(steps, seed) for seed in args.seeds]
            spread = statistics.pstdev(accs)
            cells.append(f"{statistics.mean(accs):.1f} ± {spread:.1f} ({' / '.join(f'{a:.1f}' for a in accs)})")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
